"""Ingest benchmark: batches of 1000 events over HTTP to a real `taskmeter serve` on loopback.

    python bench/ingest_http.py --store sqlite --seconds 60
    python bench/ingest_http.py --store postgresql --seconds 60
    python bench/ingest_http.py --into postgresql://postgres@127.0.0.1:5432/taskmeter_bench_1000000

Starts `taskmeter serve` in its own process on a fresh store (a temporary SQLite file, or a
throwaway PostgreSQL database on TASKMETER_BENCH_PG_URL) or, with --into, on a store that
`bench/generate.py` loaded (this run's user and events are added to it), makes a service
key, then posts realistic batches (streams with llm calls, tool calls, steps, agent
triggers, finishes) from this process with --concurrency connections for --seconds. Prints
sustained events/s, p50/p99 batch latency and the server's peak RSS.

Spend governance: `--caps N` defines N caps before the clock starts (the run's user in a team
of its own, with its user caps for every period, its member cap, its team's cap, and the rest
on other users), with limits no run reaches; `--recent` dates the streams from a week ago, so
that they fall in the caps' periods (use it for the run with `--caps 0` it is compared with).

The durable ingest log (issue 21): `--log` runs `serve` with TASKMETER_INGEST_LOG on a
JetStream stream of its own (BENCH_<random>, deleted afterwards); `--floor` sends the same
bodies to bench/floor.py instead; `--rate` paces the clients at that many events/s in all. With
`--log` the run waits until the log is drained; `--sample-lag` samples the lag every 0.2 s while
sending, from JetStream itself (the computation /readyz makes, without its 1 s cache) and from
/readyz.
`--queryable` also counts usage_events until the store holds every accepted event, and prints
events/s from the first send until then (on the direct path, until the last answer).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import (
    AGENTS,
    MODELS,
    TASKMETER,
    TOOLS,
    connections_by_process,
    create_pg_database,
    rss_mib,
    start_serve,
    stop_serve,
)


def stream_events(rng: random.Random, user: str, start: datetime) -> list[dict[str, Any]]:
    sid = str(uuid.uuid4())
    task = f"task-{uuid.uuid4().hex[:12]}"
    model, provider = rng.choice(MODELS)
    t = start
    n = 0

    def ev(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal n, t
        n += 1
        t += timedelta(milliseconds=rng.randint(50, 3000))
        return {
            "id": f"e{n}",
            "type": kind,
            "time": t.isoformat(),
            "stream_id": sid,
            "task_id": task,
            **fields,
        }

    events = [
        ev(
            "stream.started",
            user=user,
            model=model,
            task_title="Scan target",
            is_byok=rng.random() < 0.1,
        )
    ]
    for _ in range(rng.randint(5, 30)):
        inp = rng.randint(500, 60_000)
        events.append(
            ev(
                "llm.call",
                model=model,
                provider=provider,
                input_tokens=inp,
                output_tokens=rng.randint(50, 4000),
                cache_read_tokens=rng.randint(0, inp // 2),
                duration_ms=rng.randint(200, 20_000),
            )
        )
        events.append(ev("step.completed", latency_ms=rng.randint(100, 20_000)))
        for _ in range(rng.randint(0, 6)):
            events.append(
                ev("tool.call", tool_name=rng.choice(TOOLS), duration_ms=rng.randint(10, 60_000))
            )
    for _ in range(rng.randint(0, 3)):
        events.append(ev("agent.triggered", agent_name=rng.choice(AGENTS)))
    status = rng.choices(["completed", "error", "aborted"], [0.85, 0.1, 0.05])[0]
    events.append(
        ev(
            "stream.finished",
            status=status,
            error_message="tool crashed" if status == "error" else None,
        )
    )
    return events


def bodies(
    seed: int, user: str, size: int, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
) -> Iterator[bytes]:
    """Request bodies of `size` events, the streams of one agent worker in order, forever."""
    rng = random.Random(seed)
    pending: list[dict[str, Any]] = []
    while True:
        while len(pending) < size:
            start += timedelta(seconds=rng.randint(1, 600))
            pending.extend(stream_events(rng, user, start))
        yield orjson.dumps({"events": pending[:size]})
        pending = pending[size:]


NATS_URL = os.environ.get("TASKMETER_BENCH_NATS_URL", "nats://127.0.0.1:4222")


class LogWatch:
    """The run's JetStream stream, read from this process in a thread of its own: its lag
    uncached (IngestLog.lag with no cache) and, at the end, its deletion."""

    def __init__(self, stream: str) -> None:
        import asyncio

        from taskmeter.log.publisher import IngestLog

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.log = IngestLog(NATS_URL, stream=stream, replicas=1)
        self._call(self._connect())

    async def _connect(self) -> None:
        import nats

        self.log._nc = await nats.connect(NATS_URL, name="taskmeter-bench")
        self.log._js = self.log._nc.jetstream()

    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def lag(self) -> Any:
        return self._call(self.log.lag(max_age_s=0))

    def delete(self) -> None:
        try:
            self._call(self.log.jetstream.delete_stream(self.log.stream))
            print(f"deleted stream {self.log.stream}")
        except Exception as exc:  # never created (serve did not start)
            print(f"stream {self.log.stream} not deleted: {exc}")
        self._call(self.log.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def count_events(url: str) -> int:
    from sqlalchemy import create_engine, text

    from taskmeter.config import normalise_database_url

    engine = create_engine(normalise_database_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one())
    finally:
        engine.dispose()


def summary(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"p50 {ordered[len(ordered) // 2]:.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s "
        f"({len(ordered)} samples)"
    )


def start_floor(url: str, workdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """bench/floor.py on a free port, once it answers."""
    from common import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("floor.py")), "--url", url,
         "--port", str(port), "--workers", str(workers)],
        cwd=Path(__file__).parent,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{base}/", content=b'{"events": []}')
            time.sleep(1)  # every worker up
            return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the floor server did not start")


def define_caps(url: str, user: str, count: int) -> None:
    """`count` caps: the run's user's (every period), its member and team caps, then one on
    each of as many other users as are left."""
    from taskmeter.config import normalise_database_url
    from taskmeter.governance.caps import CapTarget, set_cap
    from taskmeter.identity import service
    from taskmeter.store import Store
    from taskmeter.store.tables import Membership

    store = Store(normalise_database_url(url))
    limit = 10**18  # never reached: the run measures counting, not refusing
    try:
        with store.write() as db:
            owner = service.find_user(db, user)
            membership = db.get(Membership, owner.id)
            assert membership is not None
            targets = [(CapTarget("user", user_id=owner.id), p) for p in ("day", "week", "month")]
            targets += [
                (CapTarget("user", user_id=owner.id), "total"),
                (CapTarget("team", team_id=membership.team_id), "month"),
                (CapTarget("member", user_id=owner.id, team_id=membership.team_id), "week"),
            ]
            for n in range(max(0, count - len(targets))):
                other = service.create_user(db, f"capped-{n}-{user}")
                targets.append((CapTarget("user", user_id=other.id), "month"))
            for target, period in targets[:count]:
                set_cap(db, target, period=period, tz="Europe/Berlin", limit_nano=limit)
    finally:
        store.dispose()
    print(f"defined {count} caps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="connections (with --workers 2, four often left one worker with one or none)",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--prepare",
        type=float,
        default=80_000,
        help="events/s to prepare bodies for before the clock starts (more are made on the fly)",
    )
    parser.add_argument(
        "--into",
        metavar="URL",
        help="ingest into this existing store (one bench/generate.py loaded) instead of a "
        "fresh one; its store type follows the URL",
    )
    parser.add_argument("--caps", type=int, default=0, help="caps to define first")
    parser.add_argument(
        "--recent", action="store_true", help="streams from a week ago, in a team (with --caps)"
    )
    parser.add_argument("--log", action="store_true", help="through the NATS ingest log")
    parser.add_argument("--floor", action="store_true", help="send to bench/floor.py instead")
    parser.add_argument("--rate", type=float, default=0, help="events/s to pace at (0: flat out)")
    parser.add_argument(
        "--queryable",
        action="store_true",
        help="also wait until the store holds every accepted event (usage_events counted)",
    )
    parser.add_argument(
        "--sample-lag",
        action="store_true",
        help="with --log, sample the projection lag every 0.2 s while sending",
    )
    args = parser.parse_args()
    if args.caps:
        args.recent = True

    workdir = Path(tempfile.mkdtemp(prefix="taskmeter-bench-"))
    cleanup = None
    user = "bench@example.com"
    if args.into:
        url = args.into
        args.store = "sqlite" if url.startswith("sqlite") else "postgresql"
        user = f"bench-{uuid.uuid4().hex[:8]}@example.com"  # new to the store on every run
    elif args.store == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        url, cleanup = create_pg_database()
    env = {**os.environ, "TASKMETER_DATABASE_URL": url}
    taskmeter = [TASKMETER]

    def run(*arguments: str) -> str:
        done = subprocess.run(
            [*taskmeter, *arguments], env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    run("users", "create", user)
    if args.recent:
        run("teams", "create", f"team-{user}", "--admin", user)
        define_caps(url, user, args.caps)
    key = run("keys", "create", "--service", "bench")
    serve_env = {"TASKMETER_WORKERS": str(args.workers)}
    log_stream = f"BENCH_{uuid.uuid4().hex[:8].upper()}"
    if args.log:
        serve_env |= {"TASKMETER_INGEST_LOG": NATS_URL, "TASKMETER_INGEST_LOG_STREAM": log_stream}
    if args.floor:
        server, base = start_floor(url, workdir, args.workers)
    else:
        server, base = start_serve(url, workdir, **serve_env)
    watch = LogWatch(log_stream) if args.log else None
    lag_samples: list[float] = []  # from JetStream, uncached
    readyz_samples: list[float] = []  # from /readyz (cached 1 s by each worker)
    try:
        # One body source per connection, like one agent worker per connection: a stream's
        # events are batched by the client that runs it, and its batches arrive in order.
        # (One source shared by all connections would split nearly every stream across two
        # batches in flight at once, and those serialize on the stream's row lock.) The
        # bodies are made before the clock starts, so that making them does not take CPU from
        # the server on this shared machine; any needed beyond those are made on the fly.
        per_connection = int(args.prepare * args.seconds / args.batch / args.concurrency) + 1
        start = (
            datetime.now(UTC) - timedelta(days=7)
            if args.recent
            else datetime(2026, 1, 1, tzinfo=UTC)
        )
        sources = [bodies(1 + n, user, args.batch, start) for n in range(args.concurrency)]
        prepared = [list(itertools.islice(source, per_connection)) for source in sources]
        print(f"prepared {per_connection * args.concurrency} bodies of {args.batch} events")
        made_late = [0]
        latencies: list[float] = []
        accepted = [0]
        failures = [0]
        peak_rss = [0.0]
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def worker(ready: list[bytes], source: Iterator[bytes]) -> None:
            ready.reverse()
            with httpx.Client(
                base_url=base,
                headers={"X-Api-Key": key, "content-type": "application/json"},
                timeout=120,
            ) as client:
                sent = 0
                while time.monotonic() < deadline:
                    if args.rate:
                        due = started + sent * args.batch * args.concurrency / args.rate
                        if due > time.monotonic():
                            time.sleep(due - time.monotonic())
                        sent += 1
                    if ready:
                        body = ready.pop()
                    else:
                        body = next(source)
                        made_late[0] += 1
                    t0 = time.perf_counter()
                    answer = client.post("/api/v1/usage/events", content=body)
                    elapsed = time.perf_counter() - t0
                    with lock:
                        if answer.status_code == 200:
                            latencies.append(elapsed)
                            accepted[0] += answer.json()["accepted"]
                        else:
                            failures[0] += 1

        started = time.monotonic()
        threads = [
            threading.Thread(target=worker, args=(ready, source))
            for ready, source in zip(prepared, sources, strict=True)
        ]
        for thread in threads:
            thread.start()

        def sample(into: list[float], read: Any) -> None:
            while any(t.is_alive() for t in threads):
                now = time.monotonic()
                into.append(read())
                time.sleep(0.2 - (time.monotonic() - now) % 0.2)

        samplers = []
        if watch is not None and args.sample_lag:
            log_watch = watch
            samplers = [
                threading.Thread(
                    target=sample, args=(lag_samples, lambda: log_watch.lag().seconds)
                ),
                threading.Thread(
                    target=sample,
                    args=(
                        readyz_samples,
                        lambda: httpx.get(f"{base}/readyz", timeout=10).json()["log"][
                            "lag_seconds"
                        ],
                    ),
                ),
            ]
            for sampler in samplers:
                sampler.start()
        split: list[int] = []
        next_rss = next_split = started + min(2.0, args.seconds / 4)
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if now >= next_rss:
                peak_rss[0] = max(peak_rss[0], rss_mib(server.pid))
                next_rss = now + 0.5
            if not split and now >= next_split:
                split = connections_by_process(base)
            time.sleep(0.2 - (time.monotonic() - now) % 0.2)
        for sampler in samplers:
            sampler.join()
        wall = time.monotonic() - started
        drained = wall
        if watch is not None:  # until every logged batch is applied and acknowledged
            while watch.lag().messages:
                time.sleep(0.1)
            drained = time.monotonic() - started
        stored = None
        if args.queryable and not args.floor:
            stored = count_events(url)
            while stored < accepted[0] and time.monotonic() - started < wall + 600:
                time.sleep(0.1)
                stored = count_events(url)
            drained = time.monotonic() - started
        latencies.sort()

        def p(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        print(
            f"store={args.store} seconds={wall:.1f} concurrency={args.concurrency} "
            f"batch={args.batch} workers={args.workers}"
        )
        print(f"events accepted: {accepted[0]}  batches: {len(latencies)}  failed: {failures[0]}")
        if made_late[0]:
            print(f"bodies made during the run (raise --prepare): {made_late[0]}")
        print(f"sustained: {accepted[0] / wall:,.0f} events/s")
        if args.log or stored is not None:
            print(
                f"queryable: {accepted[0] / drained:,.0f} events/s ({drained:.1f} s from the first "
                f"send, {drained - wall:.1f} s after the last answer"
                + (f"; {stored} events in the store)" if stored is not None else ")")
            )
        if args.log and args.sample_lag:
            print(f"projection lag (JetStream, every 0.2 s): {summary(lag_samples)}")
            print(f"projection lag (/readyz, cached 1 s):    {summary(readyz_samples)}")
        if latencies:
            print(
                f"batch latency: p50 {p(0.5):.0f} ms  p99 {p(0.99):.0f} ms  "
                f"mean {statistics.mean(latencies) * 1000:.0f} ms"
            )
        print(f"serve peak RSS: {peak_rss[0]:.0f} MiB")
        print(f"connections per serving process: {' + '.join(map(str, split)) or 'none seen'}")
    finally:
        stop_serve(server)
        if watch is not None:
            watch.delete()
        if cleanup:
            cleanup()


if __name__ == "__main__":
    main()
