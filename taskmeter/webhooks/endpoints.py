"""The operator's side: register, list and remove endpoints, and read the delivery log."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from taskmeter.store.tables import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_ENDPOINTS,
    WEBHOOK_EVENTS,
    WebhookEndpoint,
)
from taskmeter.timeutil import utc_now
from taskmeter.webhooks.outbox import EVENT_TYPES
from taskmeter.webhooks.signing import new_secret

__all__ = [
    "STATUSES",
    "WebhookError",
    "add_endpoint",
    "deliveries",
    "endpoint_json",
    "list_endpoints",
    "parse_events",
    "remove_endpoint",
    "validate_url",
]

STATUSES = ("pending", "delivered", "failed")


class WebhookError(ValueError):
    """Bad operator input: the message is the one-line error the CLI prints."""


def validate_url(url: str) -> str:
    """An absolute http(s) URL with a host, at most 2000 characters."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise WebhookError(f"URL {url!r} is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"URL {url!r} must be http:// or https:// with a host")
    if len(url) > 2000:
        raise WebhookError("URL is longer than 2000 characters")
    return url


def parse_events(value: str) -> list[str]:
    """`cap.threshold,cap.reached,…`: known event types, at least one, without repeats."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise WebhookError(f"--events names no event; choose from {', '.join(EVENT_TYPES)}")
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown:
        raise WebhookError(f"unknown event {unknown[0]!r}; choose from {', '.join(EVENT_TYPES)}")
    return sorted(set(names), key=EVENT_TYPES.index)


def add_endpoint(
    db: Session, url: str, events: list[str], description: str | None = None
) -> WebhookEndpoint:
    if description is not None and len(description) > 200:
        raise WebhookError("--description is longer than 200 characters")
    endpoint = WebhookEndpoint(
        url=validate_url(url),
        description=description,
        events=events,
        secret=new_secret(),
        created_at=utc_now(),
    )
    db.add(endpoint)
    db.flush()
    return endpoint


def endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as `list` shows it: never its secret."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "description": endpoint.description,
        "created_at": endpoint.created_at,
    }


def list_endpoints(db: Session) -> list[WebhookEndpoint]:
    return list(
        db.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.removed_at.is_(None))
            .order_by(WebhookEndpoint.id)
        )
    )


def remove_endpoint(db: Session, endpoint_id: int) -> int:
    """Remove an endpoint: its pending deliveries fail ("endpoint removed"), its history stays.
    Returns how many pending deliveries were dropped."""
    endpoint = db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.removed_at is not None:
        raise WebhookError(f"no webhook endpoint {endpoint_id}")
    now = utc_now()
    endpoint.removed_at = now
    dropped = db.execute(
        update(WEBHOOK_DELIVERIES)
        .where(
            WEBHOOK_DELIVERIES.c.endpoint_id == endpoint_id,
            WEBHOOK_DELIVERIES.c.status == "pending",
        )
        .values(
            status="failed",
            last_error="endpoint removed",
            lease_until=None,
            lease_token=None,
            updated_at=now,
        )
    )
    return int(dropped.rowcount or 0)  # type: ignore[attr-defined]


def deliveries(db: Session, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent deliveries first, optionally of one status."""
    d, e, w = WEBHOOK_DELIVERIES.c, WEBHOOK_EVENTS.c, WEBHOOK_ENDPOINTS.c
    query = (
        select(
            d.id, d.endpoint_id, w.url, e.type, e.message_id, d.status, d.attempts,
            d.last_status, d.last_error, d.created_at, d.next_attempt_at, d.delivered_at,
        )
        .join(WEBHOOK_EVENTS, e.id == d.event_id)
        .join(WEBHOOK_ENDPOINTS, w.id == d.endpoint_id)
        .order_by(d.id.desc())
        .limit(limit)
    )  # fmt: skip
    if status is not None:
        query = query.where(d.status == status)
    rows = []
    for row in db.execute(query):
        out = dict(row._mapping)
        out["event"] = out.pop("type")
        out["webhook_id"] = out.pop("message_id")
        if out["status"] != "pending":
            out["next_attempt_at"] = None
        rows.append(out)
    return rows
