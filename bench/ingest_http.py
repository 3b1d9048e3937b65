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
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import subprocess
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
    server, base = start_serve(url, workdir, TASKMETER_WORKERS=str(args.workers))
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
                while time.monotonic() < deadline:
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
        time.sleep(min(2.0, args.seconds / 4))
        split = connections_by_process(base)
        while any(t.is_alive() for t in threads):
            peak_rss[0] = max(peak_rss[0], rss_mib(server.pid))
            time.sleep(0.5)
        wall = time.monotonic() - started
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
        if latencies:
            print(
                f"batch latency: p50 {p(0.5):.0f} ms  p99 {p(0.99):.0f} ms  "
                f"mean {statistics.mean(latencies) * 1000:.0f} ms"
            )
        print(f"serve peak RSS: {peak_rss[0]:.0f} MiB")
        print(f"connections per serving process: {' + '.join(map(str, split)) or 'none seen'}")
    finally:
        stop_serve(server)
        if cleanup:
            cleanup()


if __name__ == "__main__":
    main()
