"""Who pays for a stream, and what stands against them: the state `authorize` decides on.

    AuthorizeRequest ─ resolve_payer (one statement; on PostgreSQL it also takes the payer
                       scope's advisory lock) ─▶ Payer
    Payer ─ payer_state (one statement) ─▶ open holds, the credit account, the caps in
                                           effect with their latest period's spend

The lock is taken by the first statement and the state read by the second: under READ
COMMITTED a statement reads what was committed when it started, so the state is read after the
lock is held, and every authorization of a scope sees the holds of the one before it. On
PostgreSQL the second statement also writes the new reservation (a data-modifying CTE, which
the statement's own reads do not see): a refusal rolls it back, and an allowed one needs no
statement of its own before COMMIT.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    ARRAY,
    String,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import CompoundSelect, Select

from taskmeter.errors import BadRequest, Forbidden
from taskmeter.governance.caps import stream_subjects
from taskmeter.identity.principal import Principal, scope_key
from taskmeter.identity.service import IdentityError, normalise_email
from taskmeter.store.bulk import fetch_compiled
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
from taskmeter.timeutil import as_utc
from taskmeter.usage.account import charged_since_expr

if TYPE_CHECKING:
    from taskmeter.governance.authorize import AuthorizeRequest

__all__ = [
    "Hold",
    "Payer",
    "PayerState",
    "held_against",
    "open_holds",
    "payer_state",
    "resolve_payer",
]


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
    SQLite's write transaction is exclusive from its BEGIN IMMEDIATE. (Authorize's
    transaction commits asynchronously: see `Store.small_write`.)"""
    try:
        email = normalise_email(request.user)
    except IdentityError as exc:
        raise BadRequest(f"user: {exc}") from None
    if not principal.is_service and principal.email != email:
        raise Forbidden("a user's key may only authorize its own streams")
    postgresql = db.get_bind().dialect.name == "postgresql"
    params = {"email": email, "project": request.project}
    if postgresql:
        rows = fetch_compiled(db, _PAYER_LOCKED if lock else _PAYER, params)
        found = rows[0] if rows else None
    else:
        found = db.execute(_PAYER, params).one_or_none()
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
    func.pg_advisory_xact_lock(func.hashtextextended(literal("payer:") + _SCOPE_SQL, 0)).label(
        "locked"
    ),
)


def _held() -> Any:
    # What an open reservation still holds: its estimate less what its stream has been charged.
    return RESERVATIONS.c.estimate_nano - func.coalesce(STREAMS.c.neo_credits_nano, 0)


@functools.cache
def _open_holds_query(project: bool) -> CompoundSelect[Any]:
    """The open reservations that may count against a payer's caps or account (`user_id`,
    `scope`, `project_id`, `now` bound), each with what it still holds (a finished stream's
    real cost is in the spend: its hold is over). Built once a shape, as every statement of
    authorize is: building and keying them again each call cost more than running them.

    One disjoint part per index rather than an OR: PostgreSQL answers an OR with a bitmap
    scan, which never marks the entries of released reservations dead in the index, so every
    authorization walked all those released since the last vacuum; a plain index scan marks
    them, and the next one skips them."""
    user = RESERVATIONS.c.user_id == bindparam("user_id")
    scope = RESERVATIONS.c.scope == bindparam("scope")
    parts = [[user], [scope, ~user]]
    if project:
        parts.append([RESERVATIONS.c.project_id == bindparam("project_id"), ~user, ~scope])
    return union_all(
        *(
            select(
                RESERVATIONS.c.user_id,
                RESERVATIONS.c.team_id,
                RESERVATIONS.c.project_id,
                RESERVATIONS.c.scope,
                RESERVATIONS.c.created_at,
                _held().label("held"),
            )
            .outerjoin(STREAMS, STREAMS.c.stream_id == RESERVATIONS.c.stream_id)
            .where(
                RESERVATIONS.c.released_at.is_(None),
                RESERVATIONS.c.expires_at > bindparam("now"),
                *match,
                STREAMS.c.status.is_(None),
                _held() > 0,
            )
            for match in parts
        )
    )


def _params(payer: Payer, now: datetime) -> dict[str, Any]:
    return {
        "user_id": payer.user_id,
        "team_id": payer.team_id,
        "project_id": payer.project_id,
        "scope": payer.scope,
        "now": now,
    }


def open_holds(db: Session, payer: Payer, now: datetime) -> list[Hold]:
    query = _open_holds_query(payer.project_id is not None)
    return [Hold(*row) for row in db.execute(query, _params(payer, now)).all()]


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


@dataclass(frozen=True)
class PayerState:
    holds: list[Hold]
    # The credit account in nano-credits (None when credit checks are off).
    account: dict[str, int] | None
    # The payer's caps, each with its latest started period's start and spend.
    caps: list[Any]


def payer_state(
    db: Session,
    payer: Payer,
    now: datetime,
    *,
    credits: bool,
    reserve: Mapping[str, Any] | None = None,
) -> tuple[PayerState, bool]:
    """Holds, credit account and caps in one statement (a round trip each was most of
    authorize's time): the one-row part as scalar subqueries, the caps joined to it. On
    PostgreSQL it is compiled once a shape and run by psycopg (SQLAlchemy's execution path was
    a sixth of authorize's time), as is `resolve_payer`'s. With `reserve` (a reservation row)
    on PostgreSQL the same statement inserts it; the flag says whether it did (the caller
    inserts it otherwise, once it has decided)."""
    postgresql = db.get_bind().dialect.name == "postgresql"
    reserving = reserve is not None and postgresql
    shape = (
        postgresql,
        payer.project_id is not None,
        None if not credits else "team" if payer.team_id is not None else "user",
        reserving,
    )
    # A credit account that was reset counts from then: its statement's shape depends on the
    # moment (charged_since_expr), so it is built for the call.
    cached = not credits or payer.reset_at is None
    query = _state_query(*shape) if cached else _build_state_query(*shape, since=payer.reset_at)
    params = {
        **_params(payer, now),
        "subjects": list(stream_subjects(payer.user_id, payer.team_id, payer.project_id)),
    }
    if reserving:
        assert reserve is not None
        params |= {f"rsv_{name}": value for name, value in reserve.items()}
    rows: Sequence[Any] = (
        fetch_compiled(db, query, params, cache=cached)
        if postgresql
        else db.execute(query, params).all()
    )
    first = rows[0]
    raw = first.holds
    if isinstance(raw, str):  # SQLite answers JSON as text
        raw = orjson.loads(raw)
    found = [
        Hold(user_id, team_id, project_id, scope, _parse_time(created_at), int(held))
        for user_id, team_id, project_id, scope, created_at, held in raw or []
    ]
    account = None
    if credits:
        account = {
            "live_grants": int(first.live_grants),
            "issued": int(first.issued),
            "used": int(first.used),
            "held": sum(h.nano for h in found if h.scope == payer.scope),
        }
    return PayerState(found, account, [row for row in rows if row.id is not None]), reserving


@functools.cache
def _state_query(postgresql: bool, project: bool, owner: str | None, reserve: bool) -> Select[Any]:
    return _build_state_query(postgresql, project, owner, reserve, since=None)


_RESERVATION_COLUMNS = ("id", "user_id", "team_id", "project_id", "scope", "task_id",
                        "stream_id", "estimate_nano", "created_at", "expires_at")  # fmt: skip


def _build_state_query(
    postgresql: bool, project: bool, owner: str | None, reserve: bool, *, since: datetime | None
) -> Select[Any]:
    holds = _open_holds_query(project).subquery("holds")
    fields = (holds.c.user_id, holds.c.team_id, holds.c.project_id, holds.c.scope,
              holds.c.created_at, holds.c.held)  # fmt: skip
    aggregate = (
        func.json_agg(func.json_build_array(*fields))
        if postgresql
        else func.json_group_array(func.json_array(*fields))
    )
    columns: list[Any] = [select(aggregate).select_from(holds).scalar_subquery().label("holds")]
    if owner is not None:
        columns += _credit_columns(owner, since)
    one = select(literal(1).label("one")).subquery("one")
    # An array parameter on PostgreSQL, so that the statement compiles once (see `payer_state`).
    subjects = (
        CAPS.c.subject == any_(bindparam("subjects", type_=ARRAY(String)))
        if postgresql
        else CAPS.c.subject.in_(bindparam("subjects", expanding=True))
    )
    query = select(
        *columns,
        *CAPS.c,
        _latest(CAP_SPEND.c.period_start).label("latest_start"),
        _latest(CAP_SPEND.c.used_nano).label("latest_used"),
    ).select_from(one.outerjoin(CAPS, subjects))
    if reserve:
        # PostgreSQL runs a data-modifying CTE once, whether or not the query reads it.
        values: dict[str, Any] = {n: bindparam(f"rsv_{n}") for n in _RESERVATION_COLUMNS}
        query = query.add_cte(RESERVATIONS.insert().values(values).cte("reserved"))
    return query


def _credit_columns(owner: str, since: datetime | None) -> list[Any]:
    owns = (
        CREDIT_GRANTS.c.team_id == bindparam("team_id")
        if owner == "team"
        else CREDIT_GRANTS.c.user_id == bindparam("user_id")
    )
    live = (
        select(CREDIT_GRANTS.c.amount_nano)
        .where(
            owns,
            or_(
                CREDIT_GRANTS.c.expires_at.is_(None),
                CREDIT_GRANTS.c.expires_at > bindparam("now"),
            ),
        )
        .subquery()
    )
    return [
        select(func.count()).select_from(live).scalar_subquery().label("live_grants"),
        select(func.coalesce(func.sum(live.c.amount_nano), 0)).scalar_subquery().label("issued"),
        charged_since_expr(bindparam("scope"), since).label("used"),
    ]


def _latest(column: Any) -> Any:
    return (
        select(column)
        .where(CAP_SPEND.c.cap_id == CAPS.c.id, CAP_SPEND.c.period_start <= bindparam("now"))
        .order_by(CAP_SPEND.c.period_start.desc())
        .limit(1)
        .scalar_subquery()
    )


def _parse_time(value: str) -> datetime:
    # PostgreSQL writes a timestamptz in the session's zone; SQLite keeps naive UTC text.
    return as_utc(datetime.fromisoformat(value))
