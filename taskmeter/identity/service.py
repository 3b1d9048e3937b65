"""Users, teams, memberships and keys: the operator's actions, shared by CLI and API.

Functions take an open session and never commit: the caller's transaction does. Bad input
raises `IdentityError` (or a subclass) with a one-line message fit to show an operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskmeter.identity.keys import NewKey, generate_key
from taskmeter.store.tables import ApiKey, Membership, Team, User
from taskmeter.timeutil import utc_now

__all__ = [
    "ROLES",
    "AlreadyExists",
    "IdentityError",
    "KeyRow",
    "NoSuchThing",
    "add_member",
    "create_key",
    "create_team",
    "create_user",
    "find_team",
    "find_user",
    "list_keys",
    "normalise_email",
    "parse_rate",
    "remove_member",
    "revoke_key",
]

ROLES = ("admin", "member", "viewer")
# Deliberately loose: one @, something on both sides, no spaces. Delivery is not our job.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class IdentityError(Exception):
    """Bad operator input; the message is one line."""


class NoSuchThing(IdentityError):
    pass


class AlreadyExists(IdentityError):
    pass


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise IdentityError(f"{email!r} is not an email address")
    return email


def parse_rate(value: str | Decimal) -> Decimal:
    try:
        rate = Decimal(str(value))
    except InvalidOperation as exc:
        raise IdentityError(f"neo cost rate {value!r} is not a number") from exc
    if not rate.is_finite() or rate < 0:
        raise IdentityError(f"neo cost rate {value!r} must be a number ≥ 0")
    return rate


def find_user(db: Session, email: str) -> User:
    email = normalise_email(email)
    user = db.scalars(select(User).where(User.email == email)).one_or_none()
    if user is None:
        raise NoSuchThing(f"no user with email {email}")
    return user


def find_team(db: Session, name: str) -> Team:
    team = db.scalars(select(Team).where(Team.name == name.strip())).one_or_none()
    if team is None:
        raise NoSuchThing(f"no team named {name!r}")
    return team


def create_user(
    db: Session, email: str, *, neo_cost_rate: Decimal | None = None, role: str = "user"
) -> User:
    email = normalise_email(email)
    if role not in ("user", "admin"):
        raise IdentityError(f"system role {role!r} must be user or admin")
    if db.scalars(select(User.id).where(User.email == email)).first() is not None:
        raise AlreadyExists(f"a user with email {email} already exists")
    user = User(email=email, role=role, neo_cost_rate=neo_cost_rate, created_at=utc_now())
    db.add(user)
    db.flush()
    return user


def _ensure_teamless(db: Session, user: User) -> None:
    membership = db.get(Membership, user.id)
    if membership is not None:
        team = db.get(Team, membership.team_id)
        name = team.name if team else membership.team_id
        raise AlreadyExists(f"{user.email} is already in team {name!r}; a user has one team")


def create_team(db: Session, name: str, admin_email: str) -> Team:
    name = name.strip()
    if not name or len(name) > 200:
        raise IdentityError("a team name must be 1-200 characters")
    if db.scalars(select(Team.id).where(Team.name == name)).first() is not None:
        raise AlreadyExists(f"a team named {name!r} already exists")
    admin = find_user(db, admin_email)
    _ensure_teamless(db, admin)
    team = Team(name=name, created_at=utc_now())
    db.add(team)
    db.flush()
    db.add(Membership(user_id=admin.id, team_id=team.id, role="admin", created_at=utc_now()))
    db.flush()
    return team


def add_member(db: Session, team_name: str, email: str, role: str) -> Membership:
    if role not in ROLES:
        raise IdentityError(f"role {role!r} must be one of {', '.join(ROLES)}")
    team = find_team(db, team_name)
    user = find_user(db, email)
    _ensure_teamless(db, user)
    membership = Membership(user_id=user.id, team_id=team.id, role=role, created_at=utc_now())
    db.add(membership)
    db.flush()
    return membership


def remove_member(db: Session, team_name: str, email: str) -> None:
    team = find_team(db, team_name)
    user = find_user(db, email)
    membership = db.get(Membership, user.id)
    if membership is None or membership.team_id != team.id:
        raise NoSuchThing(f"{user.email} is not a member of team {team.name!r}")
    db.delete(membership)
    db.flush()


def create_key(
    db: Session, *, email: str | None = None, service: str | None = None, name: str | None = None
) -> NewKey:
    """A user's key (`email`) or a service key (`service`), exactly one of the two."""
    if (email is None) == (service is None):
        raise IdentityError("give either a user's EMAIL or --service NAME, not both or neither")
    new = generate_key()
    if service is not None:
        service = service.strip()
        if not service:
            raise IdentityError("a service key needs a non-empty name")
        row = ApiKey(id=new.id, name=service, kind="service", user_id=None)
    else:
        assert email is not None
        user = find_user(db, email)
        row = ApiKey(id=new.id, name=name, kind="user", user_id=user.id)
    row.prefix = new.prefix
    row.key_hash = new.key_hash
    row.created_at = utc_now()
    db.add(row)
    db.flush()
    return new


@dataclass(frozen=True)
class KeyRow:
    id: str
    name: str | None
    prefix: str
    kind: str
    email: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_keys(db: Session, email: str | None = None) -> list[KeyRow]:
    query = select(ApiKey, User.email).outerjoin(User, User.id == ApiKey.user_id)
    if email is not None:
        query = query.where(ApiKey.user_id == find_user(db, email).id)
    rows = db.execute(query.order_by(ApiKey.created_at, ApiKey.id)).all()
    return [
        KeyRow(
            id=key.id,
            name=key.name,
            prefix=key.prefix,
            kind=key.kind,
            email=owner,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )
        for key, owner in rows
    ]


def revoke_key(db: Session, key_id: str) -> ApiKey:
    key = db.get(ApiKey, key_id.strip())
    if key is None:
        raise NoSuchThing(f"no key with id {key_id!r} (see `taskmeter keys list`)")
    if key.revoked_at is not None:
        raise IdentityError(f"key {key.id} was already revoked at {key.revoked_at.isoformat()}")
    key.revoked_at = utc_now()
    db.flush()
    return key
