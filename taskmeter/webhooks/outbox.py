"""The outbox: `enqueue` writes an event and its deliveries in the caller's transaction.

An event is one `webhook_events` row (unique `dedupe_key`: enqueueing the same key again
writes nothing) and one `webhook_deliveries` row per endpoint subscribed to its type at that
moment, fanned out here, so an endpoint added later is not sent older events. The insert is
`INSERT … ON CONFLICT (dedupe_key) DO NOTHING` on both stores: a repeated key is no error and
leaves the surrounding transaction (an ingest batch) intact.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from taskmeter import jsonio
from taskmeter.store.bulk import fetch_compiled
from taskmeter.store.tables import WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS, WEBHOOK_EVENTS
from taskmeter.timeutil import iso_z, utc_now

__all__ = ["EVENT_TYPES", "TEST_EVENT", "enqueue", "subscribed"]

# What an endpoint may subscribe to (`taskmeter webhooks add --events …`).
EVENT_TYPES = ("cap.threshold", "cap.reached", "credits.low", "credits.expiring")
# Sent by `taskmeter webhooks test ID` to that endpoint alone, whatever it subscribes to.
TEST_EVENT = "webhook.test"


def subscribed(db: Session, event_type: str) -> list[int]:
    """The ids of the endpoints (not removed) that take `event_type`. Asked by every ingest
    batch that charges an account (`credits.low`): on PostgreSQL by psycopg directly."""
    rows = (
        fetch_compiled(db, _LIVE_ENDPOINTS, {})
        if db.get_bind().dialect.name == "postgresql"
        else db.execute(_LIVE_ENDPOINTS).all()
    )
    return [endpoint_id for endpoint_id, events in rows if event_type in (events or ())]


_LIVE_ENDPOINTS = select(WEBHOOK_ENDPOINTS.c.id, WEBHOOK_ENDPOINTS.c.events).where(
    WEBHOOK_ENDPOINTS.c.removed_at.is_(None)
)


def enqueue(
    db: Session,
    event_type: str,
    data: Mapping[str, Any],
    *,
    dedupe_key: str,
    endpoint_ids: Collection[int] | None = None,
) -> int:
    """Put an event in the outbox, in `db`'s transaction: its id, or 0 when `dedupe_key` was
    enqueued before (then nothing is written). `endpoint_ids` sends it to those endpoints
    (not removed) instead of the subscribers of its type."""
    now = utc_now()
    body = jsonio.dumps({"type": event_type, "timestamp": iso_z(now), "data": dict(data)})
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(WEBHOOK_EVENTS)
        .values(
            message_id=f"msg_{uuid.uuid4().hex}",
            type=event_type,
            dedupe_key=dedupe_key,
            body=body,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(WEBHOOK_EVENTS.c.id)
    )
    event_id = db.execute(statement).scalar()
    if event_id is None:
        return 0
    if endpoint_ids is None:
        targets = subscribed(db, event_type)
    else:
        wanted = set(endpoint_ids)
        targets = [
            endpoint_id
            for endpoint_id in db.scalars(
                select(WEBHOOK_ENDPOINTS.c.id).where(WEBHOOK_ENDPOINTS.c.removed_at.is_(None))
            )
            if endpoint_id in wanted
        ]
    if targets:
        db.execute(
            WEBHOOK_DELIVERIES.insert().values(
                [
                    {
                        "event_id": event_id,
                        "endpoint_id": endpoint_id,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for endpoint_id in sorted(targets)
                ]
            )
        )
    return int(event_id)
