"""May this stream run? `authorize` answers, and holds the estimate while it runs.

    request {user, team?, project?, task_id?, stream_id?, estimate_credits?}
      ─ payers resolved (the user, the team the stream will be stamped with, the project)
      ─ their rows locked (FOR NO KEY UPDATE on PostgreSQL; SQLite's write lock is global)
      ─ credit balance: live grants − charged since reset − open holds ≥ estimate
      ─ every cap: used this period + open holds + estimate ≤ limit
      ─▶ reservation row (allowed) | PaymentRequired with the precise code

An open reservation holds its estimate less what its stream has been charged so far, until the
stream finishes (its real cost, already in the spend, replaces the hold), the reservation is
released, or it expires. Authorizations of one payer are counted one after another under the
row locks, so concurrent ones can never allow more than the headroom.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, text, update
from sqlalchemy.orm import Session

from taskmeter.errors import BadRequest, Forbidden, NotFound, PaymentRequired
from taskmeter.governance.caps import cap_json, current_period, stream_subjects
from taskmeter.governance.spend import code_for
from taskmeter.identity.principal import Principal, scope_key
from taskmeter.identity.service import IdentityError, normalise_email
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.tables import (
    CAP_SPEND,
    CAPS,
    CREDIT_GRANTS,
    MEMBERSHIPS,
    PROJECTS,
    RESERVATIONS,
    STREAMS,
    TEAMS,
    USERS,
)
from taskmeter.timeutil import utc_now
from taskmeter.usage.account import charged_since

__all__ = ["AuthorizeRequest", "Payer", "authorize", "held_against", "open_holds", "release"]

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


@dataclass(frozen=True)
class Payer:
    """Who a stream's spend counts against."""

    user_id: int
    team_id: int | None
    project_id: int | None
    scope: str
    # When the payer's credit account was last reset.
    reset_at: datetime | None = None


@dataclass(frozen=True)
class Hold:
    user_id: int
    team_id: int | None
    project_id: int | None
    scope: str
    created_at: datetime
    nano: int


def resolve_payer(
    db: Session, principal: Principal, request: AuthorizeRequest, *, lock: bool = False
) -> Payer:
    """Who pays for the stream; with `lock`, the payer's rows are locked until the transaction
    ends, which serializes the payer's authorizations. NO KEY UPDATE on PostgreSQL: ingestion's
    foreign-key checks on these rows (KEY SHARE) do not wait for it. SQLite's write transaction
    is exclusive from its BEGIN IMMEDIATE."""
    try:
        email = normalise_email(request.user)
    except IdentityError as exc:
        raise BadRequest(f"user: {exc}") from None
    if not principal.is_service and principal.email != email:
        raise Forbidden("a user's key may only authorize its own streams")
    lock = lock and db.get_bind().dialect.name == "postgresql"
    query = _PAYER
    if lock:
        query = query.with_for_update(key_share=True, of=USERS)
    found = db.execute(query, {"email": email}).one_or_none()
    if found is None:
        raise BadRequest(f"no user with email {email}", code="unknown_user")
    user_id, user_reset, team_id, team_name, team_reset = found
    if request.team is not None and request.team != team_name:
        # Streams are stamped with the owner's team when they start: no other team can pay.
        raise BadRequest(f"{email} is not in team {request.team!r}", code="invalid_request")
    if lock and team_id is not None:
        db.execute(_LOCK_TEAM, {"id": team_id})
    scope = scope_key(team_id=team_id, user_id=user_id)
    project_id = None
    if request.project is not None:
        found_project = db.execute(
            _PROJECT_LOCKED if lock else _PROJECT, {"scope": scope, "name": request.project}
        ).one_or_none()
        if found_project is None:
            raise BadRequest(
                f"no project {request.project!r} in the stream owner's "
                + ("team" if team_id is not None else "own usage"),
                code="unknown_project",
            )
        if found_project.archived_at is not None:
            raise BadRequest(f"project {request.project!r} is archived", code="project_archived")
        project_id = found_project.id
    reset_at = team_reset if team_id is not None else user_reset
    return Payer(user_id, team_id, project_id, scope, reset_at)


_PAYER = (
    select(
        USERS.c.id, USERS.c.credits_reset_at, MEMBERSHIPS.c.team_id, TEAMS.c.name,
        TEAMS.c.credits_reset_at,
    )
    .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
    .outerjoin(TEAMS, TEAMS.c.id == MEMBERSHIPS.c.team_id)
    .where(USERS.c.email == bindparam("email"))
)  # fmt: skip
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
_LOCK_TEAM = text("SELECT id FROM teams WHERE id = :id FOR NO KEY UPDATE")
_PROJECT = select(PROJECTS.c.id, PROJECTS.c.archived_at).where(
    PROJECTS.c.scope == bindparam("scope"), PROJECTS.c.name == bindparam("name")
)
_PROJECT_LOCKED = _PROJECT.with_for_update(key_share=True)


def open_holds(db: Session, payer: Payer, now: datetime) -> list[Hold]:
    """The open reservations that may count against this payer's caps or account."""
    matches = [RESERVATIONS.c.user_id == payer.user_id, RESERVATIONS.c.scope == payer.scope]
    if payer.project_id is not None:
        matches.append(RESERVATIONS.c.project_id == payer.project_id)
    rows = db.execute(
        select(
            RESERVATIONS.c.user_id,
            RESERVATIONS.c.team_id,
            RESERVATIONS.c.project_id,
            RESERVATIONS.c.scope,
            RESERVATIONS.c.created_at,
            RESERVATIONS.c.estimate_nano,
            STREAMS.c.neo_credits_nano,
            STREAMS.c.status,
        )
        .outerjoin(STREAMS, STREAMS.c.stream_id == RESERVATIONS.c.stream_id)
        .where(
            RESERVATIONS.c.released_at.is_(None),
            RESERVATIONS.c.expires_at > now,
            or_(*matches),
        )
    ).all()
    holds = []
    for user_id, team_id, project_id, scope, created_at, estimate, charged, status in rows:
        if status is not None:
            continue  # finished: its real cost is in the spend
        held = max(0, estimate - (charged or 0))
        if held:
            holds.append(Hold(user_id, team_id, project_id, scope, created_at, held))
    return holds


def held_against(cap: Any, holds: list[Hold], since: datetime) -> int:
    def counts(h: Hold) -> bool:
        if h.created_at < since:
            return False
        if cap.kind == "user":
            return bool(h.user_id == cap.user_id)
        if cap.kind == "team":
            return bool(h.team_id == cap.team_id)
        if cap.kind == "member":
            return bool(h.team_id == cap.team_id and h.user_id == cap.user_id)
        return bool(h.project_id == cap.project_id)

    return sum(h.nano for h in holds if counts(h))


def _credit_headroom(db: Session, payer: Payer, holds: list[Hold], now: datetime) -> dict[str, Any]:
    """The payer's credit account as authorize sees it (nano-credits)."""
    owner = (
        CREDIT_GRANTS.c.team_id == payer.team_id
        if payer.team_id is not None
        else CREDIT_GRANTS.c.user_id == payer.user_id
    )
    grants = db.execute(
        select(CREDIT_GRANTS.c.amount_nano).where(
            owner, or_(CREDIT_GRANTS.c.expires_at.is_(None), CREDIT_GRANTS.c.expires_at > now)
        )
    ).all()
    issued = sum(amount for (amount,) in grants)
    used = charged_since(db, payer.scope, payer.reset_at)
    held = sum(h.nano for h in holds if h.scope == payer.scope)
    return {"live_grants": len(grants), "issued": issued, "used": used, "held": held}


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
    if db.get_bind().dialect.name == "postgresql":
        # A reservation is a hold, not usage: waiting for its WAL flush doubled authorize's
        # time (bench/RESULTS.md). Other sessions see it at commit either way; a server crash
        # can forget the last holds (never recorded usage, which ingestion commits durably).
        db.execute(_ASYNC_COMMIT)
    payer = resolve_payer(db, principal, request, lock=True)
    now = utc_now()
    holds = open_holds(db, payer, now)
    estimate = request.estimate_nano

    remaining: list[int] = []
    credits: dict[str, Any] | None = None
    if require_credits:
        account = _credit_headroom(db, payer, holds, now)
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
    for cap, start, end, used in caps_with_spend(db, payer, now):
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

    reservation_id = "rsv_" + secrets.token_hex(16)
    expires_at = now + timedelta(seconds=ttl_s)
    db.execute(
        RESERVATIONS.insert().values(
            id=reservation_id,
            user_id=payer.user_id,
            team_id=payer.team_id,
            project_id=payer.project_id,
            scope=payer.scope,
            task_id=request.task_id,
            stream_id=request.stream_id,
            estimate_nano=estimate,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return {
        "allowed": True,
        "reservation_id": reservation_id,
        "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        "remaining": {
            # The least headroom left once this estimate is held: the first limit to stop it.
            "neo_credits": credits_from_nano(min(remaining)) if remaining else None,
            "credits": credits,
            "caps": statuses,
        },
    }


def caps_with_spend(
    db: Session, payer: Payer, now: datetime
) -> list[tuple[Any, datetime, datetime | None, int]]:
    """The payer's caps, first to check first, each with its current period and the spend in
    it, in one statement: each cap's latest period row that has started is the current one if
    it starts where the current period does (a stream dated in the future may have opened a
    later period; an earlier row means nothing is spent yet in this one)."""
    subjects = stream_subjects(payer.user_id, payer.team_id, payer.project_id)
    rows = db.execute(_CAPS_WITH_SPEND, {"subjects": list(subjects), "now": now}).all()
    out = []
    for row in sorted(rows, key=lambda c: (_KIND_ORDER[c.kind], c.period, c.id)):
        start, end = current_period(row, now)
        latest = None if row.latest_start is None else _utc(row.latest_start)
        out.append((row, start, end, int(row.latest_used or 0) if latest == start else 0))
    return out


def _latest(column: Any) -> Any:
    return (
        select(column)
        .where(CAP_SPEND.c.cap_id == CAPS.c.id, CAP_SPEND.c.period_start <= bindparam("now"))
        .order_by(CAP_SPEND.c.period_start.desc())
        .limit(1)
        .scalar_subquery()
    )


_CAPS_WITH_SPEND = select(
    *CAPS.c,
    _latest(CAP_SPEND.c.period_start).label("latest_start"),
    _latest(CAP_SPEND.c.used_nano).label("latest_used"),
).where(CAPS.c.subject.in_(bindparam("subjects", expanding=True)))


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def release(db: Session, principal: Principal, reservation_id: str) -> None:
    """End a reservation's hold now (the caller's own, or any for a service key)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(_ASYNC_COMMIT)  # a lost release only keeps a hold until it expires
    query = update(RESERVATIONS).where(
        RESERVATIONS.c.id == reservation_id, RESERVATIONS.c.released_at.is_(None)
    )
    if not principal.is_service:
        query = query.where(RESERVATIONS.c.user_id == principal.user_id)
    if db.execute(query.values(released_at=utc_now())).rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no open reservation {reservation_id}")
