"""Concurrent writers on the same streams lose nothing and double nothing (both stores)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from taskmeter.store import Store
from tests.events import StreamEvents
from tests.factories import Factory
from tests.test_ingest import task_row

WRITERS = 6
BATCHES = 8
PER_BATCH = 40


def test_parallel_writers_on_the_same_streams(
    live_server: str, factory: Factory, store: Store
) -> None:
    ada = factory.person("ada@example.com")
    streams = [StreamEvents("busy-task"), StreamEvents("busy-task")]
    opening = [e for s in streams for e in (s.started(0, model="gpt-4o"),)]

    def batches(writer: int) -> list[list[dict[str, Any]]]:
        out = []
        for b in range(BATCHES):
            batch = []
            for n in range(PER_BATCH):
                s = streams[n % 2]
                batch.append(s.step(1 + n / 100, latency_ms=10, id=f"w{writer}-b{b}-{n}"))
                if n % 10 == 0:
                    batch.append(s.tool(1 + n / 100, "nmap", 5, id=f"t{writer}-b{b}-{n}"))
            # Every writer also re-sends the opening events: duplicates, never doubles.
            out.append(batch + opening)
        return out

    def write(writer: int) -> tuple[int, int]:
        accepted = duplicates = 0
        with httpx.Client(base_url=live_server, headers=ada.headers, timeout=60) as client:
            for batch in batches(writer):
                answer = client.post("/api/v1/usage/events", json={"events": batch})
                assert answer.status_code == 200, answer.text
                accepted += answer.json()["accepted"]
                duplicates += answer.json()["duplicates"]
        return accepted, duplicates

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(write, range(WRITERS)))
    steps = WRITERS * BATCHES * PER_BATCH
    tools = WRITERS * BATCHES * (PER_BATCH // 10)
    assert sum(a for a, _ in results) == steps + tools + len(opening)
    assert sum(d for _, d in results) == WRITERS * BATCHES * len(opening) - len(opening)

    with httpx.Client(base_url=live_server, headers=ada.headers) as client:
        finish = [s.finished(99) for s in streams]
        assert client.post("/api/v1/usage/events", json={"events": finish}).status_code == 200
    row = task_row(store, "busy-task")
    assert row["stream_count"] == 2
    assert row["step_count"] == steps
    assert row["tool_calls"] == tools and len(row["tool_call_history"]) == tools
    assert row["tool_time_ms"] == tools * 5
    assert row["avg_step_latency_ms"] == 10
