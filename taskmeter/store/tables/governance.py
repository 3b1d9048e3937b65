"""Governance: projects, caps, each cap's spend per period, and reservations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from taskmeter.store.tables.base import Base
from taskmeter.store.types import JSONDoc, UTCDateTime


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
        # Open ones only (migration 0012): released ones are never read by authorize. With
        # `released_at` a key column a release is never a HOT update on PostgreSQL: the old
        # version dies, and index scans can mark its entry dead.
        Index(
            "ix_reservations_user_open",
            "user_id",
            "expires_at",
            "released_at",
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
        Index(
            "ix_reservations_scope_open",
            "scope",
            "expires_at",
            "released_at",
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
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
PROJECTS = cast(Table, Project.__table__)
CAPS = cast(Table, Cap.__table__)
CAP_SPEND = cast(Table, CapSpend.__table__)
RESERVATIONS = cast(Table, Reservation.__table__)
