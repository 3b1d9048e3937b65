"""A scope's credit account (SEMANTICS.md, Credit accounts): live grants, credits charged since
the last reset (running streams included), what is available."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, func, literal, select
from sqlalchemy.orm import Session

from taskmeter.identity.principal import Scope
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.tables import (
    CreditGrant,
    Stream,
    StreamRollup,
    StreamRollupMonth,
    Team,
    User,
)
from taskmeter.timeutil import iso_z, utc_now
from taskmeter.usage.buckets import bucket_time, in_spans, next_month, split_spans
from taskmeter.usage.rollups import (
    BUCKET_S,
    month_of,
)

__all__ = ["charged_since", "charged_since_expr", "credit_account"]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_z(moment)


def charged_since_expr(
    scope_key: str | BindParameter[Any], since: datetime | None
) -> ColumnElement[Any]:
    """Credits charged to the account by its streams created at or after `since`, running
    streams included (usage counts against the balance at once), as one SQL expression: the
    partial bucket after `since` from the rows, then 15-minute rollups up to the next month,
    then whole months."""
    parts: list[ColumnElement[Any]] = []
    first = None
    if since is not None:
        first = math.ceil(since.timestamp() / BUCKET_S)
        parts.append(
            select(func.coalesce(func.sum(Stream.neo_credits_nano), 0))
            .where(
                Stream.scope == scope_key,
                Stream.created_at >= since,
                Stream.created_at < bucket_time(first),
            )
            .scalar_subquery()
        )
    months, fine = split_spans((first, None), month_of, next_month)
    for table, spans in ((StreamRollupMonth, [months] if months else []), (StreamRollup, fine)):
        if spans:
            parts.append(
                select(func.coalesce(func.sum(table.neo_credits_nano), 0))
                .where(table.scope == scope_key, in_spans(table.bucket, spans))
                .scalar_subquery()
            )
    total: ColumnElement[Any] = literal(0)
    for part in parts:
        total = total + part
    return total


def charged_since(db: Session, scope_key: str, since: datetime | None) -> int:
    return int(db.scalar(select(charged_since_expr(scope_key, since))) or 0)


def credit_account(db: Session, scope: Scope) -> dict[str, Any]:
    """The credit account of the caller's scope (SEMANTICS.md, Credit accounts)."""
    if scope.kind == "team":
        owner_filter = CreditGrant.team_id == scope.team_id
        reset_at = db.scalar(select(Team.credits_reset_at).where(Team.id == scope.team_id))
    else:
        owner_filter = CreditGrant.user_id == scope.user_id
        reset_at = db.scalar(select(User.credits_reset_at).where(User.id == scope.user_id))
    now = utc_now()
    grants = db.execute(
        select(CreditGrant.amount_nano, CreditGrant.expires_at).where(owner_filter)
    ).all()
    live = [(amount, expires) for amount, expires in grants if expires is None or expires > now]
    issued = sum(amount for amount, _ in live)
    used = charged_since(db, scope.key, reset_at)
    expiries = [expires for _, expires in live if expires is not None]
    expired = bool(grants) and not live
    return {
        "total_issued_neo_credits": credits_from_nano(issued),
        "total_available_neo_credits": credits_from_nano(max(0, issued - used)),
        "total_neo_credits_post_reset": credits_from_nano(used),
        "last_credit_reset": _iso(reset_at),
        "neo_credits_expires_at": _iso(min(expiries)) if expiries else None,
        "neo_credits_is_expired": expired,
    }
