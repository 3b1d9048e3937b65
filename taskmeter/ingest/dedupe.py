"""Lock and dedupe: a batch's streams locked, and the events they hold already found.

    stream ids (sorted) ─ lock_streams ─▶ rows held until commit
    (stream, event id) pairs ─ stored_pairs ─▶ which are stored already

Holding the rows' locks while looking for stored events makes the check exact: a concurrent
batch touching the same stream waits, then sees what this one committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from taskmeter.store.tables import (
    STREAM_COLUMNS,
    STREAMS,
)

__all__ = ["STREAM_VALUES_SQL", "lock_streams", "stored_pairs"]

# A stream row's columns as the PostgreSQL probes below select them (aliased `s`).
STREAM_VALUES_SQL = ", ".join(f"s.{name}" for name in STREAM_COLUMNS)

# Statements are module constants: a `text()` built per call had its cache key computed
# afresh from its whole string every batch.
_PG_STORED_PAIRS = text(
    "SELECT e.stream_id, e.event_id FROM unnest(CAST(:sids AS uuid[]), "
    "CAST(:eids AS text[])) AS k(stream_id, event_id) CROSS JOIN LATERAL ("
    "SELECT u.stream_id, u.event_id FROM usage_events u WHERE "
    "u.stream_id = k.stream_id AND u.event_id = k.event_id LIMIT 1) AS e"
)


def stored_pairs(db: Session, pairs: list[tuple[uuid.UUID, str]]) -> dict[uuid.UUID, set[str]]:
    """Which of these (stream_id, event_id) pairs are stored already, by stream: one index
    probe a pair.

    Matching `stream_id IN (…) AND event_id IN (…)` instead probes the unique index once per
    combination of the two lists (50 streams × 700 events = 35,000 probes for one OTLP
    export), which was the busiest statement of an ingest batch on PostgreSQL. The LIMIT
    keeps PostgreSQL on the index whatever its statistics say: a plain join, planned while
    the table had never been analyzed, hashed the whole table for every batch.
    """
    found: Iterable[tuple[uuid.UUID, str]]
    if db.get_bind().dialect.name == "postgresql":
        found = db.execute(
            _PG_STORED_PAIRS, {"sids": [s for s, _ in pairs], "eids": [e for _, e in pairs]}
        )
    else:
        # SQLite scans the whole table for `(a, b) IN (VALUES …)`; joined from a VALUES list
        # with CROSS JOIN (SQLite keeps that order), it searches the unique index once a pair.
        # Stream ids are stored as 32 hex digits (SQLAlchemy's Uuid without a native type).
        values = ", ".join(["(?, ?)"] * len(pairs))
        rows = db.connection().exec_driver_sql(
            f"WITH k(stream_id, event_id) AS (VALUES {values}) "  # noqa: S608 - placeholders only
            "SELECT e.stream_id, e.event_id FROM k CROSS JOIN usage_events e "
            "WHERE e.stream_id = k.stream_id AND e.event_id = k.event_id",
            tuple(value for sid, eid in pairs for value in (sid.hex, eid)),
        )
        found = ((uuid.UUID(hex=sid), eid) for sid, eid in rows)
    stored: dict[uuid.UUID, set[str]] = {}
    for sid, eid in found:
        stored.setdefault(sid, set()).add(eid)
    return stored


# One primary-key probe a stream, locked in the order given (sorted: no two batches wait on
# each other in a cycle). `stream_id IN (…)` was planned once as a sequential scan while the
# table was small, and psycopg's prepared statement kept that plan as the table grew.
_PG_LOCK_STREAMS = text(
    f"SELECT {STREAM_VALUES_SQL} "  # noqa: S608 - column names
    "FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS k(stream_id, n) CROSS JOIN LATERAL "
    "(SELECT * FROM streams WHERE stream_id = k.stream_id LIMIT 1 FOR UPDATE) AS s ORDER BY k.n"
).columns(*STREAMS.c)


def lock_streams(db: Session, ids: list[uuid.UUID]) -> Any:
    """The rows of these streams (sorted ids), locked until the transaction ends."""
    if db.get_bind().dialect.name == "postgresql":
        return db.execute(_PG_LOCK_STREAMS, {"ids": ids})
    # SQLite's write lock is the whole database's, taken when the transaction began.
    return db.execute(select(STREAMS).where(STREAMS.c.stream_id.in_(ids)))
