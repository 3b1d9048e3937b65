"""Several `serve` processes on one store, several client processes writing interleaved
events for the same streams, each batch to whichever replica: the totals are exact. The
stream sweeper runs in every replica and still closes each idle stream exactly once (on
PostgreSQL an advisory lock in the store, on SQLite its single writer).
"""

from __future__ import annotations

import multiprocessing
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from taskmeter.client import UsageClient
from tests.events import StreamEvents
from tests.factories import Factory
from tests.processes import accepted_connections, alive, descendants, serve, stop

REPLICAS = 3
CLIENTS = 3
BATCHES = 12
PER_BATCH = 60
IDLE_STREAMS = 30


def write_interleaved(
    client: int, bases: list[str], key: str, streams: list[tuple[str, str]]
) -> tuple[int, int]:
    """One client process: batches spread over every replica, over every stream."""
    accepted = duplicates = 0
    events = [StreamEvents(task_id, stream_id) for task_id, stream_id in streams]
    for b in range(BATCHES):
        batch: list[dict[str, Any]] = []
        for n in range(PER_BATCH):
            stream = events[(n + client) % len(events)]
            batch.append(stream.step(1 + b, latency_ms=8, id=f"c{client}-b{b}-{n}"))
            if n % 6 == 0:
                batch.append(stream.tool(1 + b, "nmap", 4, id=f"c{client}-t{b}-{n}"))
        batch += [s.started(0, id="start") for s in events]  # every client re-sends these
        base = bases[(b + client) % len(bases)]
        answer = httpx.post(
            f"{base}/api/v1/usage/events",
            json={"events": batch},
            headers={"X-Api-Key": key},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        accepted += answer.json()["accepted"]
        duplicates += answer.json()["duplicates"]
    return accepted, duplicates


def test_replicas_and_clients_keep_totals_exact(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    ada = factory.person("ada@example.com", team="red", role="admin")
    streams = [("shared-task", StreamEvents("shared-task").stream_id) for _ in range(4)]
    replicas = [serve(database_url, tmp_path) for _ in range(REPLICAS)]
    try:
        bases = [base for _, base in replicas]
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(CLIENTS) as pool:
            results = pool.starmap(
                write_interleaved, [(c, bases, ada.key, streams) for c in range(CLIENTS)]
            )
        steps = CLIENTS * BATCHES * PER_BATCH
        tools = CLIENTS * BATCHES * len(range(0, PER_BATCH, 6))
        assert sum(a for a, _ in results) == steps + tools + len(streams)
        assert sum(d for _, d in results) == CLIENTS * BATCHES * len(streams) - len(streams)
        finishes = [StreamEvents(t, s).finished(10**5) for t, s in streams]
        httpx.post(
            f"{bases[0]}/api/v1/usage/events", json={"events": finishes}, headers=ada.headers
        ).raise_for_status()
        for base in bases:  # every replica answers the same
            with UsageClient(base, api_key=ada.key) as usage:
                task = usage.task("shared-task")
                assert task.stream_count == len(streams)
                assert task.step_count == steps
                assert task.tool_calls == tools and task.tool_time_ms == tools * 4
                assert usage.summary().total_tasks == 1
    finally:
        for process, _ in replicas:
            stop(process)


def test_the_sweeper_closes_each_idle_stream_once_across_replicas(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    ada = factory.person("ada@example.com", team="red", role="admin")
    idle = [StreamEvents(f"idle-{i}") for i in range(IDLE_STREAMS)]
    sweeping = {"TASKMETER_STREAM_TIMEOUT_S": "1", "TASKMETER_SWEEP_INTERVAL_S": "1"}
    replicas = [serve(database_url, tmp_path, sweeping, log_level="info") for _ in range(3)]
    try:
        events = [e for s in idle for e in (s.started(0), s.step(1))]
        answer = httpx.post(
            f"{replicas[0][1]}/api/v1/usage/events", json={"events": events}, headers=ada.headers
        )
        assert answer.status_code == 200
        deadline = time.monotonic() + 30
        with UsageClient(replicas[1][1], api_key=ada.key) as usage:
            while usage.tasks(status="aborted", limit=1).total < IDLE_STREAMS:
                assert time.monotonic() < deadline, "the sweepers did not close the streams"
                time.sleep(0.2)
            time.sleep(2.5)  # every replica has swept at least once more by now
            summary = usage.summary()
            assert summary.total_tasks == IDLE_STREAMS
            assert usage.tasks(status="aborted", limit=1).total == IDLE_STREAMS
            assert usage.task("idle-7").error_message == "stream timed out"
    finally:
        for process, _ in replicas:
            stop(process)
    closed = [
        int(n)
        for path in tmp_path.glob("serve-*.log")
        for n in re.findall(r"sweeper closed (\d+) idle streams", path.read_text())
    ]
    assert sum(closed) == IDLE_STREAMS, closed  # each stream closed by exactly one replica


def test_workers_share_one_port_keep_totals_exact_and_stop_together(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    """`serve --workers 2` (here TASKMETER_WORKERS): two processes answer on one port, both
    take connections, clients writing the same streams through it get exact totals, and
    stopping serve stops them all."""
    ada = factory.person("ada@example.com", team="red", role="admin")
    streams = [("shared-task", StreamEvents("shared-task").stream_id) for _ in range(4)]
    process, base = serve(database_url, tmp_path, {"TASKMETER_WORKERS": "2"})
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while len(workers) < 2:  # uvicorn's multiprocessing resource tracker is also a child
            assert time.monotonic() < deadline, "serve did not start two workers"
            workers = [
                pid
                for pid in descendants(process.pid)
                if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
            ]
            time.sleep(0.1)
        # serve migrated the store itself: its workers do not again (nor load alembic).
        for pid in workers:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"TASKMETER_MIGRATE_ON_START=false" in environment
        # Connections opened at once reach both workers: each has its own listening socket
        # (with a shared one, the first worker awake accepted them all). All 16 on one of
        # the two by chance: 2 in 65,536.
        port = int(base.rsplit(":", 1)[1])
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        try:
            deadline = time.monotonic() + 10
            while sum((spread := accepted_connections(workers, port)).values()) < 16:
                assert time.monotonic() < deadline, spread
                time.sleep(0.05)
        finally:
            for connection in burst:
                connection.close()
        assert all(spread.values()), spread
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(CLIENTS) as pool:
            results = pool.starmap(
                write_interleaved, [(c, [base], ada.key, streams) for c in range(CLIENTS)]
            )
        steps = CLIENTS * BATCHES * PER_BATCH
        tools = CLIENTS * BATCHES * len(range(0, PER_BATCH, 6))
        assert sum(a for a, _ in results) == steps + tools + len(streams)
        finishes = [StreamEvents(t, s).finished(10**5) for t, s in streams]
        httpx.post(
            f"{base}/api/v1/usage/events", json={"events": finishes}, headers=ada.headers
        ).raise_for_status()
        with UsageClient(base, api_key=ada.key) as usage:
            task = usage.task("shared-task")
            assert task.stream_count == len(streams) and task.step_count == steps
            assert task.tool_time_ms == tools * 4
        children = descendants(process.pid)
    finally:
        stop(process)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "workers outlived serve"
        time.sleep(0.1)
