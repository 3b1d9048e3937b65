"""Resolve owners: the users a batch names, with their team *now* and their BYOK rate."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from taskmeter.store.tables import (
    MEMBERSHIPS,
    USERS,
)

__all__ = ["Owner", "resolve_owners"]


@dataclass(frozen=True)
class Owner:
    user_id: int
    team_id: int | None
    neo_cost_rate: Decimal | None


# Built once, from the tables (the ORM's execution path cost more than the query).
_OWNERS = (
    select(USERS.c.email, USERS.c.id, MEMBERSHIPS.c.team_id, USERS.c.neo_cost_rate)
    .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
    .where(USERS.c.email.in_(bindparam("emails", expanding=True)))
)


def resolve_owners(db: Session, emails: Iterable[str]) -> dict[str, Owner]:
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    rows = db.execute(_OWNERS, {"emails": wanted}).all()
    return {email: Owner(uid, team, rate) for email, uid, team, rate in rows}
