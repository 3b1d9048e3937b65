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
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import MODELS, create_pg_database
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite as sqlite_dialect
from synthetic import (
    UNTIL,
    YEAR_S,
    Organisation,
    make_stream,
)

from taskmeter import jsonio
from taskmeter.config import normalise_database_url
from taskmeter.heap import settle_heap
from taskmeter.identity import service
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store, bulk
from taskmeter.store.migrate import upgrade
from taskmeter.store.tables import (
    STREAM_COLUMNS,
    STREAMS,
    TASKS,
    StreamRow,
)
from taskmeter.usage.figures import stream_figures, task_figures, task_row_values
from taskmeter.usage.rollups import (
    RollupDeltas,
    rebuild_coarse_tiers,
    stream_contribution,
    task_contribution,
)


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
