"""Cap alerts: a threshold or a limit crossed becomes a webhook event in the outbox, once per
threshold per period (the dedupe key), in the transaction that crossed it."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from taskmeter.governance.spend import CapAlert
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.timeutil import iso_z

__all__ = ["emit_cap_alerts"]


def emit_cap_alerts(db: Session, alerts: Iterable[CapAlert]) -> None:
    try:
        from taskmeter.webhooks import enqueue  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # webhooks not installed in this build
        return
    for alert in alerts:
        period = iso_z(alert.period_start)
        data = {
            "cap_id": alert.cap_id,
            "kind": alert.kind,
            "period_start": period,
            "threshold_percent": alert.threshold,
            "used_credits": credits_from_nano(alert.used_nano),
            "limit_credits": credits_from_nano(alert.limit_nano),
        }
        if alert.threshold is None:
            enqueue(db, "cap.reached", data, dedupe_key=f"cap:{alert.cap_id}:{period}:reached")
        else:
            enqueue(
                db,
                "cap.threshold",
                data,
                dedupe_key=f"cap:{alert.cap_id}:{period}:{alert.threshold}",
            )
