"""The schema, one definition for SQLite and PostgreSQL.

Identity: users, teams, memberships (a user in at most one team), api_keys, credit_grants.
Usage: usage_events (raw, append-only, idempotent on (stream_id, event_id)), and the
projections built from them as they land: streams (one row per stream) and tasks (one row per
task and scope). A *scope* is the key a reader is entitled to, and the credit account that pays:
``t<team id>`` for a stream stamped with a team, ``u<user id>`` for a solo user's stream. A
stream gets its scope when it starts; readers see it once it has a status (finished).
"""

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
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from taskmeter.store.types import DecimalText, JSONDoc, UTCDateTime

__all__ = [
    "API_KEYS",
    "CAPS",
    "CAP_SPEND",
    "CREDIT_GRANTS",
    "MEMBERSHIPS",
    "PRICE_SOURCES",
    "PROJECTS",
    "REPRICE_RUNS",
    "RESERVATIONS",
    "STREAMS",
    "STREAM_COLUMNS",
    "STREAM_FIGURES",
    "TASKS",
    "TEAMS",
    "USAGE_EVENTS",
    "USERS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_ENDPOINTS",
    "WEBHOOK_EVENTS",
    "AnyStream",
    "ApiKey",
    "Base",
    "Cap",
    "CapSpend",
    "CreditGrant",
    "Membership",
    "OwnerMonth",
    "PriceSourceRecord",
    "Project",
    "RepriceRun",
    "Reservation",
    "ScopeHour",
    "ScopeTotal",
    "Stream",
    "StreamRollup",
    "StreamRollupMonth",
    "StreamRow",
    "Task",
    "TaskRollup",
    "TaskRollupMonth",
    "Team",
    "UsageEvent",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]

# The coarse rollup tiers are read as ranges of one scope's rows: their primary key carries
# the figures (an index-only scan on PostgreSQL, a WITHOUT ROWID table clustered on the key on
# SQLite), so a range reads a few consecutive pages instead of one heap page per row, scattered
# by the order writers happened to insert them (EXPLAIN ANALYZE in bench/RESULTS.md).
CLUSTERED = {"sqlite_with_rowid": False}

# A stream rollup's additive figures, in the order the rollup code reads and writes them.
STREAM_FIGURES = (
    "streams",
    "neo_credits_nano",
    "base_nano",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "steps",
    "agent_triggers",
    "execution_ms",
)

# SQLite only aliases the rowid for a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-cased: emails are case-insensitive and unique.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    neo_cost_rate: Mapped[Decimal | None] = mapped_column(DecimalText())
    credits_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    credits_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Membership(Base):
    __tablename__ = "memberships"

    # The primary key on user_id is what makes "at most one team per user" a fact of the store.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # "user" | "service"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CreditGrant(Base):
    __tablename__ = "credit_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), index=True)
    amount_nano: Mapped[int] = mapped_column(BigInteger)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


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


class PriceSourceRecord(Base):
    """One price a call was charged at: a stated cost, a prices-file entry (`ref`: the file's
    sha256) or a genai-prices entry (`ref`: its version), with the per-million rates."""

    __tablename__ = "price_sources"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # "stated" | "file" | "genai-prices"
    ref: Mapped[str | None] = mapped_column(String(80))
    model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(200))
    rates: Mapped[dict[str, str] | None] = mapped_column(JSONDoc())
    effective_from: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RepriceRun(Base):
    """The re-pricing log: one row per `taskmeter reprice` run, its cursor committed with
    every transaction of streams it re-priced (so an interrupted run resumes exactly)."""

    __tablename__ = "reprice_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # "running" | "done" | "failed"
    state: Mapped[str] = mapped_column(String(16))
    # The filters and price rules (prices file sha256, genai-prices version): a run resumes
    # only under the same ones.
    rule: Mapped[dict[str, Any]] = mapped_column(JSONDoc())
    rule_key: Mapped[str] = mapped_column(String(64), index=True)
    # What the run set out to change, as planned before anything changed: the counts below
    # and the credit differences by model, user and month.
    plan: Mapped[dict[str, Any]] = mapped_column(JSONDoc())
    # The last stream re-priced (hex id); progress, committed with each transaction.
    cursor: Mapped[str | None] = mapped_column(String(32))
    transactions: Mapped[int] = mapped_column(Integer, default=0)
    streams_done: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_done: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    streams_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    newly_priced: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sums over the calls in range (cost_nano), and the changed streams' charged credits.
    base_before_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    base_after_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_before_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_after_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)


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


class Project(Base):
    """A project of a team (`scope` t<id>) or of a solo user (u<id>); streams name it."""

    __tablename__ = "projects"
    __table_args__ = (Index("uq_projects_scope_name", "scope", "name", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(200))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Cap(Base):
    """A spending limit on a user, a team, a team member or a project, over a period.

    `subject` is what the limit counts, the key ingestion matches streams by: ``u<user>``
    (every stream the user owns), ``t<team>`` (every stream stamped with the team),
    ``m<team>:<user>`` (the user's streams inside the team) or ``p<project>``.
    """

    __tablename__ = "caps"
    __table_args__ = (Index("uq_caps_subject_period", "subject", "period", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # user | team | member | project
    subject: Mapped[str] = mapped_column(String(48))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    period: Mapped[str] = mapped_column(String(8))  # day | week | month | total
    tz: Mapped[str] = mapped_column(String(64))
    limit_nano: Mapped[int] = mapped_column(BigInteger)
    # Soft thresholds, whole percents of the limit, ascending.
    thresholds: Mapped[list[int]] = mapped_column(JSONDoc())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CapSpend(Base):
    """Credits charged against a cap in one of its periods (`period_start`, UTC), kept as
    deltas by ingestion like the rollups: authorize reads one row a cap."""

    __tablename__ = "cap_spend"

    cap_id: Mapped[int] = mapped_column(ForeignKey("caps.id", ondelete="CASCADE"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    used_nano: Mapped[int] = mapped_column(BigInteger, default=0)


class Reservation(Base):
    """Credits held for a stream that has been authorized: until the stream finishes (its
    real cost replaces the hold), the reservation is released, or it expires."""

    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_user_open", "user_id", "expires_at"),
        Index("ix_reservations_scope_open", "scope", "expires_at"),
        Index("ix_reservations_stream", "stream_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    scope: Mapped[str] = mapped_column(String(24))
    task_id: Mapped[str | None] = mapped_column(String(256))
    stream_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    estimate_nano: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# The tables as Core `Table`s, for statements that skip the ORM (a mapped class's
# `__table__` is typed as a plain FromClause).
API_KEYS = cast(Table, ApiKey.__table__)
MEMBERSHIPS = cast(Table, Membership.__table__)
CREDIT_GRANTS = cast(Table, CreditGrant.__table__)
STREAMS = cast(Table, Stream.__table__)
TASKS = cast(Table, Task.__table__)
TEAMS = cast(Table, Team.__table__)
USERS = cast(Table, User.__table__)
USAGE_EVENTS = cast(Table, UsageEvent.__table__)
PROJECTS = cast(Table, Project.__table__)
CAPS = cast(Table, Cap.__table__)
CAP_SPEND = cast(Table, CapSpend.__table__)
RESERVATIONS = cast(Table, Reservation.__table__)
PRICE_SOURCES = cast(Table, PriceSourceRecord.__table__)
REPRICE_RUNS = cast(Table, RepriceRun.__table__)


class WebhookEndpoint(Base):
    """A receiver the operator registered (`taskmeter webhooks add`): its URL, the event types
    it is sent, and its signing secret (`whsec_…`, kept to sign; shown once, at `add`).
    Removing one stamps `removed_at`: its delivery history stays."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(200))
    events: Mapped[list[str]] = mapped_column(JSONDoc())
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookEvent(Base):
    """The outbox: one row per event, written in the transaction that caused it, at most once
    per `dedupe_key`. `body` is serialized once, so every attempt sends (and signs) the same
    bytes under the same `message_id` (the `webhook-id` header)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event to one endpoint: `pending` (due at `next_attempt_at`, or leased by a worker
    until `lease_until`), then `delivered` or `failed` after the last attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("uq_webhook_deliveries_event_endpoint", "event_id", "endpoint_id", unique=True),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A worker's claim: the row is its own until then (a worker killed mid-send loses it).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_token: Mapped[str | None] = mapped_column(String(32))
    last_status: Mapped[int | None] = mapped_column(Integer)  # the last answer's HTTP status
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


WEBHOOK_ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
WEBHOOK_EVENTS = cast(Table, WebhookEvent.__table__)
WEBHOOK_DELIVERIES = cast(Table, WebhookDelivery.__table__)
