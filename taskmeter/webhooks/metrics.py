"""The outbox backlog on `/metrics` (registered in `taskmeter.observability.metrics.COLLECTORS`)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from taskmeter.store.tables import WEBHOOK_DELIVERIES
from taskmeter.timeutil import utc_now

__all__ = ["backlog_lines"]


def backlog_lines(db: Session) -> Iterable[str]:
    """Pending and failed deliveries, and the age of the oldest pending one (0: none)."""
    d = WEBHOOK_DELIVERIES.c
    rows = db.execute(
        select(d.status, func.count(), func.min(d.created_at))
        .where(d.status.in_(("pending", "failed")))
        .group_by(d.status)
    ).all()
    counts = {status: int(count) for status, count, _ in rows}
    oldest = next((first for status, _, first in rows if status == "pending"), None)
    age = max(0.0, (utc_now() - oldest).total_seconds()) if oldest is not None else 0.0
    return [
        "# HELP taskmeter_webhook_deliveries Webhook deliveries in the outbox by status "
        "(pending: not delivered yet, retrying included; failed: given up).",
        "# TYPE taskmeter_webhook_deliveries gauge",
        *(
            f'taskmeter_webhook_deliveries{{status="{status}"}} {counts.get(status, 0)}'
            for status in ("pending", "failed")
        ),
        "# HELP taskmeter_webhook_oldest_pending_seconds Age of the oldest pending webhook "
        "delivery (0 when none is pending).",
        "# TYPE taskmeter_webhook_oldest_pending_seconds gauge",
        f"taskmeter_webhook_oldest_pending_seconds {age:.3f}",
    ]
