"""Concurrent writers on the same streams lose nothing and double nothing (both stores)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor, IngestResult, parse_batch
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.tables import Stream
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


def _waiting_on_a_lock(store: Store) -> bool:
    with store.read() as db:
        waiting = db.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def test_a_batch_whose_new_stream_is_created_meanwhile_is_retried_whole(
    store: Store, factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two batches open the same new stream at once: the later one, having found the stream
    missing, waits on its key while the first commits, then starts over and finds it
    stored. Nothing is lost or doubled."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite writers never overlap: the second waits before it looks")
    factory.person("ada@example.com")
    service = Principal(via="api_key", key_id="key_test", service_name="race-test")
    ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
    stream = StreamEvents("race-task")
    opening = [stream.started(0, user="ada@example.com", model="gpt-4o"), stream.step(1)]
    later = stream.step(2)
    holding, release = threading.Event(), threading.Event()

    def first_batch_held_open() -> None:
        parsed = parse_batch(opening, IngestResult())
        assert sum(map(len, parsed.values())) == len(opening)
        with store.write() as db:
            ingestor._store(db, service, parsed, IngestResult())
            holding.set()
            assert release.wait(20)

    first = threading.Thread(target=first_batch_held_open)
    first.start()
    try:
        assert holding.wait(20)
        with (
            caplog.at_level(logging.DEBUG, logger="taskmeter.ingest"),
            ThreadPoolExecutor(1) as pool,
        ):
            second = pool.submit(ingestor.ingest, service, [*opening, later])
            deadline = time.monotonic() + 20
            while not _waiting_on_a_lock(store):
                assert time.monotonic() < deadline, "the second batch never waited"
                time.sleep(0.02)
            release.set()
            result = second.result(timeout=20)
    finally:
        release.set()
        first.join()
    assert (result.accepted, result.duplicates, result.rejected) == (1, 2, [])
    assert "created meanwhile" in caplog.text
    with store.read() as db:
        row = db.execute(select(Stream).where(Stream.stream_id == stream.stream_id)).scalar_one()
    assert row.step_count == 2 and row.started
