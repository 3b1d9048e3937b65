"""The schema: migrations from empty, in step with the tables, times kept in UTC."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from taskmeter.app import create_app
from taskmeter.config import Settings, normalise_database_url
from taskmeter.errors import UNAVAILABLE, store_fault
from taskmeter.ingest.rows import append_events, insert_streams, new_stream, write_streams
from taskmeter.store import Store
from taskmeter.store.bulk import fetch_compiled
from taskmeter.store.engine import one_snapshot
from taskmeter.store.migrate import alembic_config, upgrade
from taskmeter.store.tables import STREAM_COLUMNS, Base, Stream, StreamRow, UsageEvent, User
from tests.conftest import PG_ADMIN_URL, STORES


@pytest.fixture(params=STORES)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield normalise_database_url(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    admin = create_engine(normalise_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"taskmeter_empty_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield normalise_database_url(PG_ADMIN_URL).rpartition("/")[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migrations_build_every_table_from_empty_and_are_idempotent(empty_url: str) -> None:
    engine = create_engine(empty_url)
    assert inspect(engine).get_table_names() == []
    upgrade(engine)
    upgrade(engine)  # a second run (a restart, a second replica) changes nothing
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"} == tables
    engine.dispose()


def test_migrations_match_the_table_definitions(empty_url: str) -> None:
    engine = create_engine(empty_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"tables.py and the migrations disagree: {diff}"


def test_migrations_downgrade_to_empty_and_back(empty_url: str) -> None:
    engine = create_engine(empty_url)
    upgrade(engine)
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert "streams" in inspect(engine).get_table_names()
    engine.dispose()


def test_times_are_stored_in_utc_whatever_offset_they_come_with(store: Store) -> None:
    plus_two = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    with store.write() as db:
        db.add(User(email="tz@example.com", created_at=plus_two))
    with store.read() as db:
        stored = db.scalars(select(User.created_at)).one()
    assert stored == plus_two
    assert stored.tzinfo is UTC
    assert stored.hour == 23 and stored.day == 28


def test_naive_datetimes_are_refused(store: Store) -> None:
    from sqlalchemy.exc import StatementError

    with pytest.raises(StatementError, match="naive datetime"), store.write() as db:
        db.add(User(email="naive@example.com", created_at=datetime(2026, 1, 1)))
        db.flush()


def test_store_answers_ping(store: Store) -> None:
    store.ping()


def _add_user(store: Store, email: str) -> None:
    with store.write() as db:
        db.add(User(email=email, created_at=datetime.now(UTC)))


def test_a_read_asking_for_one_snapshot_sees_no_later_commit(store: Store) -> None:
    """A summary's statements must agree with each other while ingestion commits between them."""
    count = select(func.count()).select_from(User)
    _add_user(store, "before@example.com")
    with store.read() as db:
        one_snapshot(db)
        assert db.scalar(count) == 1
        _add_user(store, "meanwhile@example.com")
        assert db.scalar(count) == 1
    with store.read() as db:
        assert db.scalar(count) == 2


@pytest.mark.skipif("postgresql" not in STORES, reason="PostgreSQL not among the test stores")
def test_postgresql_reads_hold_no_transaction(store: Store) -> None:
    """Plain reads autocommit (no BEGIN and ROLLBACK round trips), and see each commit at once."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite reads are deferred transactions (snapshots in WAL mode)")
    count = select(func.count()).select_from(User)
    with store.read() as db:
        assert db.scalar(count) == 0
        raw = db.connection().connection.driver_connection
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        _add_user(store, "meanwhile@example.com")
        assert db.scalar(count) == 1
    with store.read() as db:
        one_snapshot(db)
        db.scalar(count)
        raw = db.connection().connection.driver_connection
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    with store.read() as db:  # the pooled connection is back to autocommit
        db.scalar(count)
        raw = db.connection().connection.driver_connection
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_upgrade_renders_the_tasks_stored_before_0005(empty_url: str) -> None:
    """0005 replaced the stored figures with each task's TaskUsage JSON; tasks already stored
    are rendered by the migration, page by page, and read back as the API serves them."""
    import json

    from sqlalchemy import MetaData, Table

    engine = create_engine(empty_url)
    command.upgrade(alembic_config(engine), "0004")
    tasks = Table("tasks", MetaData(), autoload_with=engine)
    figures = {
        "task_title": "Scan example.com",
        "model": "gpt-4o",
        "status": "completed",
        "error_message": None,
        "is_byok": False,
        "created_at": "2026-03-01T10:00:00+00:00",
        "finished_at": "2026-03-01T10:05:00+00:00",
        "step_count": 4,
        "step_latency_ms": 1001,
        "tool_calls": 2,
        "tool_time_ms": 2200,
        "tool_breakdown": {"nuclei": {"calls": 2, "total_duration_ms": 2200}},
        "tool_history": [
            [1772359201000, "e1", "nuclei", 1500],
            [1772359203000, "e2", "nuclei", 700],
        ],
        "agent_triggers": 1,
        "agent_breakdown": {"recon": 1},
        "llm_time_ms": 900,
        "total_execution_ms": 300000,
        "neo_credits_nano": 1_500_000_000,
        "llm_cost_nano": 1_500_000_000,
        "neo_cost_nano": None,
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_tokens": 100,
        "cache_write_tokens": 0,
        "llm_calls": 1,
        "stream_count": 1,
        "owner_user_id": None,
        "base_nano": 1_500_000_000,
    }
    with engine.begin() as conn:
        conn.execute(
            tasks.insert(),
            [
                {
                    "scope": f"u{n}",
                    "task_id": f"task-{n}",
                    "created_at": datetime(2026, 3, 1, 10, tzinfo=UTC),
                    "status": "completed",
                    "model": "gpt-4o",
                    "is_byok": False,
                    "stream_count": 1,
                    "base_nano": 1_500_000_000,
                    "row": {**figures, "task_id": f"task-{n}"},
                }
                for n in range(3)
            ],
        )
    upgrade(engine)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT task_id, usage FROM tasks ORDER BY task_id")).all()
        assert "row" not in {c["name"] for c in inspect(conn).get_columns("tasks")}
    engine.dispose()
    assert [task_id for task_id, _ in stored] == ["task-0", "task-1", "task-2"]
    for task_id, usage in stored:
        served = json.loads(usage)
        assert served["task_id"] == task_id and "email" not in served
        assert served["neo_credits"] == 1.5 and served["llm_cost"] == 1.5
        assert served["neo_cost"] is None
        assert served["created_at"] == "2026-03-01T10:00:00Z"
        assert served["avg_step_latency_ms"] == 250
        assert served["total_tokens"] == 1200
        assert [
            (h["index"], h["tool_name"], h["duration_ms"]) for h in served["tool_call_history"]
        ] == [
            (0, "nuclei", 1500),
            (1, "nuclei", 700),
        ]


def test_writers_of_one_process_take_turns_within_the_busy_timeout(store: Store) -> None:
    """Writers wait for each other as long as the store's busy timeout and no longer, then
    fail with the fault clients are told of (on SQLite, a lock the process's writers queue
    on; on PostgreSQL, writers to different rows do not wait at all)."""
    hurried = Store(store.url, sqlite_busy_timeout_ms=300)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with hurried.write() as db:
            db.execute(select(User.id))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        began = time.monotonic()
        try:
            with hurried.write() as db:
                db.execute(select(User.id))
            fault = None
        except OperationalError as exc:
            fault = store_fault(exc)
        waited = time.monotonic() - began
    finally:
        release.set()
        holder.join()
    if store.dialect == "sqlite":
        assert fault == "the database is locked by another writer; retry shortly"
        assert 0.25 <= waited < 5
    else:
        assert fault is None
    with hurried.write() as db:  # its turn, once the holder is done
        db.execute(select(User.id))
    hurried.dispose()


def test_upgrade_keeps_the_events_stored_before_0006(empty_url: str) -> None:
    """0006 keys usage_events by (stream_id, event_id) in place of a surrogate id: events
    already stored stay, a second copy of one is still refused, and the way back to 0005
    gives every event an id again."""
    from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Uuid, func
    from sqlalchemy.exc import IntegrityError

    from taskmeter.store.types import JSONDoc, UTCDateTime

    engine = create_engine(empty_url)
    config = alembic_config(engine)
    command.upgrade(config, "0005")

    def events(*key: Column[Any]) -> Table:
        return Table(
            "usage_events",
            MetaData(),
            *key,
            Column("stream_id", Uuid),
            Column("event_id", String(128)),
            Column("task_id", String(256)),
            Column("type", String(32)),
            Column("time", UTCDateTime()),
            Column("model", String(200)),
            Column("payload", JSONDoc()),
            Column("cost_nano", BigInteger),
            Column("received_at", UTCDateTime()),
        )

    stream = uuid.uuid4()
    at = datetime(2026, 3, 1, 10, tzinfo=UTC)
    rows = [
        {
            "stream_id": stream,
            "event_id": f"e{n}",
            "task_id": "task-1",
            "type": "tool.call",
            "time": at + timedelta(seconds=n),
            "model": None,
            "payload": {"tool_name": "nmap", "duration_ms": n},
            "cost_nano": None,
            "received_at": at,
        }
        for n in range(3)
    ]

    def surrogate() -> Column[Any]:
        return Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)

    with engine.begin() as conn:
        conn.execute(events(surrogate()).insert(), rows)

    upgrade(engine)
    assert "id" not in {c["name"] for c in inspect(engine).get_columns("usage_events")}
    keyed = events()
    with engine.begin() as conn:
        stored = conn.execute(select(keyed).order_by(keyed.c.event_id)).mappings().all()
        assert [dict(r) for r in stored] == rows
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(keyed.insert(), rows[:1])

    command.downgrade(config, "0005")
    back = events(surrogate())
    with engine.begin() as conn:
        ids = conn.execute(select(back.c.id)).scalars().all()
        assert len(ids) == 3 and len(set(ids)) == 3 and None not in ids
        count = conn.execute(select(func.count()).select_from(back)).scalar_one()
    assert count == 3
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(back.insert(), rows[:1])
    engine.dispose()


def test_the_app_migrates_on_start_unless_told_not_to(empty_url: str) -> None:
    """The app brings its store to head as it starts; with TASKMETER_MIGRATE_ON_START=false
    (what `serve --workers N` gives its workers, having migrated once itself) it leaves the
    store alone, and alembic is never imported (10 MiB a worker)."""
    engine = create_engine(empty_url)
    told_not = Settings(database_url=empty_url, migrate_on_start=False)
    with TestClient(create_app(told_not)):
        assert inspect(engine).get_table_names() == []
    with TestClient(create_app(Settings(database_url=empty_url))):
        assert "streams" in inspect(engine).get_table_names()
    engine.dispose()
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, taskmeter.app; print('alembic' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"


def test_large_values_are_compressed_with_lz4_where_the_server_has_it(empty_url: str) -> None:
    """0007: a stream's tool history (and a task's rendered usage) past PostgreSQL's 2 kB
    threshold is compressed with lz4, which costs a fraction of pglz's time; it reads back
    the same, and after a downgrade the columns are back on the server's default."""
    engine = create_engine(empty_url)
    upgrade(engine)
    store = Store(empty_url)
    row = new_stream(uuid.uuid4(), "task-long")
    row.tool_history = [[1_700_000_000_000 + n, f"e{n}", f"tool-{n % 7}", n] for n in range(400)]
    with store.write() as db:
        insert_streams(db, [row])

    def stored() -> tuple[Any, str | None]:
        with engine.connect() as conn:
            history = conn.execute(select(Stream.tool_history)).scalar_one()
            if engine.dialect.name != "postgresql":
                return history, None
            method = conn.execute(
                text("SELECT pg_column_compression(tool_history) FROM streams")
            ).scalar_one()
            return history, method

    if engine.dialect.name != "postgresql":
        assert stored() == (row.tool_history, None)  # nothing to choose on SQLite
    else:
        with engine.connect() as conn:
            choices = conn.execute(
                text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
            ).scalar_one()
        assert stored() == (row.tool_history, "lz4" if "lz4" in choices else "pglz")
        command.downgrade(alembic_config(engine), "0006")
        with engine.connect() as conn:
            methods = conn.execute(
                text(
                    "SELECT DISTINCT attcompression FROM pg_attribute WHERE attrelid IN "
                    "('streams'::regclass, 'tasks'::regclass) AND attnum > 0"
                )
            ).scalars()
            assert set(methods) == {""}  # the server's default again
        assert stored()[0] == row.tool_history  # what lz4 wrote still reads
    store.dispose()
    engine.dispose()


def test_stream_rows_written_in_bulk_read_back_exactly(store: Store) -> None:
    """Ingestion writes many stream rows per statement (on PostgreSQL, new ones by binary COPY
    and updates as one JSON parameter): every column comes back as written, awkward values
    included."""

    def awkward(n: int) -> StreamRow:
        row = new_stream(uuid.uuid4(), f'task "{n}" \\ ünï ✓')
        row.scope = f"u{n}"
        row.started = True
        row.created_at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
        row.finished_at = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=5)))
        row.status = "error"
        row.error_message = "line one\nline two\t'quoted' {\"json\": [1]}"
        row.task_title = "😀 emoji, comma, {brace}"
        row.neo_cost_rate = Decimal("0.123456789")
        row.base_nano = 2**62 + n
        row.model_calls = {"gpt-4o": 3, 'módel "x"': 1}
        row.tool_history = [[1_700_000_000_000, "e\\1", 'n"map', 2**40]]
        row.tool_breakdown = {"nmap": {"calls": 1, "total_ms": 5}}
        return row

    rows = [awkward(n) for n in range(3)]
    with store.write() as db:
        insert_streams(db, rows)
    for row in rows:
        row.step_count = 7
        row.last_event_at = datetime(2026, 3, 1, 13, 0, 0, 1, tzinfo=UTC)
        row.tool_history.append([1_700_000_000_001, "e2", "httpx", 0])
    with store.write() as db:
        write_streams(db, rows[:2])
    with store.read() as db:
        stored = {r.stream_id: r for r in map(StreamRow, db.execute(select(*Stream.__table__.c)))}
    for row in rows:
        back = stored[row.stream_id]
        for name in STREAM_COLUMNS:
            expected = getattr(row, name)
            if row is rows[2] and name in ("step_count", "last_event_at", "tool_history"):
                continue  # not updated
            assert getattr(back, name) == expected, name
    assert stored[rows[2].stream_id].step_count == 0


def test_writes_sent_to_psycopg_fail_as_the_stores_errors(store: Store) -> None:
    """Writes that skip SQLAlchemy (COPY, result-less statements) fail with SQLAlchemy's errors
    like every other statement: a stream inserted twice is an IntegrityError (ingestion retries
    the batch), and a connection lost mid-write is the store being unavailable (a 503 with our
    words), not a bug (a 500)."""
    if store.dialect != "postgresql":
        pytest.skip("the psycopg path is PostgreSQL's")
    row = new_stream(uuid.uuid4(), "task-twice")
    with store.write() as db:
        insert_streams(db, [row])
    with pytest.raises(IntegrityError), store.write() as db:
        insert_streams(db, [row])

    with pytest.raises(OperationalError) as lost, store.write() as db:
        backend = db.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with store.read_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        write_streams(db, [row])
    assert store_fault(lost.value) == UNAVAILABLE
    with store.write() as db:  # the pool hands out a live connection again
        write_streams(db, [row])


def test_events_appended_in_bulk_read_back_exactly(store: Store) -> None:
    """Accepted events go to `usage_events` by COPY (PostgreSQL) or the driver's executemany
    (SQLite), each bypassing the ORM's parameter handling: they read back as written."""
    sid = uuid.uuid4()
    now = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC)
    rows = [
        (sid, "e1", "task ✓", "llm.call", datetime(2026, 3, 1, 11, 0, tzinfo=UTC), "gpt-4o",
         {"input_tokens": 10, "cost_usd": "0.1", "provider": 'o"penai\\'}, 2**40, now, 2**62),
        (sid, "e2", "task ✓", "tool.call",
         datetime(2026, 3, 1, 16, 30, 0, 999999, tzinfo=timezone(timedelta(hours=5))), None,
         {"tool_name": "nmap ünï", "duration_ms": 0}, None, now, None),
    ]  # fmt: skip
    with store.write() as db:
        append_events(db, rows)
    with store.read() as db:
        stored = {e.event_id: e for e in db.scalars(select(UsageEvent))}
    for row in rows:
        event = stored[row[1]]
        back = (event.stream_id, event.event_id, event.task_id, event.type, event.time,
                event.model, event.payload, event.cost_nano, event.received_at,
                event.price_source_id)  # fmt: skip
        assert back == row
    assert stored["e2"].time.utcoffset() == timedelta(0)


def test_small_writes_run_again_on_a_connection_the_server_dropped(store: Store) -> None:
    """Authorize's statements go to psycopg on connections that are not pinged at checkout:
    one the server dropped fails its first statement, and the transaction runs once more on a
    fresh connection."""
    if store.dialect != "postgresql":
        pytest.skip("the psycopg path is PostgreSQL's")
    backend = select(func.pg_backend_pid().label("pid"))

    def pid(db: Session) -> int:
        return int(fetch_compiled(db, backend, {})[0].pid)

    first = store.run_small_write(pid)
    with store.read_engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    second = store.run_small_write(pid)
    assert second != first
