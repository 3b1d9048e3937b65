"""Credit grants and resets, and the nano-credit arithmetic money is kept in.

Money is an integer count of nano-credits (1e-9 credit) everywhere in storage and sums; it
becomes a float only when written to JSON, rounded to 6 decimals.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy.orm import Session

from taskmeter.identity.service import IdentityError, find_team, find_user
from taskmeter.store.tables import CreditGrant, Team, User
from taskmeter.timeutil import utc_now

__all__ = ["NANO", "credits_from_nano", "grant_credits", "parse_credit_amount", "reset_credits"]

NANO = 10**9


def parse_credit_amount(value: str) -> int:
    """A positive credit amount with at most 9 decimals, as nano-credits."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation as exc:
        raise IdentityError(f"credit amount {value!r} is not a number") from exc
    if not amount.is_finite() or amount <= 0:
        raise IdentityError(f"credit amount {value!r} must be greater than 0")
    nano = amount * NANO
    if nano != nano.to_integral_value():
        raise IdentityError(f"credit amount {value!r} has more than 9 decimal places")
    if nano >= 2**62:
        raise IdentityError(f"credit amount {value!r} is too large")
    return int(nano)


def credits_from_nano(nano: int) -> float:
    return round(nano / NANO, 6)


def _account(db: Session, user_email: str | None, team_name: str | None) -> User | Team:
    if (user_email is None) == (team_name is None):
        raise IdentityError("give exactly one of --user EMAIL or --team TEAM")
    if user_email is not None:
        return find_user(db, user_email)
    assert team_name is not None
    return find_team(db, team_name)


def grant_credits(
    db: Session,
    *,
    amount_nano: int,
    user_email: str | None = None,
    team_name: str | None = None,
    expires_at: datetime | None = None,
) -> CreditGrant:
    account = _account(db, user_email, team_name)
    now = utc_now()
    if expires_at is not None and expires_at <= now:
        raise IdentityError(f"expiry {expires_at.isoformat()} is already in the past")
    grant = CreditGrant(
        user_id=account.id if isinstance(account, User) else None,
        team_id=account.id if isinstance(account, Team) else None,
        amount_nano=amount_nano,
        granted_at=now,
        expires_at=expires_at,
    )
    db.add(grant)
    db.flush()
    return grant


def reset_credits(
    db: Session, *, user_email: str | None = None, team_name: str | None = None
) -> datetime:
    """Start the account's usage count afresh from now; grants are kept."""
    account = _account(db, user_email, team_name)
    account.credits_reset_at = utc_now()
    db.flush()
    return account.credits_reset_at
