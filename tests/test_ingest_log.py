"""The durable ingest log on real NATS JetStream and real stores: batches acknowledged once
JetStream holds them, applied exactly once by projectors, through store outages and SIGKILLs.

Every test gets a JetStream stream of its own (deleted at the end). The reference for "the
same numbers" is the direct path: the same events ingested straight into a store of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from taskmeter.config import normalise_database_url
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade
from tests.events import StreamEvents
from tests.pg_instance import PgInstance, pg_bin
from tests.processes import TASKMETER, serve, stop

NATS_URL = "nats://127.0.0.1:4222"
USER = "agent@example.com"


def _nats_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _nats_up(), reason="NATS JetStream is not running")


@pytest.fixture
def log_stream() -> Iterator[str]:
    name = f"TM_TEST_{uuid.uuid4().hex[:12].upper()}"
    yield name

    async def drop() -> None:
        import nats

        nc = await nats.connect(NATS_URL)
        with contextlib.suppress(Exception):  # never created, or gone already
            await nc.jetstream().delete_stream(name)
        await nc.close()

    asyncio.run(drop())


def log_env(stream: str, **extra: str) -> dict[str, str]:
    return {"TASKMETER_INGEST_LOG": NATS_URL, "TASKMETER_INGEST_LOG_STREAM": stream, **extra}


def workload(streams: int = 24, seed: int = 7) -> list[list[dict[str, Any]]]:
    """Batches of interleaved, shuffled events of `streams` streams (with repeats inside and
    across batches), as agent platforms send them."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(streams):
        s = StreamEvents(f"task-{n % 9}", str(uuid.UUID(int=rng.getrandbits(128))))
        s.started(0, user=USER, model="gpt-4o")
        for i in range(rng.randint(2, 6)):
            s.llm(1 + i, model="gpt-4o", provider="openai", input_tokens=rng.randint(100, 5000))
            s.tool(1.5 + i, name=rng.choice(["nuclei", "nmap", "httpx"]), duration_ms=300)
        s.finished(30)
        events += s.events
    rng.shuffle(events)
    batches = [events[i : i + 37] for i in range(0, len(events), 37)]
    # A few events sent again in later batches: store duplicates, not batch repeats.
    for batch in batches[3:]:
        batch.append(rng.choice(batches[0]))
    return batches


def setup_store(url: str) -> str:
    """Migrate, create the user and a service key; returns the key."""
    store = Store(normalise_database_url(url))
    upgrade(store.write_engine)
    with store.write() as db:
        service.create_user(db, USER)
        key = service.create_key(db, service="ingest").plaintext
    store.dispose()
    return key


def reference_figures(batches: list[list[dict[str, Any]]], tmp: Path) -> list[tuple[Any, ...]]:
    """The direct path's figures for the same batches, in a store of their own."""
    url = f"sqlite:///{tmp / 'reference.db'}"
    setup_store(url)
    store = Store(normalise_database_url(url))
    ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
    principal = Principal(via="api_key", key_id="ref", service_name="ingest")
    for batch in batches:
        ingestor.ingest(principal, batch)
    figures = figures_of(url)
    store.dispose()
    return figures


def figures_of(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(normalise_database_url(url))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT stream_id, task_id, status, llm_calls, tool_calls, input_tokens, "
                "neo_credits_nano, (SELECT count(*) FROM usage_events e "
                "WHERE e.stream_id = s.stream_id) FROM streams s ORDER BY stream_id"
            )
        ).all()
        tasks = conn.execute(
            text("SELECT task_id, stream_count, base_nano FROM tasks ORDER BY 1")
        ).all()
    engine.dispose()
    # Stream ids as UUIDs: SQLite keeps 32 hex digits, PostgreSQL its uuid type.
    streams = [(str(uuid.UUID(str(r[0]))), *(str(v) for v in r[1:])) for r in rows]
    return sorted(streams) + [("task", *map(str, t)) for t in tasks]


def post(base: str, key: str, batch: list[dict[str, Any]], *, attempts: int = 1) -> httpx.Response:
    for attempt in range(attempts):
        try:
            return httpx.post(
                f"{base}/api/v1/usage/events",
                headers={"X-Api-Key": key},
                json={"events": batch},
                timeout=30,
            )
        except httpx.HTTPError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def wait_projected(base: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{base}/readyz", timeout=10)
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            if body.get("store") == "ok" and body["log"]["lag_messages"] == 0:
                return body
        time.sleep(0.3)
    raise AssertionError(f"projection did not catch up: {answer.text}")


def test_logged_batches_are_applied_exactly_once(
    database_url: str, log_stream: str, tmp_path: Path
) -> None:
    key = setup_store(database_url)
    batches = workload()
    process, base = serve(database_url, tmp_path, log_env(log_stream))
    try:
        answers = [post(base, key, batch) for batch in batches]
        assert {a.status_code for a in answers} == {200}
        ids = [a.json()["batch_id"] for a in answers]
        assert len(set(ids)) == len(ids)
        # Accepted counts validation: every event of a valid batch, repeats included.
        assert [a.json()["accepted"] for a in answers] == [len(b) for b in batches]
        # The same batch again: the same id, dropped by JetStream's duplicate window.
        again = post(base, key, batches[2])
        assert again.status_code == 200 and again.json()["batch_id"] == ids[2]
        bad = post(base, key, [{"id": "x", "type": "nope"}, batches[0][0]])
        assert bad.status_code == 207 and bad.json()["accepted"] == 1
        assert [r["code"] for r in bad.json()["rejected"]] == ["unknown_type"]
        wait_projected(base)
        metrics = httpx.get(f"{base}/metrics").text
        assert "taskmeter_ingest_log_lag_messages 0" in metrics
    finally:
        stop(process)
    assert figures_of(database_url) == reference_figures(batches, tmp_path)


@pytest.mark.skipif(pg_bin() is None, reason="no PostgreSQL server binaries to start one")
def test_ingestion_goes_on_while_postgresql_is_down(log_stream: str, tmp_path: Path) -> None:
    pg = PgInstance()
    try:
        key = setup_store(pg.url)
        batches = workload(streams=30, seed=11)
        process, base = serve(pg.url, tmp_path, log_env(log_stream))
        try:
            first, rest = batches[:4], batches[4:]
            for batch in first:
                assert post(base, key, batch).status_code == 200
            wait_projected(base)
            pg.stop()
            for batch in rest:  # the store is down: the log takes them
                answer = post(base, key, batch)
                assert answer.status_code == 200, answer.text
            time.sleep(1.2)  # past the cached lag figure
            ready = httpx.get(f"{base}/readyz").json()
            assert ready["store"] == "unavailable" and ready["log"]["lag_messages"] > 0, ready
            pg.start()
            pg.wait_ready()
            wait_projected(base, timeout=90)
        finally:
            stop(process)
        assert figures_of(pg.url) == reference_figures(batches, tmp_path)
    finally:
        pg.destroy()


def _projector(url: str, stream: str, cwd: Path) -> subprocess.Popen[bytes]:
    import os

    log = open(cwd / f"projector-{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [TASKMETER, "projector", "--log-level", "warning"],
        env={**os.environ, "TASKMETER_DATABASE_URL": url, **log_env(stream)},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def test_sigkill_of_serve_and_projectors_loses_and_doubles_nothing(
    database_url: str, log_stream: str, tmp_path: Path
) -> None:
    """Two replicas without projectors of their own take a backlog (one is killed with SIGKILL
    half-way; its clients retry on the other); then two `taskmeter projector`s apply it, each
    killed with SIGKILL at random points mid-work and started again. Every acknowledged batch
    lands exactly once: the same figures as the direct path. A projector that acknowledged
    before its transaction committed loses the batches it held when killed (checked)."""
    if database_url.startswith("sqlite"):
        pytest.skip("replicas and projectors in several processes: the PostgreSQL deployment")
    key = setup_store(database_url)
    batches = workload(streams=1200, seed=5)
    env = log_env(log_stream, TASKMETER_PROJECTOR="false")
    rng = random.Random(3)
    servers = [serve(database_url, tmp_path, env) for _ in range(2)]
    acknowledged: list[list[dict[str, Any]]] = []
    projectors: list[subprocess.Popen[bytes]] = []
    try:
        kill_at = rng.randrange(len(batches) // 4, len(batches) // 2)
        for n, batch in enumerate(batches):
            if n == kill_at:
                servers[0][0].send_signal(signal.SIGKILL)
                servers[0][0].wait()
            answer = None
            for process, base in (servers[n % 2], servers[(n + 1) % 2]):
                if process.poll() is None:
                    answer = post(base, key, batch, attempts=2)
                    break
            if answer is not None and answer.status_code == 200:
                acknowledged.append(batch)
        assert len(acknowledged) == len(batches)
        projectors = [_projector(database_url, log_stream, tmp_path) for _ in range(2)]
        # Killed only while the backlog is being worked through, after the projector has had
        # time to start (about a second) and take messages.
        for _ in range(10):
            time.sleep(rng.uniform(1.2, 2.2))
            if httpx.get(f"{servers[1][1]}/readyz").json()["log"]["lag_messages"] == 0:
                break
            victim = rng.randrange(2)
            projectors[victim].send_signal(signal.SIGKILL)
            projectors[victim].wait()
            projectors[victim] = _projector(database_url, log_stream, tmp_path)
        wait_projected(servers[1][1], timeout=120)
    finally:
        for process, _ in servers:
            if process.poll() is None:
                stop(process)
        for projector in projectors:
            projector.send_signal(signal.SIGTERM)
            projector.wait(timeout=20)
    assert figures_of(database_url) == reference_figures(acknowledged, tmp_path)


def test_readyz_fails_when_projection_falls_behind(
    database_url: str, log_stream: str, tmp_path: Path
) -> None:
    key = setup_store(database_url)
    env = log_env(log_stream, TASKMETER_PROJECTOR="false", TASKMETER_MAX_LAG_S="0.5")
    process, base = serve(database_url, tmp_path, env)
    projector = None
    try:
        assert post(base, key, workload(streams=3)[0]).status_code == 200
        time.sleep(1.5)
        behind = httpx.get(f"{base}/readyz")
        assert behind.status_code == 503 and "behind" in behind.json()["message"]
        projector = _projector(database_url, log_stream, tmp_path)
        wait_projected(base)
    finally:
        stop(process)
        if projector is not None:
            projector.send_signal(signal.SIGTERM)
            projector.wait(timeout=20)
