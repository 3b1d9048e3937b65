"""Test stores, for real: every store test runs on SQLite and on PostgreSQL.

PostgreSQL: one throwaway database per test run (created from TASKMETER_TEST_PG_URL, default
the machine's server), migrated once, its tables truncated before each test, dropped at the
end. SQLite: a migrated template file copied afresh for each test.
`TASKMETER_TEST_STORES=sqlite` (or `postgresql`) narrows the run while developing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from taskmeter.app import create_app
from taskmeter.config import Settings, normalise_database_url
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade
from taskmeter.store.tables import Base
from tests.factories import Factory

# Property tests draw the same examples on every run unless asked to explore, like the
# schemathesis seed: a red CI then means the code changed, not the dice.
# TASKMETER_HYPOTHESIS_SEED=random draws new examples each run.
hypothesis_settings.register_profile("fixed", derandomize=True)
hypothesis_settings.register_profile("random", derandomize=False)
hypothesis_settings.load_profile(
    "random" if os.environ.get("TASKMETER_HYPOTHESIS_SEED") == "random" else "fixed"
)

PG_ADMIN_URL = os.environ.get("TASKMETER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
STORES = [
    s.strip() for s in os.environ.get("TASKMETER_TEST_STORES", "sqlite,postgresql").split(",")
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own TASKMETER_* settings must not leak into tests.
    for name in list(os.environ):
        if name.startswith("TASKMETER_") and not name.startswith("TASKMETER_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    admin = create_engine(normalise_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"taskmeter_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = normalise_database_url(PG_ADMIN_URL).rpartition("/")
    url = f"{base}/{name}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "taskmeter.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def _truncate_all(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=STORES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty store of each kind, as an operator would write its URL."""
    if request.param == "sqlite":
        target = tmp_path / "taskmeter.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_database_url")
    _truncate_all(url)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings.sqlalchemy_url)
    yield store
    store.dispose()


@pytest.fixture
def factory(store: Store) -> Factory:
    return Factory(store)


@pytest.fixture
def client(settings: Settings, store: Store) -> Iterator[TestClient]:
    app = create_app(settings, store=store)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def cli(database_url: str) -> CliRunner:
    return CliRunner(env={"TASKMETER_DATABASE_URL": database_url})


@pytest.fixture
def live_server(settings: Settings, store: Store) -> Iterator[str]:
    """The real app served by uvicorn on a free loopback port, for tests that need real
    concurrent HTTP clients; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, store=store),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
