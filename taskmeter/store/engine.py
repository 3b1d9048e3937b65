"""Engines and sessions for both stores.

SQLite allows one writer at a time. A write transaction that starts as a reader and later
upgrades fails with "database is locked" instead of waiting, so on SQLite writes go through
their own engine whose transactions begin with ``BEGIN IMMEDIATE`` (they queue on the busy
timeout), while reads use plain deferred transactions that never block behind a writer in
WAL mode. On PostgreSQL reads autocommit (each statement its own snapshot) unless a session
asks for one snapshot (`one_snapshot`); writes prepare nothing (see below).

With a read replica configured (PostgreSQL only), a read goes to it only when it asks to:

    store.write()              ─▶ primary
    store.read()               ─▶ primary   exact: authentication, credit checks, authorize
    store.read(replica=True)   ─▶ replica   may lag: the usage read API (and so the dashboard);
                                 (primary while the replica is down or past the maximum lag,
                                  see `store/replica.py`)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from psycopg import postgres
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from taskmeter import jsonio
from taskmeter.config import Settings
from taskmeter.store.replica import ReadReplica

T = TypeVar("T")

__all__ = ["Store", "one_snapshot"]

# JSON columns (task rows, event payloads) through orjson, on both stores.
JSON_CODEC: dict[str, Any] = {"json_serializer": jsonio.dumps, "json_deserializer": jsonio.loads}


def _sqlite_engine(url: str, *, immediate: bool, busy_timeout_ms: int) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False},
        **JSON_CODEC,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged event survives power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def one_snapshot(db: Session) -> None:
    """Make read session `db` one repeatable-read transaction, so that all its statements see
    the same committed data (call it before the first). SQLite's read transactions are
    snapshots already."""
    if db.get_bind().dialect.name == "postgresql":
        db.connection(execution_options={"isolation_level": "REPEATABLE READ"})


class JsonbCopyDumper(Dumper):
    """A jsonb value in a binary COPY: jsonb's version byte, then orjson's bytes. Registered
    by type oid only (for `Copy.set_types`): psycopg's own jsonb dumper took two more Python
    calls a value, and a batch of events COPYs one a row."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer:
        return b"\x01" + jsonio.dump_bytes(obj)


class Store:
    """The database behind the service: one URL, a read path and a write path, and
    optionally a streaming replica for the reads that may lag (`read(replica=True)`)."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_busy_timeout_ms: int = 30_000,
        read_url: str | None = None,
        read_max_lag_s: float | None = None,
    ) -> None:
        self.url = url
        self.replica: ReadReplica | None = None
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            busy = sqlite_busy_timeout_ms
            self.read_engine = _sqlite_engine(url, immediate=False, busy_timeout_ms=busy)
            self.write_engine = _sqlite_engine(url, immediate=True, busy_timeout_ms=busy)
            # This process's writers take turns here before BEGIN IMMEDIATE: a lock wakes the
            # next waiter as soon as it is free, where SQLite's busy handler has each waiter
            # sleep and retry, so one could lose every retry for seconds (ingest p99 1.6 s
            # with four concurrent batches, p50 90 ms).
            self._write_turn: threading.Lock | None = threading.Lock()
            self._busy_s = busy / 1000
        else:
            self.dialect = "postgresql"
            self._write_turn = None
            self._busy_s = 0.0
            pool: dict[str, Any] = {
                "pool_size": 10,
                "max_overflow": 10,
                "pool_pre_ping": True,
                "pool_timeout": 5,
            }
            # Reads run outside transactions: under READ COMMITTED each statement took its own
            # snapshot anyway, and a session spares the BEGIN and ROLLBACK round trips. A read
            # that needs one snapshot for several statements asks for it (`one_snapshot`).
            self.read_engine = create_engine(
                url, **pool, isolation_level="AUTOCOMMIT", **JSON_CODEC
            )
            # Writes are planned afresh every time: psycopg prepares a statement on its fifth
            # run, and PostgreSQL then keeps one generic plan for it, made while the tables
            # were as they were then. On a fresh store that was a plan for tiny, unanalyzed
            # tables, kept while ingestion grew them (an ingest batch's probe of its tasks
            # read the scope's every task). So that planning stays one plan a statement, the
            # writes of many rows are single statements (`store/bulk.py`), not executemany.
            self.write_engine = create_engine(
                url, **pool, connect_args={"prepare_threshold": None}, **JSON_CODEC
            )

            @event.listens_for(self.write_engine, "connect")
            def _jsonb_copy_through_orjson(dbapi_connection: Any, _record: Any) -> None:
                # SQLAlchemy gives psycopg JSON_CODEC's serializer for the statements it runs;
                # jsonb values in a binary COPY (`store/bulk.py`) go through this dumper.
                # Once a connection: registered on a cursor, psycopg copies adapter maps.
                dbapi_connection.adapters.register_dumper(None, JsonbCopyDumper)

        if read_url is not None:
            if self.dialect != "postgresql" or not read_url.startswith("postgresql"):
                raise ValueError("a read replica needs PostgreSQL for both the store and it")
            self.replica = ReadReplica(read_url, max_lag_s=read_max_lag_s, **JSON_CODEC)

        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)
        self._writer = sessionmaker(self.write_engine, expire_on_commit=False)
        self._small_writer: sessionmaker[Session] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store an operator configured (URLs, replica lag bound, SQLite lock wait)."""
        return cls(
            settings.sqlalchemy_url,
            sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            read_url=settings.sqlalchemy_read_url,
            read_max_lag_s=settings.read_max_lag_s,
        )

    @contextmanager
    def read(self, *, replica: bool = False) -> Iterator[Session]:
        """A session for queries; rolled back at the end, it never writes.

        On the primary unless `replica`: a read that may see data some seconds old (the
        replica's lag) says so, and is then served by the read replica when one is
        configured, reachable and within the maximum lag.
        """
        if replica and self.replica is not None and self.replica.choose():
            try:
                # Connect first (the pool pings a kept connection): a replica that went down
                # since the last probe sends this read to the primary instead of failing it.
                connection = self.replica.engine.connect()
            except DBAPIError as exc:
                self.replica.failed(exc)
            else:
                with connection, Session(bind=connection, expire_on_commit=False) as session:
                    try:
                        yield session
                    except DBAPIError as exc:
                        if exc.connection_invalidated:  # this read fails, the next does not
                            self.replica.failed(exc)
                        raise
                return
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any error."""
        with self._turn(), self._writer() as session, session.begin():
            yield session

    def run_small_write(self, work: Callable[[Session], T]) -> T:
        """`work` in a `small_write` transaction. Its connections are not pinged at checkout (a
        round trip of authorize's few): one the server dropped (a restart) fails its first
        statement, the pool is emptied, and the transaction runs once more on a fresh one. A
        connection lost at COMMIT may have committed: the rerun then holds a second
        reservation, which only refuses earlier until it expires; never a lost hold."""
        for attempt in (1, 2):
            try:
                with self.small_write() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def small_write(self) -> Iterator[Session]:
        """A write transaction of a few keyed statements (authorize, release), prepared after
        a few runs like reads are: planning them afresh each time was a fifth of authorize's
        time. (Ingestion's bulk statements stay on `write`, planned every time.) Not pinged:
        use `run_small_write`, which reruns on a dropped connection.

        On PostgreSQL these commit with `synchronous_commit = off`: visible to every other
        transaction at once (so concurrent authorizations still count each other's holds), but
        not waited for on disk. What a crash of PostgreSQL itself can lose is the last
        moments' holds and releases, never usage (docs/decisions.md). In UTC, as the rows
        `store.bulk.fetch_compiled` reads on these connections should come."""
        if self.dialect != "postgresql":
            with self.write() as session:
                yield session
            return
        if self._small_writer is None:
            # Committed without waiting for the WAL flush: see `small_write`.
            engine = create_engine(
                self.url, pool_size=4, max_overflow=8, pool_pre_ping=False, pool_timeout=5,
                connect_args={"options": "-c synchronous_commit=off -c timezone=UTC"}, **JSON_CODEC,
            )  # fmt: skip
            self._small_writer = sessionmaker(engine, expire_on_commit=False)
        with self._small_writer() as session, session.begin():
            yield session

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """On SQLite, wait for this process's other writers (as long as SQLite would)."""
        if self._write_turn is None:
            yield
            return
        if not self._write_turn.acquire(timeout=self._busy_s):
            # The same fault SQLite reports after its busy timeout (a 503 to clients).
            locked = sqlite3.OperationalError("database is locked")
            raise OperationalError("BEGIN IMMEDIATE", None, locked)
        try:
            yield
        finally:
            self._write_turn.release()

    def ping(self) -> None:
        with self.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        if self._small_writer is not None:
            engine = self._small_writer.kw["bind"]
            engine.dispose()
        if self.replica is not None:
            self.replica.dispose()
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()
