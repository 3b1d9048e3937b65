"""Store faults, injected for real.

PostgreSQL: a throwaway cluster (initdb + pg_ctl) is crashed (`pg_ctl stop -m immediate`) under
sustained ingestion and started again. While it is down every request fails fast with a 503
ErrorResponse and Retry-After, /readyz says so; the service recovers by itself; every event
acknowledged before, during or after the outage is counted exactly once; an SDK recorder writing
through the outage delivers everything.

SQLite: a database locked by another writer, and a read-only database, give clear 503s (and
reads keep working), and the file is intact afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from taskmeter.client import UsageClient
from taskmeter.config import Settings
from taskmeter.recorder import Recorder
from taskmeter.store import Store
from taskmeter.store.tables import UsageEvent
from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.processes import free_port, serve, stop


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    assert found, "PostgreSQL's server binaries (initdb, pg_ctl) are needed for this test"
    return Path(found).parent


class Cluster:
    """A PostgreSQL cluster of our own, so the test may crash it without harming others."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="taskmeter-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.remove()


@dataclass
class Sender:
    """Posts numbered batches one after another, retrying each until it is acknowledged."""

    base: str
    key: str
    stream: StreamEvents
    per_batch: int = 50
    acknowledged: set[str] = field(default_factory=set)
    sent: list[list[dict[str, Any]]] = field(default_factory=list)
    unavailable: list[tuple[float, str | None, dict[str, Any]]] = field(default_factory=list)
    other: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"X-Api-Key": self.key}, timeout=30) as c:
            number = 0
            while not self.stop.is_set():
                batch = [
                    self.stream.step(1 + number, latency_ms=5, id=f"b{number}-{n}")
                    for n in range(self.per_batch)
                ]
                self.sent.append(batch)
                number += 1
                while not self.stop.is_set():
                    began = time.monotonic()
                    answer = c.post("/api/v1/usage/events", json={"events": batch})
                    if answer.status_code == 200:
                        self.acknowledged.update(e["id"] for e in batch)
                        break
                    if answer.status_code == 503:
                        self.unavailable.append(
                            (time.monotonic() - began, answer.headers.get("retry-after"),
                             answer.json())
                        )  # fmt: skip
                    else:
                        self.other.append(answer.status_code)
                    time.sleep(0.1)


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_postgresql_outage_fails_fast_and_recovers(cluster: Cluster, tmp_path: Path) -> None:
    process, base = serve(cluster.url, tmp_path)
    store = Store(Settings(database_url=cluster.url).sqlalchemy_url)
    threads: list[threading.Thread] = []
    recording = threading.Event()
    stopping: list[threading.Event] = [recording]
    try:
        factory = Factory(store)
        ada = factory.person("ada@example.com")
        stream = StreamEvents("outage")
        with httpx.Client(base_url=base, headers=ada.headers) as c:
            assert c.post("/api/v1/usage/events", json={"events": [stream.started(0)]}).is_success
        recorder = Recorder(base, api_key=ada.key, flush_interval=0.05, max_backoff=0.5)
        recorded = 0

        def record() -> None:
            nonlocal recorded
            with recorder.stream(task_id="recorded-through-outage") as s:
                while not recording.is_set():
                    s.step(3)
                    recorded += 1
                    time.sleep(0.01)

        sender = Sender(base, ada.key, stream)
        stopping.append(sender.stop)
        threads += [threading.Thread(target=sender.run), threading.Thread(target=record)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(sender.acknowledged) >= 500, "acknowledgements before")
        before = len(sender.acknowledged)

        cluster.crash()
        wait_for(lambda: len(sender.unavailable) >= 3, "503s while the store is down")
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["message"].endswith("the store is unreachable")
        read = httpx.get(f"{base}/api/v1/usage/tasks", headers=ada.headers, timeout=10)
        assert read.status_code == 503 and read.headers["retry-after"]
        time.sleep(2)
        during = len(sender.unavailable)

        cluster.start()
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, "recovery")
        recovered_at = len(sender.acknowledged)
        wait_for(lambda: len(sender.acknowledged) >= recovered_at + 500, "acks after")
        sender.stop.set()
        recording.set()
        for thread in threads:
            thread.join(timeout=60)
        assert recorder.flush(timeout=60), "the recorder could not deliver after the outage"
        recorder.close()

        assert not sender.other, f"unexpected statuses: {sender.other}"
        assert all(elapsed < 5 for elapsed, _, _ in sender.unavailable), "503s must be fast"
        assert all(retry == "2" for _, retry, _ in sender.unavailable)
        assert all(
            body["message"].endswith(": the store is unavailable; retry shortly")
            for _, _, body in sender.unavailable
        )
        # Whatever was in flight when the store died is re-sent now: duplicates, never doubles.
        with httpx.Client(base_url=base, headers=ada.headers, timeout=30) as c:
            for batch in sender.sent:
                answer = c.post("/api/v1/usage/events", json={"events": batch})
                assert answer.status_code == 200
            finish = c.post("/api/v1/usage/events", json={"events": [stream.finished(10**6)]})
            assert finish.status_code == 200
        with store.read() as db:
            stored = set(
                db.scalars(select(UsageEvent.event_id).where(UsageEvent.task_id == "outage"))
            )
            count = db.scalar(
                select(func.count()).select_from(UsageEvent).where(UsageEvent.task_id == "outage")
            )
        assert sender.acknowledged <= stored, "an acknowledged event was lost"
        sent = sum(len(b) for b in sender.sent)
        assert count == sent + 2  # and none stored twice
        with UsageClient(base, api_key=ada.key) as usage:
            assert usage.task("outage").step_count == sent
            assert usage.task("recorded-through-outage").step_count == recorded
        assert recorder.dropped == 0
        print(
            f"\npostgresql outage: {sent} events sent in {len(sender.sent)} batches, "
            f"{before} acknowledged before the crash, {during} fast 503s while down, "
            f"{len(sender.acknowledged)} acknowledged in all, {len(stored)} found once each; "
            f"the recorder delivered all {recorded} steps"
        )
    finally:
        for event in stopping:
            event.set()
        for thread in threads:
            thread.join(timeout=60)
        stop(process)
        store.dispose()


@pytest.fixture
def sqlite_file(tmp_path: Path, sqlite_template: Path) -> Path:
    target = tmp_path / "taskmeter.db"
    shutil.copy(sqlite_template, target)
    return target


@pytest.fixture
def ada(sqlite_file: Path) -> Person:
    """A user of the SQLite file, made before any `serve` opens it."""
    store = Store(Settings(database_url=f"sqlite:///{sqlite_file}").sqlalchemy_url)
    try:
        return Factory(store).person("ada@example.com")
    finally:
        store.dispose()


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_sqlite_locked_by_another_writer(sqlite_file: Path, ada: Person, tmp_path: Path) -> None:
    url = f"sqlite:///{sqlite_file}"
    stream = StreamEvents("locked")
    process, base = serve(url, tmp_path, {"TASKMETER_SQLITE_BUSY_TIMEOUT_MS": "1000"})
    try:
        with httpx.Client(base_url=base, headers=ada.headers, timeout=30) as c:
            first = [stream.started(0), stream.step(1)]
            assert c.post("/api/v1/usage/events", json={"events": first}).status_code == 200
            holder = sqlite3.connect(sqlite_file, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                began = time.monotonic()
                answer = c.post("/api/v1/usage/events", json={"events": [stream.step(2)]})
                elapsed = time.monotonic() - began
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "2"
                message = answer.json()["message"]
                assert message.endswith(": the database is locked by another writer; retry shortly")
                assert elapsed < 5
            finally:
                holder.rollback()
                holder.close()
            retried = c.post("/api/v1/usage/events", json={"events": [stream.step(2)]})
            assert retried.status_code == 200 and retried.json()["accepted"] == 1
            finish = [stream.finished(3)]  # a task is shown once a stream of it has finished
            assert c.post("/api/v1/usage/events", json={"events": finish}).status_code == 200
            task = c.get("/api/v1/usage/tasks/locked")
            assert task.json().get("step_count") == 2, task.text
    finally:
        stop(process)
    assert _integrity(sqlite_file) == "ok"


def test_sqlite_read_only_database(sqlite_file: Path, ada: Person, tmp_path: Path) -> None:
    url = f"sqlite:///{sqlite_file}"
    stream = StreamEvents("read-only")
    process, base = serve(url, tmp_path)
    with httpx.Client(base_url=base, headers=ada.headers) as c:
        events = [stream.started(0), stream.step(1), stream.finished(2)]
        assert c.post("/api/v1/usage/events", json={"events": events}).status_code == 200
    stop(process)
    # As the operator would see a read-only volume (root ignores file modes, so open it so).
    read_only = f"sqlite:///file:{sqlite_file}?mode=ro&uri=true"
    process, base = serve(read_only, tmp_path)
    try:
        with httpx.Client(base_url=base, headers=ada.headers) as c:
            answer = c.post("/api/v1/usage/events", json={"events": [stream.step(2)]})
            assert answer.status_code == 503, answer.text
            assert answer.json()["message"].endswith(
                ": the database is read-only; an operator must make it writable"
            )
            assert "sql" not in answer.text.lower()
            task = c.get("/api/v1/usage/tasks/read-only")  # reads keep working
            assert task.status_code == 200 and task.json()["step_count"] == 1
    finally:
        stop(process)
    assert _integrity(sqlite_file) == "ok"
