"""Store: accepted events appended, projected stream rows inserted or saved whole."""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from taskmeter.ingest.schemas import (
    EVENT_MODELS,
    Event,
)
from taskmeter.store import bulk
from taskmeter.store.tables import (
    STREAM_COLUMNS,
    STREAMS,
    USAGE_EVENTS,
    StreamRow,
    UsageEvent,
)

__all__ = [
    "EVENT_COLUMNS",
    "STREAM_DEFAULTS",
    "append_events",
    "clashed_on_stream",
    "event_row",
    "insert_streams",
    "new_stream",
    "write_streams",
]

_STREAM_UPDATE = STREAMS.update().where(STREAMS.c.stream_id == bindparam("key"))

# A stream's figures before its first event (Core inserts skip the ORM's Python-side
# defaults). Its JSON documents are made fresh for each stream in `new_stream`.
STREAM_DEFAULTS: dict[str, Any] = {
    "started": False,
    "model": None,
    "is_byok": False,
    "step_count": 0,
    "step_latency_ms": 0,
    "tool_calls": 0,
    "tool_time_ms": 0,
    "agent_triggers": 0,
    "llm_calls": 0,
    "llm_time_ms": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
    "unpriced_calls": 0,
    "base_nano": 0,
    "neo_credits_nano": 0,
    "swept": False,
}

# Every column, in the table's order: what COPY writes and `event_row` builds.
EVENT_COLUMNS = tuple(c.name for c in USAGE_EVENTS.columns)
# Stored in their own columns, so not again in the payload.
_COLUMN_FIELDS = frozenset({"id", "type", "time", "stream_id", "task_id"})
# Each type's payload fields, looked up once rather than filtered per event.
_PAYLOAD_FIELDS = {
    kind: tuple(name for name in model.model_fields if name not in _COLUMN_FIELDS)
    for kind, model in EVENT_MODELS.items()
}


def event_row(
    event: Event, cost_nano: int | None, now: datetime, price_source_id: int | None = None
) -> tuple[Any, ...]:
    """The event's `usage_events` row, its values in `EVENT_COLUMNS` order."""
    # What `model_dump(mode="json", exclude=…, exclude_none=True)` gives for these flat
    # models (a Decimal as its string), at a fifth of its cost.
    fields = event.__dict__
    payload = {}
    for name in _PAYLOAD_FIELDS[event.type]:
        value = fields[name]
        if value is not None:
            payload[name] = str(value) if isinstance(value, Decimal) else value
    # `fields`, not getattr: pydantic answers a missing attribute by raising, slowly.
    model = fields.get("model")
    return (event.stream_id, event.id, event.task_id, event.type, event.time, model, payload,
            cost_nano, now, price_source_id)  # fmt: skip


assert EVENT_COLUMNS == (
    "stream_id", "event_id", "task_id", "type", "time", "model", "payload", "cost_nano",
    "received_at", "price_source_id",
)  # fmt: skip
_SQLITE_EVENT_INSERT = (
    f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608 - column names
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
    "ON CONFLICT (stream_id, event_id) DO NOTHING"
)


@functools.cache
def _sqlite_event_processors(dialect: Any) -> tuple[Any, Any, Any]:
    """The SQLite bind processing of `usage_events`' stream id, instants and payload."""
    columns = UsageEvent.__table__.c
    processors = []
    for name in ("stream_id", "time", "payload"):
        process = columns[name].type.dialect_impl(dialect).bind_processor(dialect)
        processors.append(process or (lambda value: value))
    return processors[0], processors[1], processors[2]


def append_events(db: Session, rows: list[tuple[Any, ...]]) -> None:
    """Store accepted events: COPY on PostgreSQL, a prepared executemany on SQLite.

    COPY takes no ON CONFLICT, and needs none: the caller holds every touched stream's row
    lock and has dropped the events already stored for those streams, so no other
    transaction can insert one of these (stream_id, event_id) pairs until this one commits.
    A row-per-statement insert spent a third of an ingest batch's time (bench/RESULTS.md).
    """
    if not rows:
        return
    dialect = db.get_bind().dialect
    if dialect.name != "postgresql":
        # The driver's executemany with the columns' own bind processing applied here:
        # SQLAlchemy's per-row parameter dictionaries had been a third of the insert.
        stream_id, when, payload = _sqlite_event_processors(dialect)
        received = when(rows[0][8])  # one instant for the whole batch
        db.connection().exec_driver_sql(
            _SQLITE_EVENT_INSERT,
            [
                (
                    stream_id(r[0]),
                    r[1],
                    r[2],
                    r[3],
                    when(r[4]),
                    r[5],
                    payload(r[6]),
                    r[7],
                    received,
                    r[9],
                )
                for r in rows
            ],
        )
        return
    # Binary COPY saved a fifth of COPY's time over text (bench/RESULTS.md).
    bulk.copy_rows(db, USAGE_EVENTS, rows)


def new_stream(stream_id: uuid.UUID, task_id: str) -> StreamRow:
    """A stream with no events yet, as ingestion builds it before its first insert."""
    values = {
        **STREAM_DEFAULTS,
        "stream_id": stream_id,
        "task_id": task_id,
        # Fresh containers: the projection updates them in place.
        "model_calls": {},
        "tool_breakdown": {},
        "tool_history": [],
        "agent_breakdown": {},
    }
    return StreamRow(values.get(name) for name in STREAM_COLUMNS)


_STREAM_INSERT = STREAMS.insert()
# A stream row's values in the table's column order.
_stream_tuple = operator.attrgetter(*STREAM_COLUMNS)


def insert_streams(db: Session, rows: Sequence[StreamRow]) -> None:
    """Insert streams this transaction found missing. If another transaction has inserted
    one of them since, the insert waits for that one to end and then fails on the key: the
    caller's whole batch is retried (see `clashed_on_stream`)."""
    if not rows:
        return
    if db.get_bind().dialect.name == "postgresql":
        bulk.copy_rows(db, STREAMS, map(_stream_tuple, rows))
    else:
        db.execute(_STREAM_INSERT, [_stream_values(row) for row in rows])


def _stream_values(row: StreamRow) -> dict[str, Any]:
    return dict(zip(STREAM_COLUMNS, _stream_tuple(row), strict=True))


def clashed_on_stream(exc: IntegrityError) -> bool:
    """Whether an insert failed on a stream's key: another batch created that stream."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    return constraint == STREAMS.primary_key.name or (
        f"UNIQUE constraint failed: {STREAMS.name}." in str(exc.orig)
    )


def write_streams(db: Session, rows: Sequence[StreamRow]) -> None:
    """Save projected stream rows whole: one statement (PostgreSQL) or one prepared UPDATE
    executed for each row (SQLite)."""
    if not rows:
        return
    if db.get_bind().dialect.name == "postgresql":
        bulk.update_rows(db, STREAMS, "stream_id", [_stream_values(row) for row in rows])
        return
    db.execute(_STREAM_UPDATE, [{"key": row.stream_id, **_stream_values(row)} for row in rows])
