"""Bulk data generator: a year of realistic agent usage, loaded straight into a store.

    python bench/generate.py --store postgresql --streams 1000000
    python bench/generate.py --store sqlite --streams 1000000 --path bench/.data/1m.db

Teams of 1-50 users (one large team of 50 whose admin the query benchmark reads as, and
which carries a tenth of the load) and solo users; tasks of 1-5 streams; 5-200 tool calls a
stream over 22 tools; 1-20 model calls over 5 models, priced by the service's own PriceBook;
10 % BYOK; errors, failures, aborts and blocks; start times spread over the 12 months before
--until. Calls lie on their stream's timeline (taskmeter/timeline.py: steps back to back, now
and then a parallel burst of tool calls), so a stream lasts as long as its calls take, and a
task's streams run one after another.

The bulk path: rows are built with the service's own projection code (the same figures,
task aggregation and rollup contributions the ingestion path computes), then inserted in
large batches; no HTTP, no per-event validation, no raw `usage_events` rows (the read API
never reads them; they exist for idempotency). Prints rows/s and writes the keys and sample
ids the query benchmark needs to a JSON file beside the data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from common import AGENTS, MODELS, TOOLS, create_pg_database
from sqlalchemy import insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite as sqlite_dialect
from sqlalchemy.orm import Session

from taskmeter import jsonio
from taskmeter.config import normalise_database_url
from taskmeter.heap import settle_heap
from taskmeter.identity import service
from taskmeter.ingest.projection import refresh_derived
from taskmeter.pricing.prices import CallTokens, PriceBook, usd_to_nano_credits
from taskmeter.store import Store, bulk
from taskmeter.store.migrate import upgrade
from taskmeter.store.tables import (
    STREAM_COLUMNS,
    STREAMS,
    TASKS,
    Membership,
    StreamRow,
    Team,
    User,
)
from taskmeter.timeline import lay_out
from taskmeter.usage.figures import stream_figures, task_figures, task_row_values
from taskmeter.usage.rollups import (
    RollupDeltas,
    rebuild_coarse_tiers,
    stream_contribution,
    task_contribution,
)

STATUSES = (["completed", "error", "failed", "aborted", "blocked"], [85, 6, 3, 4, 2])
ERRORS = {
    "error": "tool crashed",
    "failed": "target unreachable",
    "aborted": "stopped by user",
    "blocked": "scope check refused target",
}
CREDIT_USD = Decimal("10")
DEFAULT_RATE = Decimal("0.1")
YEAR_S = 365 * 24 * 3600
EVENT_IDS = [f"t{k}" for k in range(200)]
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)


class Organisation:
    """Who owns the streams: users with their scope, and the weights they are drawn with."""

    def __init__(self, db: Session, rng: random.Random, users: int, now: datetime) -> None:
        self.owners: list[tuple[int, int | None, str]] = []  # (user id, team id, scope)
        weights: list[float] = []
        emails = [f"user{n}@bench.example" for n in range(users)]
        emails[0], emails[1] = "admin@bench.example", "solo@bench.example"
        db.execute(
            insert(User),
            [{"email": e, "role": "user", "created_at": now} for e in emails],
        )
        ids = {u.email: u.id for u in db.query(User)}
        # The large team: 50 users, a tenth of all streams between them.
        sizes = [50]
        remaining = int(users * 0.8) - 50
        while remaining > 0:
            sizes.append(min(remaining, rng.randint(1, 50)))
            remaining -= sizes[-1]
        db.execute(
            insert(Team),
            [{"name": f"team-{t}", "created_at": now} for t in range(len(sizes))],
        )
        teams = {t.name: t.id for t in db.query(Team)}
        memberships = []
        order = [e for e in emails if e != "solo@bench.example"]
        cursor = 0
        for t, size in enumerate(sizes):
            team_id = teams[f"team-{t}"]
            for m in range(size):
                email = order[cursor]
                cursor += 1
                role = "admin" if m == 0 else "member"
                memberships.append(
                    {"user_id": ids[email], "team_id": team_id, "role": role, "created_at": now}
                )
                self.owners.append((ids[email], team_id, f"t{team_id}"))
                weights.append((users * 0.1 / 50) if t == 0 else 1.0)
        db.execute(insert(Membership), memberships)
        for email in [*order[cursor:], "solo@bench.example"]:
            self.owners.append((ids[email], None, f"u{ids[email]}"))
            weights.append(1.0)
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))
        self.teams = len(sizes)
        self.large_team_scope = f"t{teams['team-0']}"
        self.solo_scope = f"u{ids['solo@bench.example']}"

    def draw(self, rng: random.Random) -> tuple[int, int | None, str]:
        return rng.choices(self.owners, cum_weights=self.cumulative)[0]


def make_stream(
    rng: random.Random,
    prices: PriceBook,
    owner: tuple[int, int | None, str],
    task_id: str,
    created: datetime,
    model: tuple[str, str],
    byok: bool,
) -> StreamRow:
    user_id, team_id, scope = owner
    rnd = rng.random  # random() and int() are several times faster than randint()
    status = rng.choices(*STATUSES)[0]
    start_ms = int(created.timestamp() * 1000)
    # Column by column: a stream's hundred-odd calls are most of the generator's own time.
    count = 5 + int(rnd() * 196)
    calls = 1 + int(rnd() * 20)
    names = [TOOLS[int(rnd() * len(TOOLS))] for _ in range(count)]
    took = [20 + int(rnd() * 60_000) for _ in range(count)]
    thinking = [200 + int(rnd() * 19_800) for _ in range(calls)]
    # The calls on the stream's timeline (a step a model call): the stream lasts as long as
    # they take, and its tool starts come out in history order (no sort).
    per = -(-count // calls)  # tool calls a step, the last steps fewer
    steps = [(think, took[i * per : (i + 1) * per]) for i, think in enumerate(thinking)]
    layout = lay_out(rnd, start_ms, steps)
    finished = created + timedelta(milliseconds=layout.end_ms - start_ms)
    history = list(map(list, zip(layout.tool_at, EVENT_IDS[:count], names, took, strict=True)))
    breakdown: dict[str, dict[str, int]] = {}
    for name, duration in zip(names, took, strict=True):
        entry = breakdown.get(name)
        if entry is None:
            breakdown[name] = {"calls": 1, "total_duration_ms": duration}
        else:
            entry["calls"] += 1
            entry["total_duration_ms"] += duration
    tool_time = sum(took)
    agents: dict[str, int] = {}
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(AGENTS)
        agents[name] = agents.get(name, 0) + 1
    tokens = [0, 0, 0, 0]
    base_nano = 0
    for _ in range(calls):
        inp = 500 + int(rnd() * 59_500)
        call = CallTokens(
            input_tokens=inp,
            output_tokens=50 + int(rnd() * 3950),
            cache_read_tokens=int(rnd() * inp // 2),
            cache_write_tokens=0,
        )
        usd = prices.price_usd(model[0], model[1], call, created)
        base_nano += usd_to_nano_credits(usd, CREDIT_USD) if usd is not None else 0
        tokens[0] += call.input_tokens
        tokens[1] += call.output_tokens
        tokens[2] += call.cache_read_tokens
    step_latency = sum(layout.step_end) - sum(layout.model_at)
    values = dict(
        stream_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        task_id=task_id,
        owner_user_id=user_id,
        team_id=team_id,
        scope=scope,
        started=True,
        started_event_id="start",
        created_at=created,
        finished_at=finished,
        finish_event_id="finish",
        status=status,
        error_message=ERRORS.get(status),
        stated_execution_ms=None,
        declared_model=model[0],
        model_calls={model[0]: calls},
        task_title=f"Scan {task_id}",
        is_byok=byok,
        neo_cost_rate=None,
        step_count=calls,
        step_latency_ms=step_latency,
        tool_calls=len(history),
        tool_time_ms=tool_time,
        tool_breakdown=dict(sorted(breakdown.items())),
        tool_history=history,
        agent_triggers=sum(agents.values()),
        agent_breakdown=dict(sorted(agents.items())),
        llm_calls=calls,
        llm_time_ms=sum(thinking),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_read_tokens=tokens[2],
        cache_write_tokens=0,
        reasoning_tokens=0,
        unpriced_calls=0,
        base_nano=base_nano,
        first_event_at=created,
        last_event_at=finished,
        last_received_at=finished,
        swept=False,
    )
    # Plain slots, not an ORM instance: tracking every set had been a sixth of a stream.
    stream = StreamRow(values.get(name) for name in STREAM_COLUMNS)
    refresh_derived(stream, DEFAULT_RATE)
    return stream


@dataclass
class Chunk:
    """A built chunk: its rows for the parent to load, or (loaded by the worker) none."""

    stream_count: int
    streams: list[tuple[Any, ...]]
    tasks: list[tuple[Any, ...]]
    rollups: RollupDeltas | None
    samples: dict[str, str]
    tasks_made: int


_WORKER_STORE: Store | None = None


def start_worker(url: str | None) -> None:
    """A building process, forked after the parent settled its heap (the collector's settings
    and frozen objects come with the fork): on PostgreSQL, its own connection to load what it
    builds."""
    global _WORKER_STORE
    if url is not None:
        _WORKER_STORE = Store(url)


def build_and_load(spec: tuple[int, int, int, datetime, Organisation, str]) -> Chunk:
    """Build a chunk and, on PostgreSQL, load it from this process (COPY, then the rollups,
    in one transaction): the rows are not shipped to the parent, whose unpickling had been
    a tenth of the load's time. SQLite takes one writer at a time: its rows go to the parent."""
    chunk = build_chunk(spec)
    if _WORKER_STORE is None:
        return chunk
    load(_WORKER_STORE, chunk.streams, chunk.tasks, chunk.rollups)
    return Chunk(len(chunk.streams), [], [], None, chunk.samples, chunk.tasks_made)


def build_chunk(spec: tuple[int, int, int, datetime, Organisation, str]) -> Chunk:
    """One transaction's worth of rows, from its own seed (chunks build in parallel)."""
    number, size, seed, until, org, dialect = spec
    rng = random.Random(seed * 1_000_003 + number)
    prices = PriceBook()
    streams: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    samples: dict[str, str] = {}
    rollups = RollupDeltas(coarse=False)  # months and hours: rebuilt once after the load
    made = tasks_made = 0
    while made < size:
        owner = org.draw(rng)
        task_id = f"task-{number:05d}-{tasks_made:06d}"
        tasks_made += 1
        start = until - timedelta(seconds=rng.uniform(3600, YEAR_S))
        model = rng.choice(MODELS)
        byok = rng.random() < 0.1
        count = min(size - made, rng.choices([1, 2, 3, 4, 5], [60, 20, 10, 6, 4])[0])
        members: list[StreamRow] = []
        for _ in range(count):  # retries and follow-ups: each after the one before finished
            members.append(make_stream(rng, prices, owner, task_id, start, model, byok))
            start = members[-1].finished_at + timedelta(seconds=rng.randint(1, 900))
        made += count
        for stream in members:
            streams.append({c: getattr(stream, c) for c in STREAM_COLUMNS})
            rollups.stream_changed(None, stream_contribution(stream))
        figures = task_figures([stream_figures(s) for s in members])
        rollups.task_changed(None, task_contribution(owner[2], figures))
        tasks.append({"scope": owner[2], "task_id": task_id, **task_row_values(figures)})
        samples.setdefault(owner[2], task_id)
    return Chunk(
        len(streams),
        storable(STREAMS, streams, dialect),
        storable(TASKS, tasks, dialect),
        rollups,
        samples,
        tasks_made,
    )


def storable(table: Any, rows: list[dict[str, Any]], dialect: str) -> list[tuple[Any, ...]]:
    """Rows as the database driver takes them, converted here (in the worker processes) by
    the columns' own SQLAlchemy bind processors, so the loader only ships them."""
    columns = [c.key for c in table.columns]
    if dialect == "postgresql":  # the service's binary COPY adapts Python values itself
        return [tuple(r.get(c) for c in columns) for r in rows]
    sqlite = sqlite_dialect(json_serializer=jsonio.dumps)
    processors = [table.c[c].type._cached_bind_processor(sqlite) for c in columns]
    return [
        tuple(
            p(r.get(c)) if p is not None else r.get(c)
            for c, p in zip(columns, processors, strict=True)
        )
        for r in rows
    ]


def load(
    store: Store,
    streams: list[tuple[Any, ...]],
    tasks: list[tuple[Any, ...]],
    rollups: RollupDeltas | None,
) -> None:
    """One transaction: the service's binary COPY on PostgreSQL, a prepared executemany on
    SQLite; the rollups' upserts last, sorted by key as the service issues them (loaders
    cannot deadlock)."""
    with store.write() as db:
        for table, rows in ((STREAMS, streams), (TASKS, tasks)):
            if store.dialect == "postgresql":
                bulk.copy_rows(db, table, rows)
                continue
            names = [c.name for c in table.columns]
            marks = ", ".join("?" for _ in names)
            raw = db.connection().connection.driver_connection
            raw.executemany(  # type: ignore[union-attr]
                f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})", rows
            )
        if rollups is not None:
            rollups.write(db)


def generate(
    url: str,
    streams: int,
    *,
    seed: int = 2026,
    chunk: int = 10_000,
    workers: int = 2,
    until: datetime = UNTIL,
    progress: bool = True,
) -> dict[str, Any]:
    """Load `streams` streams into the store at `url` (migrated here if need be); return
    what the query benchmark needs to know of them (the manifest, less where it lives)."""
    store = Store(normalise_database_url(url))
    upgrade(store.write_engine)
    rng = random.Random(seed)
    began = time.monotonic()
    with store.write() as db:
        org = Organisation(db, rng, max(100, streams // 200), until - timedelta(days=400))
        admin_key = service.create_key(db, email="admin@bench.example").plaintext
        solo_key = service.create_key(db, email="solo@bench.example").plaintext
    samples: dict[str, str] = {}
    made = tasks_made = 0
    specs = [
        (n, min(chunk, streams - start), seed, until, org, store.dialect)
        for n, start in enumerate(range(0, streams, chunk))
    ]
    settle_heap()  # here, before the fork: the workers inherit it
    worker_url = store.url if store.dialect == "postgresql" else None
    store.dispose()  # no pooled connection for the forked workers to inherit
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, start_worker, (worker_url,)) as pool:
        # A bounded number of chunks in flight: built rows must not pile up in memory.
        pending: deque[Any] = deque()
        queued = iter(specs)
        for spec in itertools.islice(queued, workers * 2):
            pending.append(pool.apply_async(build_and_load, (spec,)))
        while pending:
            built = pending.popleft().get()
            for spec in itertools.islice(queued, 1):
                pending.append(pool.apply_async(build_and_load, (spec,)))
            if worker_url is None:
                load(store, built.streams, built.tasks, built.rollups)
            made += built.stream_count
            tasks_made += built.tasks_made
            for scope, task_id in built.samples.items():
                samples.setdefault(scope, task_id)
            if progress:
                elapsed = time.monotonic() - began
                print(
                    f"{made:>11,} streams  {tasks_made:>10,} tasks  "
                    f"{made / elapsed:,.0f} streams/s",
                    flush=True,
                )
    with store.write() as db:
        rebuild_coarse_tiers(db)
    # What autovacuum would have done by now on a live store: statistics for the planner and,
    # on PostgreSQL, the visibility map that lets counts run as index-only scans.
    if store.dialect == "postgresql":
        with store.write_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM (ANALYZE)")
    else:
        with store.write() as db:
            db.connection().exec_driver_sql("ANALYZE")
    store.dispose()
    return {
        "store": store.dialect,
        "url": url,
        "streams": made,
        "tasks": tasks_made,
        "users": len(org.owners),
        "teams": org.teams,
        "seed": seed,
        "until": until.isoformat(),
        "admin_key": admin_key,
        "solo_key": solo_key,
        "admin_task": samples.get(org.large_team_scope),
        "solo_task": samples.get(org.solo_scope),
        "seconds": round(time.monotonic() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], required=True)
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, help="SQLite file (default bench/.data/<n>.db)")
    parser.add_argument("--database", help="PostgreSQL database name (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--chunk", type=int, default=10_000, help="streams per transaction")
    parser.add_argument("--workers", type=int, default=2, help="processes building rows")
    parser.add_argument("--until", default=UNTIL.isoformat())
    args = parser.parse_args()

    data = Path(__file__).parent / ".data"
    data.mkdir(exist_ok=True)
    if args.store == "sqlite":
        path = args.path or data / f"{args.streams}.db"
        path.unlink(missing_ok=True)
        url = f"sqlite:///{path.resolve()}"
    else:
        url, _ = create_pg_database(args.database or f"taskmeter_bench_{args.streams}")
    manifest = generate(
        url,
        args.streams,
        seed=args.seed,
        chunk=args.chunk,
        workers=args.workers,
        until=datetime.fromisoformat(args.until).astimezone(UTC),
    )
    out = data / f"{args.store}-{args.streams}.json"
    out.write_text(json.dumps(manifest, indent=2))
    made, seconds = manifest["streams"], manifest["seconds"]
    print(
        f"loaded {made:,} streams and {manifest['tasks']:,} tasks for {manifest['users']:,} "
        f"users in {manifest['teams']:,} teams in {seconds:,.0f} s "
        f"({made / seconds:,.0f} streams/s); manifest {out}"
    )


if __name__ == "__main__":
    main()
