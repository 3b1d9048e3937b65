"""Usage: usage_events (raw, append-only, idempotent on (stream_id, event_id)) and the
projections built from them as they land: streams, tasks and the rollup tiers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from taskmeter.store.tables.base import CLUSTERED, STREAM_FIGURES, Base
from taskmeter.store.types import DecimalText, JSONDoc, UTCDateTime


class UsageEvent(Base):
    """One recorded event, exactly once: its key (stream_id, event_id) is the idempotency key.

    Keyed by that pair alone (migration 0006): a surrogate id cost every event a sequence value
    and a second index entry. On SQLite the table is clustered on the key (WITHOUT ROWID).
    """

    __tablename__ = "usage_events"
    __table_args__ = CLUSTERED

    stream_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    model: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc())
    # The price of an llm.call in nano-credits, fixed when it landed so re-reads never drift;
    # NULL for a call no price was found for (it costs 0 and is counted unpriced).
    cost_nano: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Where the call's price came from: a `price_sources` id (a hash of the source, see
    # pricing/provenance.py); NULL for other events, unpriced calls and calls stored before
    # migration 0010. Last: rows are written positionally (ingest/rows.py).
    price_source_id: Mapped[int | None] = mapped_column(BigInteger)


class Stream(Base):
    """The projection of one stream: every number SEMANTICS.md derives, kept as events land."""

    __tablename__ = "streams"
    __table_args__ = (
        # The list endpoint's two orders over finished streams, read backwards:
        # created_at DESC, stream_id DESC and base_nano DESC, created_at DESC, stream_id DESC.
        # `status` rides along so SQLite sees the index as covering for the page's count
        # (otherwise it counts through another index and reads every row: 200 ms at 90k).
        Index(
            "ix_streams_scope_created",
            "scope",
            "created_at",
            "stream_id",
            "status",
            sqlite_where=text("status IS NOT NULL"),
            postgresql_where=text("status IS NOT NULL"),
        ),
        Index(
            "ix_streams_scope_cost",
            "scope",
            "base_nano",
            "created_at",
            "stream_id",
            sqlite_where=text("status IS NOT NULL"),
            postgresql_where=text("status IS NOT NULL"),
        ),
        Index("ix_streams_scope_task", "scope", "task_id"),
        Index("ix_streams_scope_owner_created", "scope", "owner_user_id", "created_at"),
        # A project's streams: the summary's by_project and a project cap's first period.
        Index(
            "ix_streams_scope_project",
            "scope",
            "project_id",
            "created_at",
            sqlite_where=text("project_id IS NOT NULL"),
            postgresql_where=text("project_id IS NOT NULL"),
        ),
        # The sweeper's question, "which open streams went quiet?", reads only open streams.
        Index(
            "ix_streams_open_idle",
            "last_received_at",
            sqlite_where=text("status IS NULL"),
            postgresql_where=text("status IS NULL"),
        ),
    )

    stream_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    task_id: Mapped[str] = mapped_column(String(256))
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    # Stamped when the stream starts: the reader scope and the credit account.
    scope: Mapped[str | None] = mapped_column(String(24))
    started: Mapped[bool] = mapped_column(Boolean, default=False)
    started_event_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finish_event_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    stated_execution_ms: Mapped[int | None] = mapped_column(BigInteger)
    declared_model: Mapped[str | None] = mapped_column(String(200))
    # Derived: the declared model, else the one with the most calls (kept for filtering).
    model: Mapped[str | None] = mapped_column(String(200))
    model_calls: Mapped[dict[str, int]] = mapped_column(JSONDoc(), default=dict)
    task_title: Mapped[str | None] = mapped_column(Text)
    is_byok: Mapped[bool] = mapped_column(Boolean, default=False)
    neo_cost_rate: Mapped[Decimal | None] = mapped_column(DecimalText())
    step_count: Mapped[int] = mapped_column(Integer, default=0)
    step_latency_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    tool_time_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    tool_breakdown: Mapped[dict[str, Any]] = mapped_column(JSONDoc(), default=dict)
    # [[start_ms, event_id, tool_name, duration_ms], …] in (start, event id) order.
    tool_history: Mapped[list[Any]] = mapped_column(JSONDoc(), default=list)
    agent_triggers: Mapped[int] = mapped_column(Integer, default=0)
    agent_breakdown: Mapped[dict[str, int]] = mapped_column(JSONDoc(), default=dict)
    llm_calls: Mapped[int] = mapped_column(Integer, default=0)
    llm_time_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_calls: Mapped[int] = mapped_column(Integer, default=0)
    # The stream's USD cost in nano-credits ("base amount"); neo_credits derive from it.
    base_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    neo_credits_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    first_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    swept: Mapped[bool] = mapped_column(Boolean, default=False)
    # Stamped from `stream.started`'s `project` (migration 0008); last so that a column added
    # by ALTER TABLE keeps the order COPY writes.
    project_id: Mapped[int | None] = mapped_column(Integer)


STREAM_COLUMNS: tuple[str, ...] = tuple(Stream.__table__.columns.keys())


class StreamRow:
    """A `streams` row as plain attributes, read and written with Core statements.

    Ingestion sets about ten attributes an event; on ORM instances every set is tracked and
    the flush diffs them all, which had cost a fifth of an ingest batch. Same attribute names
    as `Stream`, so the projection and figures code reads either.
    """

    __slots__ = STREAM_COLUMNS

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __init__(self, values: Iterable[Any]) -> None:
        for name, value in zip(STREAM_COLUMNS, values, strict=True):
            setattr(self, name, value)


# What the projection and figures code reads: an ORM instance or a plain row.
AnyStream = Stream | StreamRow


class Task(Base):
    """A task aggregated over its finished streams in one scope."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_scope_created", "scope", "created_at", "task_id"),
        Index("ix_tasks_scope_cost", "scope", "base_nano", "created_at", "task_id"),
        Index("ix_tasks_scope_owner_created", "scope", "owner_user_id", "created_at"),
    )

    scope: Mapped[str] = mapped_column(String(24), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    task_title: Mapped[str | None] = mapped_column(Text)
    is_byok: Mapped[bool] = mapped_column(Boolean, default=False)
    stream_count: Mapped[int] = mapped_column(Integer)
    base_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    # The TaskUsage JSON served for this task (figures.render_task_usage), kept as text so a
    # page is the stored documents put side by side.
    usage: Mapped[str] = mapped_column(Text)
    # The project of the task's earliest stream that names one (migration 0008).
    project_id: Mapped[int | None] = mapped_column(Integer)


class _StreamFigures:
    """The additive figures of a stream rollup, after its key columns (mixin columns follow
    the class's own), in the order of `STREAM_FIGURES`."""

    streams: Mapped[int] = mapped_column(BigInteger, default=0)
    neo_credits_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    base_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    tool_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    steps: Mapped[int] = mapped_column(BigInteger, default=0)
    agent_triggers: Mapped[int] = mapped_column(BigInteger, default=0)
    execution_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class StreamRollup(_StreamFigures, Base):
    """Additive stream figures per scope and 15-minute UTC bucket of `created_at`.

    Fifteen minutes divides every UTC offset in use (…:30, …:45 zones included), so periods
    can be cut in any time zone from these rows. Running streams are kept too (`finished`
    false): credit balances count them at once; the summary reads finished ones only.
    """

    __tablename__ = "stream_rollups"

    scope: Mapped[str] = mapped_column(String(24), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    is_byok: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    finished: Mapped[bool] = mapped_column(Boolean, primary_key=True)


class StreamRollupMonth(_StreamFigures, Base):
    """The same figures per UTC calendar month, without the owner (`bucket`: the month's first
    15-minute bucket). A year of a team is then a few hundred rows, not one per owner, model
    and bucket; the 15-minute rows still serve the months a window cuts.
    """

    __tablename__ = "stream_rollups_monthly"
    __table_args__ = (
        PrimaryKeyConstraint(
            "scope",
            "bucket",
            "model",
            "is_byok",
            "finished",
            postgresql_include=list(STREAM_FIGURES),
        ),
        CLUSTERED,
    )

    scope: Mapped[str] = mapped_column(String(24))
    bucket: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(200))
    is_byok: Mapped[bool] = mapped_column(Boolean)
    finished: Mapped[bool] = mapped_column(Boolean)


class OwnerMonth(Base):
    """Per scope, UTC month and owner: finished streams' credits and tasks created (the
    summary's `by_email` over whole months)."""

    __tablename__ = "owner_months"
    __table_args__ = (
        PrimaryKeyConstraint(
            "scope", "bucket", "owner_user_id", postgresql_include=["neo_credits_nano", "tasks"]
        ),
        CLUSTERED,
    )

    scope: Mapped[str] = mapped_column(String(24))
    bucket: Mapped[int] = mapped_column(BigInteger)
    owner_user_id: Mapped[int] = mapped_column(Integer)
    neo_credits_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)


class ScopeTotal(Base):
    """Each scope's count of finished streams and of tasks, kept as deltas like the rollups:
    the unfiltered lists' `total` without counting a scope's rows on every page."""

    __tablename__ = "scope_totals"

    scope: Mapped[str] = mapped_column(String(24), primary_key=True)
    finished_streams: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskRollup(Base):
    """Task counts per scope and 15-minute UTC bucket of the task's `created_at`."""

    __tablename__ = "task_rollups"

    scope: Mapped[str] = mapped_column(String(24), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    is_byok: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskRollupMonth(Base):
    """Task counts per scope, UTC month, model, status and BYOK (`bucket`: the month's first
    15-minute bucket); owners are in `owner_months`."""

    __tablename__ = "task_rollups_monthly"
    __table_args__ = (
        PrimaryKeyConstraint(
            "scope", "bucket", "model", "status", "is_byok", postgresql_include=["tasks"]
        ),
        CLUSTERED,
    )

    scope: Mapped[str] = mapped_column(String(24))
    bucket: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    is_byok: Mapped[bool] = mapped_column(Boolean)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)


class ScopeHour(Base):
    """A scope's finished-stream credits and tasks per UTC hour (`bucket`: the hour's first
    15-minute bucket, a multiple of 4), without owner or model: the summary's per-period
    series in every zone whose offsets are whole hours."""

    __tablename__ = "scope_hours"
    __table_args__ = (
        PrimaryKeyConstraint("scope", "bucket", postgresql_include=["neo_credits_nano", "tasks"]),
        CLUSTERED,
    )

    scope: Mapped[str] = mapped_column(String(24))
    bucket: Mapped[int] = mapped_column(BigInteger)
    neo_credits_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)


# The tables as Core `Table`s, for statements that skip the ORM (a mapped class's
# `__table__` is typed as a plain FromClause).
STREAMS = cast(Table, Stream.__table__)
TASKS = cast(Table, Task.__table__)
USAGE_EVENTS = cast(Table, UsageEvent.__table__)
