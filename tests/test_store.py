"""The schema: migrations from empty, in step with the tables, times kept in UTC."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

from taskmeter.config import normalise_database_url
from taskmeter.store import Store
from taskmeter.store.migrate import alembic_config, upgrade
from taskmeter.store.tables import Base, User
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
