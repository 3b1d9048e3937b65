"""Caps: a limit in credits on a user, a team, a team member or a project, over a period.

    set_cap(kind, subject ids, period, zone, limit, thresholds) ─▶ caps row (one per subject
    and period; setting it again changes it) ─ cap_status ─▶ used, reserved, limit, remaining,
    resets at (the current period's `cap_spend` row and the open reservations)

Streams count where SEMANTICS.md counts them: in the period of their `created_at`, running
streams included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskmeter.governance.periods import PERIODS, parse_zone, period_bounds
from taskmeter.identity.service import IdentityError
from taskmeter.pricing.credits import NANO, credits_from_nano
from taskmeter.store.tables import CAP_SPEND, CAPS, Cap
from taskmeter.timeutil import iso_z, utc_now

__all__ = [
    "CAP_KINDS",
    "DEFAULT_THRESHOLDS",
    "CapError",
    "CapTarget",
    "cap_json",
    "parse_limit",
    "parse_thresholds",
    "remove_cap",
    "set_cap",
    "stream_subjects",
    "subject_of",
]

CAP_KINDS = ("user", "team", "member", "project")
DEFAULT_THRESHOLDS = (50, 80, 95)


class CapError(IdentityError):
    """Bad cap input; `code` is the ErrorResponse code the API answers with."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CapTarget:
    """What a cap limits: its kind and the ids that name the subject."""

    kind: str
    user_id: int | None = None
    team_id: int | None = None
    project_id: int | None = None


def subject_of(target: CapTarget) -> str:
    if target.kind == "user":
        return f"u{target.user_id}"
    if target.kind == "team":
        return f"t{target.team_id}"
    if target.kind == "member":
        return f"m{target.team_id}:{target.user_id}"
    if target.kind == "project":
        return f"p{target.project_id}"
    raise CapError(f"unknown cap kind {target.kind!r}")


def stream_subjects(
    owner_user_id: int, team_id: int | None, project_id: int | None
) -> tuple[str, ...]:
    """The cap subjects a stream's spend counts against."""
    subjects = [f"u{owner_user_id}"]
    if team_id is not None:
        subjects += [f"t{team_id}", f"m{team_id}:{owner_user_id}"]
    if project_id is not None:
        subjects.append(f"p{project_id}")
    return tuple(subjects)


def parse_limit(value: str | int | float | Decimal) -> int:
    """A limit of 0 or more credits with at most 9 decimals, as nano-credits."""
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise CapError(f"limit {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise CapError(f"limit {value!r} must be 0 or more credits")
    nano = amount * NANO
    if nano != nano.to_integral_value():
        raise CapError(f"limit {value!r} has more than 9 decimal places")
    if nano >= 2**62:
        raise CapError(f"limit {value!r} is too large")
    return int(nano)


def parse_thresholds(value: Any) -> list[int]:
    """Soft thresholds as whole percents between 1 and 99: a list or "50,80,95"."""
    if value is None:
        return list(DEFAULT_THRESHOLDS)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise CapError("thresholds are a list of percents, e.g. 50,80,95")
    out: set[int] = set()
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            percent = int(str(item).strip()) if isinstance(item, str) else int(item)
        except (ValueError, TypeError):
            raise CapError(f"threshold {item!r} is not a whole percent") from None
        if not 1 <= percent <= 99:
            raise CapError(f"threshold {percent} must be between 1 and 99 percent")
        out.add(percent)
    return sorted(out)


def set_cap(
    db: Session,
    target: CapTarget,
    *,
    period: str,
    tz: str = "UTC",
    limit_nano: int,
    thresholds: list[int] | None = None,
) -> tuple[Cap, bool]:
    """Create or change the cap on `target` for `period`: (cap, created)."""
    if period not in PERIODS:
        raise CapError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    try:
        parse_zone(tz)
    except ValueError as exc:
        raise CapError(str(exc)) from None
    subject = subject_of(target)
    now = utc_now()
    cap = db.scalar(select(Cap).where(Cap.subject == subject, Cap.period == period))
    created = cap is None
    rezoned = cap is not None and cap.tz != tz
    if cap is None:
        cap = Cap(
            kind=target.kind,
            subject=subject,
            user_id=target.user_id,
            team_id=target.team_id,
            project_id=target.project_id,
            period=period,
            created_at=now,
        )
        db.add(cap)
    elif rezoned:
        # Spend is kept per period start: a new zone cuts new periods, counted afresh from
        # the period that holds now.
        db.execute(CAP_SPEND.delete().where(CAP_SPEND.c.cap_id == cap.id))
        cap.created_at = now
    cap.tz = tz
    cap.limit_nano = limit_nano
    cap.thresholds = list(DEFAULT_THRESHOLDS) if thresholds is None else thresholds
    cap.updated_at = now
    db.flush()
    if created or rezoned:
        from taskmeter.governance.spend import backfill_cap

        backfill_cap(db, cap)
    return cap, created


def remove_cap(db: Session, cap_id: int) -> None:
    db.execute(CAP_SPEND.delete().where(CAP_SPEND.c.cap_id == cap_id))
    db.execute(CAPS.delete().where(CAPS.c.id == cap_id))


def used_in_period(db: Session, cap: Cap, period_start: datetime) -> int:
    used = db.scalar(
        select(CAP_SPEND.c.used_nano).where(
            CAP_SPEND.c.cap_id == cap.id, CAP_SPEND.c.period_start == period_start
        )
    )
    return int(used or 0)


def cap_json(
    cap: Any,
    *,
    used_nano: int,
    reserved_nano: int,
    resets_at: datetime | None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A cap as the API, the CLI and the summary show it."""
    remaining = max(0, cap.limit_nano - used_nano - reserved_nano)
    body: dict[str, Any] = {
        "id": cap.id,
        "kind": cap.kind,
        "period": cap.period,
        "tz": cap.tz,
        "limit_credits": credits_from_nano(cap.limit_nano),
        "used_credits": credits_from_nano(used_nano),
        "reserved_credits": credits_from_nano(reserved_nano),
        "remaining_credits": credits_from_nano(remaining),
        "thresholds": list(cap.thresholds),
        "resets_at": None if resets_at is None else iso_z(resets_at),
    }
    body.update(names or {})
    return body


def current_period(cap: Any, at: datetime) -> tuple[datetime, datetime | None]:
    return period_bounds(cap.period, parse_zone(cap.tz), at)
