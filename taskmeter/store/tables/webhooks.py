"""Webhooks: the operator's endpoints, the durable outbox of events and their deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from taskmeter.store.tables.base import Base, BigId
from taskmeter.store.types import JSONDoc, UTCDateTime


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
