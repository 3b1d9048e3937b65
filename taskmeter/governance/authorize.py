"""May this stream run? `authorize` answers, and holds the estimate while it runs.

    request {user, team?, project?, task_id?, stream_id?, estimate_credits?}
      ─ payer.resolve_payer: the user, the team the stream will be stamped with, the project;
        on PostgreSQL the payer scope's advisory lock (SQLite's write lock is global)
      ─ payer.payer_state: open holds, the credit account, the caps and their spend
      ─ credit balance: live grants − charged since reset − open holds ≥ estimate
      ─ every cap: used this period + open holds + estimate ≤ limit
      ─▶ reservation row (allowed; on PostgreSQL written by the state's statement and
         rolled back on a refusal) | PaymentRequired with the precise code

An open reservation holds its estimate less what its stream has been charged so far, until the
stream finishes (its real cost, already in the spend, replaces the hold), the reservation is
released, or it expires. Authorizations of one payer scope are counted one after another under
the lock, so concurrent ones can never allow more than the headroom.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlalchemy.orm import Session

from taskmeter.errors import BadRequest, NotFound, PaymentRequired
from taskmeter.governance.caps import cap_json, current_period
from taskmeter.governance.payer import (
    Hold,
    Payer,
    PayerState,
    held_against,
    open_holds,
    payer_state,
    resolve_payer,
)
from taskmeter.governance.spend import code_for
from taskmeter.identity.principal import Principal
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.bulk import run
from taskmeter.store.tables import RESERVATIONS
from taskmeter.timeutil import as_utc, iso_z, utc_now

__all__ = [
    "AuthorizeRequest",
    "Hold",
    "Payer",
    "authorize",
    "held_against",
    "open_holds",
    "release",
    "release_finished",
]

# Checked first to last; the first that refuses is the one reported.
_KIND_ORDER = {"project": 0, "member": 1, "user": 2, "team": 3}


@dataclass(frozen=True)
class AuthorizeRequest:
    user: str
    team: str | None = None
    project: str | None = None
    task_id: str | None = None
    stream_id: uuid.UUID | None = None
    estimate_nano: int = 0


def authorize(
    db: Session,
    principal: Principal,
    request: AuthorizeRequest,
    *,
    require_credits: bool,
    ttl_s: int,
) -> dict[str, Any]:
    """Allow the stream and hold its estimate, or raise PaymentRequired saying why."""
    if request.estimate_nano < 0:
        raise BadRequest("estimate_credits must be 0 or more")
    payer = resolve_payer(db, principal, request, lock=True)
    now = utc_now()
    reservation: dict[str, Any] = {
        "id": "rsv_" + secrets.token_hex(16),
        "user_id": payer.user_id,
        "team_id": payer.team_id,
        "project_id": payer.project_id,
        "scope": payer.scope,
        "task_id": request.task_id,
        "stream_id": request.stream_id,
        "estimate_nano": request.estimate_nano,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }
    # Written by the state's own statement where it can be: a refusal below rolls it back.
    state, reserved = payer_state(db, payer, now, credits=require_credits, reserve=reservation)
    holds = state.holds
    estimate = request.estimate_nano

    remaining: list[int] = []
    credits: dict[str, Any] | None = None
    if require_credits:
        account = state.account
        assert account is not None
        available = account["issued"] - account["used"] - account["held"]
        credits = {
            "available_neo_credits": credits_from_nano(max(0, available)),
            "issued_neo_credits": credits_from_nano(account["issued"]),
            "used_neo_credits": credits_from_nano(account["used"]),
            "reserved_neo_credits": credits_from_nano(account["held"]),
        }
        if not account["live_grants"] or available <= 0 or estimate > available:
            raise PaymentRequired(
                "the credit account cannot cover this stream"
                if account["live_grants"]
                else "the credit account has no live credits",
                code="insufficient_neo_credits",
                extra={"allowed": False, "credits": credits},
            )
        remaining.append(available - estimate)

    statuses = []
    for cap, start, end, used in caps_with_spend(state, now):
        held = held_against(cap, holds, start)
        if used + held >= cap.limit_nano or used + held + estimate > cap.limit_nano:
            raise PaymentRequired(
                f"the {cap.kind} spending cap ({cap.period}) is reached",
                code=code_for(cap.kind),
                extra={
                    "allowed": False,
                    "cap": cap_json(cap, used_nano=used, reserved_nano=held, resets_at=end),
                },
            )
        statuses.append(cap_json(cap, used_nano=used, reserved_nano=held + estimate, resets_at=end))
        remaining.append(cap.limit_nano - used - held - estimate)

    if not reserved:
        db.execute(_INSERT_RESERVATION, reservation)
    return {
        "allowed": True,
        "reservation_id": reservation["id"],
        "expires_at": iso_z(reservation["expires_at"]),
        "remaining": {
            # The least headroom left once this estimate is held: the first limit to stop it.
            "neo_credits": credits_from_nano(min(remaining)) if remaining else None,
            "credits": credits,
            "caps": statuses,
        },
    }


def caps_with_spend(
    state: PayerState, now: datetime
) -> list[tuple[Any, datetime, datetime | None, int]]:
    """The payer's caps, first to check first, each with its current period and the spend in
    it: each cap's latest period row that has started is the current one if it starts where
    the current period does (a stream dated in the future may have opened a later period; an
    earlier row means nothing is spent yet in this one)."""
    out = []
    for row in sorted(state.caps, key=lambda c: (_KIND_ORDER[c.kind], c.period, c.id)):
        start, end = current_period(row, now)
        latest = None if row.latest_start is None else as_utc(row.latest_start)
        out.append((row, start, end, int(row.latest_used or 0) if latest == start else 0))
    return out


# One statement object: built and keyed afresh each call, it cost as much as it ran.
_INSERT_RESERVATION = RESERVATIONS.insert()


_RELEASE_FINISHED = (
    update(RESERVATIONS)
    .where(
        RESERVATIONS.c.stream_id.in_(bindparam("streams", expanding=True)),
        RESERVATIONS.c.released_at.is_(None),
    )
    .values(released_at=bindparam("now"))
)


_PG_RELEASE_FINISHED = (
    "UPDATE reservations SET released_at = %(now)s"
    " WHERE stream_id = ANY(%(streams)s) AND released_at IS NULL"
)


def release_finished(db: Session, streams: list[uuid.UUID], now: datetime) -> None:
    """End the holds of streams that finished in this ingest transaction. Their holds were
    already over (a finished stream's real cost is in the spend, and `open_holds` skips it);
    released, they also leave the open-reservation indexes authorize reads."""
    if not streams:
        return
    if db.get_bind().dialect.name == "postgresql":
        run(db, _PG_RELEASE_FINISHED, {"streams": streams, "now": now})  # every batch: psycopg's
    else:
        db.execute(_RELEASE_FINISHED, {"streams": streams, "now": now})


def release(db: Session, principal: Principal, reservation_id: str) -> None:
    """End a reservation's hold now (the caller's own, or any for a service key). Idempotent:
    one already released (by a call before, or by ingestion when its stream finished) stays
    released at its first moment; only an unknown reservation, or another user's, is a 404."""
    query = update(RESERVATIONS).where(RESERVATIONS.c.id == reservation_id)
    if not principal.is_service:
        query = query.where(RESERVATIONS.c.user_id == principal.user_id)
    released = func.coalesce(RESERVATIONS.c.released_at, utc_now())
    if db.execute(query.values(released_at=released)).rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no reservation {reservation_id}")
