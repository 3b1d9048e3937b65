"""Who is calling (`Principal`) and what they may read (`Scope`).

Every endpoint resolves its caller here and nowhere else:

    request ─ X-Api-Key / Authorization: Bearer ─▶ Principal ─ read_scope ─▶ Scope

A `Scope` can only be made by `read_scope` (its constructor wants a private token), so a
repository that takes a Scope cannot be handed an unchecked one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, select, update

from taskmeter.errors import Forbidden, Unauthorized
from taskmeter.identity.jwt import JwtError, JwtVerifier
from taskmeter.identity.keys import KEY_PREFIX, hash_key, hashes_match, is_well_formed
from taskmeter.store import Store
from taskmeter.store.tables import (
    API_KEYS,
    MEMBERSHIPS,
    TEAMS,
    USERS,
    Membership,
    Team,
    User,
)

__all__ = ["Principal", "Scope", "TeamRole", "authenticate", "read_scope", "scope_key"]

log = logging.getLogger("taskmeter.auth")

# last_used_at is refreshed at most this often: a write per read request would cost more
# than the field is worth.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_SCOPE_TOKEN = object()


@dataclass(frozen=True)
class TeamRole:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (by key or JWT) or a service key."""

    via: Literal["api_key", "jwt"]
    key_id: str | None = None
    user_id: int | None = None
    email: str | None = None
    system_role: str | None = None
    team: TeamRole | None = None
    service_name: str | None = None

    @property
    def is_service(self) -> bool:
        return self.service_name is not None


def scope_key(*, team_id: int | None, user_id: int) -> str:
    """The reader scope a stream belongs to: its team if stamped with one, else its owner."""
    return f"t{team_id}" if team_id is not None else f"u{user_id}"


@dataclass(frozen=True)
class Scope:
    """The rows a caller may read: a team (for its admins) or one solo user's own rows."""

    kind: Literal["team", "solo"]
    key: str
    user_id: int
    team_id: int | None = None
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _SCOPE_TOKEN:
            raise TypeError("a Scope is only made by taskmeter.identity.principal.read_scope")

    @property
    def is_team_admin(self) -> bool:
        return self.kind == "team"


def read_scope(principal: Principal) -> Scope:
    """The usage a principal may read, or 403 for members, viewers and service keys."""
    if principal.is_service or principal.user_id is None:
        raise Forbidden("service keys write usage; reading it needs a user's key")
    if principal.team is None:
        return Scope(
            kind="solo",
            key=scope_key(team_id=None, user_id=principal.user_id),
            user_id=principal.user_id,
            _token=_SCOPE_TOKEN,
        )
    if principal.team.role != "admin":
        raise Forbidden("usage data is visible to team admins only")
    return Scope(
        kind="team",
        key=scope_key(team_id=principal.team.id, user_id=principal.user_id),
        user_id=principal.user_id,
        team_id=principal.team.id,
        _token=_SCOPE_TOKEN,
    )


def _with_team(query: Any) -> Any:
    """`query` over User, joined to the user's membership and team (if any), in one round trip."""
    return (
        query.outerjoin(Membership, Membership.user_id == User.id)
        .outerjoin(Team, Team.id == Membership.team_id)
        .add_columns(Membership.role, Team.id, Team.name)
    )


def _user_principal(
    user_id: int,
    email: str,
    system_role: str,
    role: str | None,
    team_id: int | None,
    team_name: str | None,
    *,
    via: Literal["api_key", "jwt"],
    key_id: str | None,
) -> Principal:
    team = (
        TeamRole(id=team_id, name=team_name or "", role=role or "") if team_id is not None else None
    )
    return Principal(
        via=via,
        key_id=key_id,
        user_id=user_id,
        email=email,
        system_role=system_role,
        team=team,
    )


# Every request asks it: built once, from the tables (building it and loading ORM instances
# had been a fifth of a streams page's time).
_KEY_BY_HASH = (
    select(
        API_KEYS.c.id,
        API_KEYS.c.key_hash,
        API_KEYS.c.kind,
        API_KEYS.c.name,
        API_KEYS.c.revoked_at,
        API_KEYS.c.last_used_at,
        USERS.c.id.label("user_id"),
        USERS.c.email,
        USERS.c.role,
        MEMBERSHIPS.c.role.label("team_role"),
        TEAMS.c.id.label("team_id"),
        TEAMS.c.name.label("team_name"),
    )
    .select_from(
        API_KEYS.outerjoin(USERS, USERS.c.id == API_KEYS.c.user_id)
        .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
        .outerjoin(TEAMS, TEAMS.c.id == MEMBERSHIPS.c.team_id)
    )
    .where(API_KEYS.c.key_hash == bindparam("key_hash"))
)


def _by_api_key(store: Store, candidate: str) -> Principal:
    if not is_well_formed(candidate):
        raise Unauthorized("invalid API key")
    candidate_hash = hash_key(candidate)
    with store.read() as db:
        key = db.execute(_KEY_BY_HASH, {"key_hash": candidate_hash}).one_or_none()
    if key is None or not hashes_match(key.key_hash, candidate_hash):
        raise Unauthorized("invalid API key")
    if key.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    if key.kind == "service":
        principal = Principal(via="api_key", key_id=key.id, service_name=key.name or key.id)
    elif key.user_id is None:
        raise Unauthorized("invalid API key")
    else:
        principal = _user_principal(
            key.user_id,
            key.email,
            key.role,
            key.team_role,
            key.team_id,
            key.team_name,
            via="api_key",
            key_id=key.id,
        )
    last_used = key.last_used_at
    now = datetime.now(UTC)
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        with store.write() as db:
            db.execute(
                update(API_KEYS).where(API_KEYS.c.id == principal.key_id).values(last_used_at=now)
            )
    return principal


def _by_jwt(store: Store, verifier: JwtVerifier, token: str) -> Principal:
    try:
        email = verifier.email_of(token)
    except JwtError as exc:
        raise Unauthorized(str(exc)) from None
    with store.read() as db:
        found = db.execute(_with_team(select(User)).where(User.email == email)).one_or_none()
        if found is None:
            raise Unauthorized("the token names no known user")
        user, role, team_id, team_name = found
        return _user_principal(
            user.id, user.email, user.role, role, team_id, team_name, via="jwt", key_id=None
        )


def authenticate(
    store: Store, verifier: JwtVerifier, *, api_key: str | None, authorization: str | None
) -> Principal:
    """Resolve the caller from the request's credential headers, or raise 401.

    A request carrying both headers is accepted only when both authenticate the same
    principal: a bad credential is never silently ignored because another one is good.
    """
    # Presence, not truthiness: an empty credential header is a bad credential, not none.
    if api_key is not None and authorization is not None:
        by_key = _by_api_key(store, api_key.strip())
        by_header = authenticate(store, verifier, api_key=None, authorization=authorization)
        if (by_key.user_id, by_key.service_name) != (by_header.user_id, by_header.service_name):
            raise Unauthorized("X-Api-Key and Authorization name different principals")
        return by_key
    if api_key is not None:
        return _by_api_key(store, api_key.strip())
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("use 'Authorization: Bearer <token>' or an X-Api-Key header")
        # Keys sent as bearer tokens are accepted too: many HTTP clients only do bearer.
        if credential.startswith(KEY_PREFIX):
            return _by_api_key(store, credential)
        return _by_jwt(store, verifier, credential)
    raise Unauthorized("missing credential: send X-Api-Key or Authorization: Bearer")
