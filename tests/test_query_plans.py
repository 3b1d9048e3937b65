"""Every query the read endpoints and the ingest path run is index-backed: no full scan of
streams, tasks, rollups or events, on either store. Each statement a request executes is
captured and re-run under EXPLAIN (on PostgreSQL with sequential scans disabled, so a Seq Scan
in the plan means no usable index exists; on SQLite a SCAN, even of a covering index, reads
the whole of it)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from taskmeter.identity.principal import Principal
from taskmeter.store import Store
from tests.events import StreamEvents
from tests.factories import Factory
from tests.usage_org import build_org

EVENTS = "/api/v1/usage/events"
BIG_TABLES = ("streams", "tasks", "stream_rollups", "task_rollups", "usage_events")
REQUESTS = [
    ("/api/v1/usage/streams", {}),
    ("/api/v1/usage/streams", {"sort": "cost", "offset": "1", "limit": "2"}),
    ("/api/v1/usage/streams", {"from": "2026-03-28T10:00:00Z", "to": "2026-03-29"}),
    ("/api/v1/usage/streams", {"task_id": "T-A", "status": "error"}),
    ("/api/v1/usage/streams", {"email": "eve@acme.io"}),
    ("/api/v1/usage/tasks", {}),
    ("/api/v1/usage/tasks", {"sort": "cost"}),
    ("/api/v1/usage/tasks", {"email": "eve@acme.io", "from": "2026-03-28"}),
    ("/api/v1/usage/tasks/T-A", {}),
    ("/api/v1/usage/summary", {}),
    (
        "/api/v1/usage/summary",
        {
            "group_by": "day",
            "tz": "Europe/Berlin",
            "from": "2026-03-28T10:07:00Z",
            "to": "2026-03-30T01:00:00Z",
        },
    ),
]


def _full_scans(store: Store, statement: str, parameters: Any) -> list[str]:
    with store.read_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        if store.dialect == "postgresql":
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = [row[0] for row in cursor.fetchall()]
            cursor.execute("RESET enable_seqscan")
            return [
                line
                for line in plan
                if re.search(r"Seq Scan on (" + "|".join(BIG_TABLES) + r")\b", line)
            ]
        cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        plan = [row[-1] for row in cursor.fetchall()]
        return [line for line in plan if re.match(r"SCAN (" + "|".join(BIG_TABLES) + r")\b", line)]


@pytest.mark.parametrize(("path", "params"), REQUESTS)
def test_read_queries_use_indexes(
    client: TestClient, factory: Factory, store: Store, path: str, params: dict[str, str]
) -> None:
    org = build_org(client, factory)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    event.listen(store.read_engine, "before_cursor_execute", capture)
    try:
        answer = client.get(path, params=params, headers=org.boss.headers)
    finally:
        event.remove(store.read_engine, "before_cursor_execute", capture)
    assert answer.status_code == 200, answer.text
    touching = [(s, p) for s, p in captured if any(t in s for t in BIG_TABLES)]
    assert touching, "the request ran no query on the usage tables"
    for statement, parameters in touching:
        assert _full_scans(store, statement, parameters) == [], statement


def test_the_detector_sees_a_full_scan(store: Store) -> None:
    """The check above can fail: an unindexed predicate is reported as a full scan."""
    placeholder = "%(n)s" if store.dialect == "postgresql" else ":n"
    statement = f"SELECT stream_id FROM streams WHERE tool_calls = {placeholder}"
    assert _full_scans(store, statement, {"n": 3}) != []


def test_ingest_queries_use_indexes(client: TestClient, factory: Factory, store: Store) -> None:
    """The write path's lookups (owners, streams, the stored-duplicates check, tasks) are
    index-backed too: a full scan of usage_events per batch grows with every event stored."""
    ada = factory.person("ada@example.com")
    streams = [StreamEvents(f"task-{n}") for n in range(3)]
    events = [
        e
        for s in streams
        for e in (s.started(0, model="m"), s.tool(1, "nmap", 5), s.step(2, 9), s.finished(3))
    ]
    assert client.post(EVENTS, json={"events": events}, headers=ada.headers).status_code == 200
    captured: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool
    ) -> None:
        if not many and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    event.listen(store.write_engine, "before_cursor_execute", capture)
    try:
        resent = [*events[:6], streams[0].tool(4, "httpx", 7)]  # duplicates and a new event
        answer = client.post(EVENTS, json={"events": resent}, headers=ada.headers)
    finally:
        event.remove(store.write_engine, "before_cursor_execute", capture)
    assert answer.status_code == 200 and answer.json()["duplicates"] == 6, answer.text
    touching = [(s, p) for s, p in captured if any(t in s for t in BIG_TABLES)]
    assert any("usage_events" in s for s, _ in touching), "no stored-duplicates check seen"
    for statement, parameters in touching:
        assert _full_scans(store, statement, parameters) == [], statement


def test_the_write_path_never_keeps_a_plan(client: TestClient, factory: Factory) -> None:
    """Ingest statements are planned for the tables as they are each time: psycopg would
    otherwise prepare them on their fifth run, and PostgreSQL keep a generic plan made while
    a fresh store's tables were tiny and unanalyzed (which read a whole scope's tasks for
    every batch once they had grown)."""
    served: Store = client.app.state.store  # type: ignore[attr-defined]
    if served.dialect != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    factory.person("ada@example.com")
    ingestor = client.app.state.ingestor  # type: ignore[attr-defined]
    service = Principal(via="api_key", key_id="key_test", service_name="test")
    for n in range(12):  # more runs than psycopg prepares after, with nothing in between
        s = StreamEvents(f"task-{n}")
        batch = [s.started(0, model="m", user="ada@example.com"), s.tool(1), s.finished(2)]
        assert ingestor.ingest(service, batch).accepted == 3
    pooled = served.write_engine.pool.checkedin()  # type: ignore[attr-defined]
    with contextlib.ExitStack() as every:
        connections = [every.enter_context(served.write_engine.connect()) for _ in range(pooled)]
        kept = [
            statement
            for conn in connections
            for (statement,) in conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")
        ]
    assert kept == []
    with served.read_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None and raw.prepare_threshold is not None  # reads keep theirs
