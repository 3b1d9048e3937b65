"""Read replicas, for real: a throwaway primary (initdb, wal_level=replica) and a streaming
replica of it (pg_basebackup -R, hot_standby) on free loopback ports, both of our own.

    app ──writes, authentication, store.read()──▶ primary ──WAL──▶ replica
        ──usage GET endpoints: store.read(replica=True)──────────────┘

Shown: the usage reads are served by the replica (pg_is_in_recovery, and data the replica
has not replayed yet is absent from them while the primary has it); a write through the
replica path is refused; a just-created key authenticates while the replica lags; with
TASKMETER_READ_MAX_LAG_S the reads go to the primary once the paused replica falls behind
and come back when it catches up; a stopped replica sends reads to the primary (answers stay
200, /readyz stays ready and says so) until it is back; a connection lost in the middle of a
read fails that read only. SQLite refuses the setting (`serve` says so in one line).

Skipped only where PostgreSQL's server binaries are missing; the shared server at 5432 is
never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from taskmeter.app import create_app
from taskmeter.cli import app as cli_app
from taskmeter.config import Settings
from taskmeter.store import Store
from taskmeter.store import replica as replica_module
from taskmeter.store.migrate import upgrade
from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.processes import free_port


def _pg_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_basebackup"))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_basebackup")
    return Path(found).parent if found and shutil.which("initdb") else None


class Server:
    """One PostgreSQL server of ours: a data directory, a port, a log."""

    def __init__(self, bin_dir: Path, root: Path, name: str) -> None:
        self.bin = bin_dir
        self.data = root / name
        self.log = root / f"{name}.log"
        self.socket_dir = root
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self, *settings: str) -> None:
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.socket_dir}"]
        options += [f"-c {setting}" for setting in settings]
        self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(options),
            "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


class Pair:
    """A primary and its streaming replica."""

    def __init__(self, bin_dir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="taskmeter-replica-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.primary = Server(bin_dir, self.root, "primary")
        self.replica = Server(bin_dir, self.root, "replica")
        self.primary.run("initdb", "-D", str(self.primary.data), "-A", "trust", "-U", "postgres")
        self.primary.start("wal_level=replica", "max_wal_senders=4")
        self.replica.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.replica.data), "-R", "-X", "stream",
        )  # fmt: skip
        self.start_replica()

    def start_replica(self) -> None:
        self.replica.start("hot_standby=on")

    def replica_sql(self, statement: str) -> Any:
        engine = create_engine(Settings(database_url=self.replica.url).sqlalchemy_url)
        try:
            with engine.connect() as conn:
                return conn.execute(text(statement)).scalar()
        finally:
            engine.dispose()

    def wait_for_replay(self) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        primary = create_engine(Settings(database_url=self.primary.url).sqlalchemy_url)
        with primary.connect() as conn:
            target = conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar()
        primary.dispose()
        wait_for(
            lambda: self.replica_sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            "the replica to replay the primary's writes",
        )

    def remove(self) -> None:
        self.replica.stop()
        self.primary.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_basebackup) are not installed")
    pair = Pair(bin_dir)
    try:
        engine = create_engine(Settings(database_url=pair.primary.url).sqlalchemy_url)
        upgrade(engine)  # the primary only: the replica gets the schema by replay
        engine.dispose()
        yield pair
    finally:
        pair.remove()


@pytest.fixture(autouse=True)
def _fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The production intervals (1 s up, 5 s down) would only make the test wait.
    monkeypatch.setattr(replica_module, "CHECK_INTERVAL_S", 0.05)
    monkeypatch.setattr(replica_module, "DOWN_RETRY_S", 0.2)


def _settings(pair: Pair, **extra: Any) -> Settings:
    return Settings(database_url=pair.primary.url, read_database_url=pair.replica.url, **extra)


@contextlib.contextmanager
def _served(settings: Settings) -> Iterator[tuple[TestClient, Store]]:
    store = Store.from_settings(settings)
    try:
        with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as c:
            yield c, store
    finally:
        store.dispose()


def _ingest(client: TestClient, person: Person, task: str, tokens: int) -> None:
    stream = StreamEvents(task)
    events = [stream.started(0), stream.llm(1, input_tokens=tokens), stream.finished(2)]
    answer = client.post("/api/v1/usage/events", json={"events": events}, headers=person.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(events)


def _task_ids(client: TestClient, person: Person) -> set[str]:
    answer = client.get("/api/v1/usage/tasks", headers=person.headers)
    assert answer.status_code == 200, answer.text
    return {row["task_id"] for row in answer.json()["data"]}


def test_usage_reads_are_served_by_the_replica_and_writes_by_the_primary(pair: Pair) -> None:
    with _served(_settings(pair)) as (client, store):
        with store.read(replica=True) as db:
            assert db.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
        with store.read() as db:
            assert db.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
        with pytest.raises(DBAPIError, match="read-only"), store.read(replica=True) as db:
            db.execute(text("CREATE TABLE written_on_the_replica (n int)"))

        ada = Factory(store).person("ada@replica.example")
        _ingest(client, ada, "replayed", 100)
        pair.wait_for_replay()
        assert _task_ids(client, ada) == {"replayed"}

        pair.replica_sql("SELECT pg_wal_replay_pause()")
        try:
            _ingest(client, ada, "not-replayed", 200)
            # The primary has it; the read API, served by the paused replica, does not yet.
            with store.read() as db:
                on_primary = db.execute(text("SELECT count(*) FROM tasks")).scalar()
            assert on_primary == 2
            assert _task_ids(client, ada) == {"replayed"}
            answer = client.get("/api/v1/usage/tasks/not-replayed", headers=ada.headers)
            assert answer.status_code == 404
            # A key created while the replica lags works at once: authentication reads the
            # primary, and so does its last_used_at write.
            grace = Factory(store).person("grace@replica.example")
            answer = client.get("/api/v1/usage/tasks", headers=grace.headers)
            assert answer.status_code == 200 and answer.json()["data"] == []
            ready = client.get("/readyz").json()
            assert ready["read_replica"]["serving"] == "replica"
        finally:
            pair.replica_sql("SELECT pg_wal_replay_resume()")
        pair.wait_for_replay()
        assert _task_ids(client, ada) == {"replayed", "not-replayed"}
        answer = client.get("/api/v1/usage/summary", headers=ada.headers)
        assert answer.status_code == 200, answer.text


def test_reads_go_to_the_primary_while_the_replica_lags_past_the_maximum(pair: Pair) -> None:
    with _served(_settings(pair, read_max_lag_s=0.5)) as (client, store):
        ada = Factory(store).person("ada@lagging.example")
        _ingest(client, ada, "before-pause", 100)
        pair.wait_for_replay()
        wait_for(lambda: client.get("/readyz").json()["read_replica"]["serving"] == "replica",
                 "the replica to be in use")  # fmt: skip
        pair.replica_sql("SELECT pg_wal_replay_pause()")
        try:
            _ingest(client, ada, "during-pause", 200)
            # Within the maximum the replica still serves, stale; past it, the primary does.
            wait_for(lambda: _task_ids(client, ada) == {"before-pause", "during-pause"},
                     "reads to fall back to the primary", timeout=10)  # fmt: skip
            ready = client.get("/readyz")
            assert ready.status_code == 200
            status = ready.json()["read_replica"]
            assert status["serving"] == "primary" and status["up"] is True
            assert status["lag_s"] > 0.5 and "lagging" in status["reason"]
            metrics = client.get("/metrics").text
            assert "taskmeter_read_replica_in_use 0" in metrics
            assert "taskmeter_read_replica_fallbacks_total 0" not in metrics
        finally:
            pair.replica_sql("SELECT pg_wal_replay_resume()")
        pair.wait_for_replay()
        wait_for(lambda: client.get("/readyz").json()["read_replica"]["serving"] == "replica",
                 "the caught-up replica to be used again")  # fmt: skip
        with store.read(replica=True) as db:
            assert db.execute(text("SELECT pg_is_in_recovery()")).scalar() is True


def test_a_stopped_replica_sends_reads_to_the_primary(
    pair: Pair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _served(_settings(pair)) as (client, store):
        ada = Factory(store).person("ada@stopped.example")
        _ingest(client, ada, "first", 100)
        pair.wait_for_replay()
        assert _task_ids(client, ada) == {"first"}  # the replica is in use, its pool warm

        # No probe before the next reads: the read itself finds the replica gone (the pool's
        # ping of its kept connection fails) and goes to the primary instead of failing.
        monkeypatch.setattr(replica_module, "CHECK_INTERVAL_S", 3600)
        pair.replica.stop()
        try:
            with caplog.at_level(logging.WARNING, logger="taskmeter.store"):
                _ingest(client, ada, "while-replica-down", 200)
                for _ in range(5):  # every read answers, from the primary, with fresh data
                    assert _task_ids(client, ada) == {"first", "while-replica-down"}
            assert any("reads go to the primary" in r.getMessage() for r in caplog.records)
            with store.read(replica=True) as db:
                assert db.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
            ready = client.get("/readyz")
            assert ready.status_code == 200
            status = ready.json()["read_replica"]
            assert status["up"] is False and status["serving"] == "primary"
            assert "unreachable" in status["reason"]
            assert "taskmeter_read_replica_up 0" in client.get("/metrics").text
        finally:
            pair.start_replica()
        pair.wait_for_replay()

        def on_replica() -> bool:
            with store.read(replica=True) as db:
                return bool(db.execute(text("SELECT pg_is_in_recovery()")).scalar())

        wait_for(on_replica, "reads to return to the restarted replica")
        assert _task_ids(client, ada) == {"first", "while-replica-down"}


def test_a_connection_lost_mid_read_fails_that_read_and_sends_the_next_to_the_primary(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "DOWN_RETRY_S", 3600)
    store = Store.from_settings(_settings(pair))
    try:
        with pytest.raises(DBAPIError), store.read(replica=True) as db:
            pid = db.execute(text("SELECT pg_backend_pid()")).scalar()
            pair.replica_sql(f"SELECT pg_terminate_backend({pid})")
            db.execute(text("SELECT 1"))
        assert store.replica is not None and "unreachable" in store.replica.state.reason
        with store.read(replica=True) as db:
            assert db.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
    finally:
        store.dispose()


def test_sqlite_refuses_a_read_replica(tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'taskmeter.db'}"
    with pytest.raises(ValidationError, match="SQLite store has no streaming replicas"):
        Settings(database_url=sqlite, read_database_url="postgresql://127.0.0.1/replica")
    with pytest.raises(ValidationError, match="needs TASKMETER_READ_DATABASE_URL"):
        Settings(database_url=sqlite, read_max_lag_s=2)
    with pytest.raises(ValidationError, match="must be a postgresql:// URL"):
        Settings(database_url="postgresql://127.0.0.1/primary", read_database_url=sqlite)


def test_serve_refuses_a_replica_of_sqlite_in_one_line(tmp_path: Path) -> None:
    env = {
        "TASKMETER_DATABASE_URL": f"sqlite:///{tmp_path / 'taskmeter.db'}",
        "TASKMETER_READ_DATABASE_URL": "postgresql://127.0.0.1/replica",
    }
    result = CliRunner(env=env).invoke(cli_app, ["serve", "--port", str(free_port())])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: configuration: read_database_url")
    assert "no streaming replicas" in lines[0]


def test_without_a_replica_every_read_is_the_primary(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    with _served(settings) as (client, store):
        assert store.replica is None
        ada = Factory(store).person()
        _ingest(client, ada, "only-store", 100)
        assert _task_ids(client, ada) == {"only-store"}
        with store.read(replica=True) as db:
            assert db.execute(text("SELECT count(*) FROM tasks")).scalar() == 1
        assert "read_replica" not in client.get("/readyz").json()
        assert "taskmeter_read_replica" not in client.get("/metrics").text
