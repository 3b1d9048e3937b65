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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from taskmeter.errors import BadRequest, Forbidden, NotFound, PaymentRequired
from taskmeter.governance.caps import cap_json, current_period, stream_subjects, used_in_period
from taskmeter.governance.spend import code_for
from taskmeter.identity.principal import Principal, scope_key
from taskmeter.identity.service import IdentityError, normalise_email
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.tables import (
    MEMBERSHIPS,
    PROJECTS,
    RESERVATIONS,
    STREAMS,
    TEAMS,
    USERS,
    Cap,
    CreditGrant,
    Team,
    User,
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


@dataclass(frozen=True)
class Hold:
    user_id: int
    team_id: int | None
    project_id: int | None
    scope: str
    created_at: datetime
    nano: int


def resolve_payer(db: Session, principal: Principal, request: AuthorizeRequest) -> Payer:
    try:
        email = normalise_email(request.user)
    except IdentityError as exc:
        raise BadRequest(f"user: {exc}") from None
    if not principal.is_service and principal.email != email:
        raise Forbidden("a user's key may only authorize its own streams")
    found = db.execute(
        select(USERS.c.id, MEMBERSHIPS.c.team_id, TEAMS.c.name)
        .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
        .outerjoin(TEAMS, TEAMS.c.id == MEMBERSHIPS.c.team_id)
        .where(USERS.c.email == email)
    ).one_or_none()
    if found is None:
        raise BadRequest(f"no user with email {email}", code="unknown_user")
    user_id, team_id, team_name = found
    if request.team is not None and request.team != team_name:
        # Streams are stamped with the owner's team when they start: no other team can pay.
        raise BadRequest(f"{email} is not in team {request.team!r}", code="invalid_request")
    scope = scope_key(team_id=team_id, user_id=user_id)
    project_id = None
    if request.project is not None:
        project = db.execute(
            select(PROJECTS.c.id, PROJECTS.c.archived_at).where(
                PROJECTS.c.scope == scope, PROJECTS.c.name == request.project
            )
        ).one_or_none()
        if project is None:
            raise BadRequest(
                f"no project {request.project!r} in the stream owner's "
                + ("team" if team_id is not None else "own usage"),
                code="unknown_project",
            )
        if project.archived_at is not None:
            raise BadRequest(f"project {request.project!r} is archived", code="project_archived")
        project_id = project.id
    return Payer(user_id, team_id, project_id, scope)


def _lock_payer(db: Session, payer: Payer) -> None:
    """Serialize the payer's authorizations. NO KEY UPDATE: ingestion's foreign-key checks on
    these rows (KEY SHARE) are not blocked by it."""
    if db.get_bind().dialect.name != "postgresql":
        return  # the transaction holds SQLite's write lock from its BEGIN IMMEDIATE
    db.execute(text("SELECT id FROM users WHERE id = :id FOR NO KEY UPDATE"), {"id": payer.user_id})
    if payer.team_id is not None:
        db.execute(
            text("SELECT id FROM teams WHERE id = :id FOR NO KEY UPDATE"), {"id": payer.team_id}
        )
    if payer.project_id is not None:
        db.execute(
            text("SELECT id FROM projects WHERE id = :id FOR NO KEY UPDATE"),
            {"id": payer.project_id},
        )


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


def held_against(cap: Cap, holds: list[Hold], since: datetime) -> int:
    def counts(h: Hold) -> bool:
        if h.created_at < since:
            return False
        if cap.kind == "user":
            return h.user_id == cap.user_id
        if cap.kind == "team":
            return h.team_id == cap.team_id
        if cap.kind == "member":
            return h.team_id == cap.team_id and h.user_id == cap.user_id
        return h.project_id == cap.project_id

    return sum(h.nano for h in holds if counts(h))


def _credit_headroom(db: Session, payer: Payer, holds: list[Hold], now: datetime) -> dict[str, Any]:
    """The payer's credit account as authorize sees it (nano-credits)."""
    if payer.team_id is not None:
        owner = CreditGrant.team_id == payer.team_id
        reset_at = db.scalar(select(Team.credits_reset_at).where(Team.id == payer.team_id))
    else:
        owner = CreditGrant.user_id == payer.user_id
        reset_at = db.scalar(select(User.credits_reset_at).where(User.id == payer.user_id))
    grants = db.execute(
        select(CreditGrant.amount_nano).where(
            owner, or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now)
        )
    ).all()
    issued = sum(amount for (amount,) in grants)
    used = charged_since(db, payer.scope, reset_at)
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
    payer = resolve_payer(db, principal, request)
    _lock_payer(db, payer)
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

    subjects = stream_subjects(payer.user_id, payer.team_id, payer.project_id)
    caps = sorted(
        db.scalars(select(Cap).where(Cap.subject.in_(subjects))),
        key=lambda c: (_KIND_ORDER[c.kind], c.period, c.id),
    )
    statuses = []
    for cap in caps:
        start, end = current_period(cap, now)
        used = used_in_period(db, cap, start)
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


def release(db: Session, principal: Principal, reservation_id: str) -> None:
    """End a reservation's hold now (the caller's own, or any for a service key)."""
    query = update(RESERVATIONS).where(
        RESERVATIONS.c.id == reservation_id, RESERVATIONS.c.released_at.is_(None)
    )
    if not principal.is_service:
        query = query.where(RESERVATIONS.c.user_id == principal.user_id)
    if db.execute(query.values(released_at=utc_now())).rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no open reservation {reservation_id}")
