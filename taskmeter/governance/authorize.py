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

from sqlalchemy import (
    String,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
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
from taskmeter.usage.account import charged_since_expr

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
    """Who pays for the stream, in one statement. With `lock` (PostgreSQL), the same statement
    takes a transaction-scoped advisory lock on the payer's scope (its team, or the solo user):
    every authorization of that scope's users, caps, projects and credits then runs one after
    another, and the statements after this one see what the previous holder committed.
    SQLite's write transaction is exclusive from its BEGIN IMMEDIATE. Also with `lock`, the
    transaction commits asynchronously: a reservation is a hold, not usage (bench/RESULTS.md:
    the WAL flush had doubled authorize's time); others see it at commit either way, and a
    server crash can forget only the last holds."""
    try:
        email = normalise_email(request.user)
    except IdentityError as exc:
        raise BadRequest(f"user: {exc}") from None
    if not principal.is_service and principal.email != email:
        raise Forbidden("a user's key may only authorize its own streams")
    postgresql = db.get_bind().dialect.name == "postgresql"
    query = _PAYER_LOCKED if lock and postgresql else _PAYER
    found = db.execute(query, {"email": email, "project": request.project}).one_or_none()
    if found is None:
        raise BadRequest(f"no user with email {email}", code="unknown_user")
    if request.team is not None and request.team != found.team_name:
        # Streams are stamped with the owner's team when they start: no other team can pay.
        raise BadRequest(f"{email} is not in team {request.team!r}", code="invalid_request")
    team_id = found.team_id
    scope = scope_key(team_id=team_id, user_id=found.id)
    if request.project is not None:
        if found.project_id is None:
            raise BadRequest(
                f"no project {request.project!r} in the stream owner's "
                + ("team" if team_id is not None else "own usage"),
                code="unknown_project",
            )
        if found.project_archived_at is not None:
            raise BadRequest(f"project {request.project!r} is archived", code="project_archived")
    reset_at = found.team_reset_at if team_id is not None else found.user_reset_at
    return Payer(found.id, team_id, found.project_id, scope, reset_at)


_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
# The payer's scope key in SQL, as `scope_key` writes it.
_SCOPE_SQL = case(
    (MEMBERSHIPS.c.team_id.is_not(None), literal("t") + cast(MEMBERSHIPS.c.team_id, String)),
    else_=literal("u") + cast(USERS.c.id, String),
)
_PROJECT_OF = select(PROJECTS.c.id, PROJECTS.c.archived_at).where(
    PROJECTS.c.scope == _SCOPE_SQL, PROJECTS.c.name == bindparam("project")
)
_PAYER_COLUMNS = [
    USERS.c.id,
    USERS.c.credits_reset_at.label("user_reset_at"),
    MEMBERSHIPS.c.team_id,
    TEAMS.c.name.label("team_name"),
    TEAMS.c.credits_reset_at.label("team_reset_at"),
    _PROJECT_OF.with_only_columns(PROJECTS.c.id).scalar_subquery().label("project_id"),
    _PROJECT_OF.with_only_columns(PROJECTS.c.archived_at)
    .scalar_subquery()
    .label("project_archived_at"),
]
_PAYER_FROM = USERS.outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id).outerjoin(
    TEAMS, TEAMS.c.id == MEMBERSHIPS.c.team_id
)
_PAYER = select(*_PAYER_COLUMNS).select_from(_PAYER_FROM).where(USERS.c.email == bindparam("email"))
_PAYER_LOCKED = _PAYER.add_columns(
    func.set_config("synchronous_commit", "off", true()).label("async_commit"),
    func.pg_advisory_xact_lock(func.hashtextextended(literal("payer:") + _SCOPE_SQL, 0)).label(
        "locked"
    ),
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
    """The payer's credit account as authorize sees it (nano-credits), in one statement."""
    owner = (
        CREDIT_GRANTS.c.team_id == payer.team_id
        if payer.team_id is not None
        else CREDIT_GRANTS.c.user_id == payer.user_id
    )
    live = (
        select(CREDIT_GRANTS.c.amount_nano)
        .where(owner, or_(CREDIT_GRANTS.c.expires_at.is_(None), CREDIT_GRANTS.c.expires_at > now))
        .subquery()
    )
    grants, issued, used = db.execute(
        select(
            select(func.count()).select_from(live).scalar_subquery(),
            select(func.coalesce(func.sum(live.c.amount_nano), 0)).scalar_subquery(),
            charged_since_expr(payer.scope, payer.reset_at),
        )
    ).one()
    held = sum(h.nano for h in holds if h.scope == payer.scope)
    return {"live_grants": int(grants), "issued": int(issued), "used": int(used), "held": held}


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
