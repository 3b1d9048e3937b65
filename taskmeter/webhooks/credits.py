"""Credit alerts: `credits.low` from the ingest transaction that charged the account, and
`credits.expiring` from the worker's periodic sweep.

    ingest batch charged scopes ─ emit_credits_low ─▶ available < TASKMETER_CREDITS_LOW_PERCENT
        of the live grants ─▶ enqueue(dedupe "credits:<scope>:low:<newest grant>:<reset>")
    worker, every TASKMETER_SWEEP_INTERVAL_S ─ sweep_expiring ─▶ live grants expiring within
        TASKMETER_CREDITS_EXPIRING_DAYS of an account with credits left
        ─▶ enqueue(dedupe "credits:grant:<id>:expiring")

Both are checked only while some endpoint subscribes to the event (an ingest batch with spend
then costs one read of the endpoints, not the account's figures). `credits.low` fires once per
account state: a new grant or a reset arms it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, exists, literal, or_, select
from sqlalchemy.orm import Session

from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store import Store
from taskmeter.store.tables import CREDIT_GRANTS, TEAMS, USERS, WEBHOOK_EVENTS
from taskmeter.timeutil import iso_z, utc_now
from taskmeter.usage.account import charged_since
from taskmeter.webhooks.outbox import enqueue, subscribed

__all__ = [
    "Account",
    "account_of",
    "credits_low_watched",
    "emit_credits_low",
    "sweep_expiring",
]

G = CREDIT_GRANTS.c


@dataclass(frozen=True)
class Account:
    scope: str
    owner: dict[str, str]  # {"team": name} or {"user": email}
    issued_nano: int  # live grants
    used_nano: int  # charged since the last reset
    newest_grant_id: int | None
    reset_at: datetime | None

    @property
    def available_nano(self) -> int:
        return max(0, self.issued_nano - self.used_nano)

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.owner,
            "issued_credits": credits_from_nano(self.issued_nano),
            "used_credits": credits_from_nano(self.used_nano),
            "available_credits": credits_from_nano(self.available_nano),
        }


def account_of(db: Session, scope: str, now: datetime) -> Account | None:
    """The credit account of a scope (`t<team>` or `u<user>`), None if the owner is gone."""
    owner_id = int(scope[1:])
    if scope.startswith("t"):
        table, name, owns = TEAMS, TEAMS.c.name, G.team_id == owner_id
        kind = "team"
    else:
        table, name, owns = USERS, USERS.c.email, G.user_id == owner_id
        kind = "user"
    found = db.execute(
        select(name, table.c.credits_reset_at).where(table.c.id == owner_id)
    ).one_or_none()
    if found is None:
        return None
    live = db.execute(
        select(G.id, G.amount_nano).where(owns, or_(G.expires_at.is_(None), G.expires_at > now))
    ).all()
    reset_at = found[1]
    return Account(
        scope,
        {kind: found[0]},
        sum(amount for _, amount in live),
        charged_since(db, scope, reset_at),
        max((grant_id for grant_id, _ in live), default=None),
        reset_at,
    )


def credits_low_watched(db: Session) -> bool:
    """Whether any endpoint takes `credits.low`: asked before the batch locks its hot rows."""
    return bool(subscribed(db, "credits.low"))


def emit_credits_low(db: Session, scopes: Iterable[str], percent: int) -> None:
    """In the transaction that charged these accounts, once `credits_low_watched` said yes:
    `credits.low` for each whose available credits fell below `percent` of its live grants."""
    wanted = sorted(set(scopes))
    if percent <= 0 or not wanted:
        return
    now = utc_now()
    for scope in wanted:
        account = account_of(db, scope, now)
        if account is None or account.issued_nano == 0:
            continue  # no live credits: nothing to run low on
        if account.available_nano * 100 >= account.issued_nano * percent:
            continue
        reset = iso_z(account.reset_at) if account.reset_at else "never"
        enqueue(
            db,
            "credits.low",
            {**account.as_json(), "threshold_percent": percent},
            dedupe_key=f"credits:{scope}:low:{account.newest_grant_id}:{reset}",
        )


def sweep_expiring(store: Store, days: int, *, now: datetime | None = None) -> int:
    """`credits.expiring` for each live grant expiring within `days` of an account that still
    has credits, once per grant. Returns how many were enqueued."""
    if days <= 0:
        return 0
    now = now or utc_now()
    key = literal("credits:grant:") + cast(G.id, String) + literal(":expiring")
    with store.read() as db:
        if not subscribed(db, "credits.expiring"):
            return 0
        grants = db.execute(
            select(G.id, G.user_id, G.team_id, G.amount_nano, G.expires_at)
            .where(
                G.expires_at > now,
                G.expires_at <= now + timedelta(days=days),
                ~exists().where(WEBHOOK_EVENTS.c.dedupe_key == key),
            )
            .order_by(G.id)
        ).all()
    if not grants:
        return 0
    enqueued = 0
    with store.write() as db:
        for grant_id, user_id, team_id, amount, expires_at in grants:
            scope = f"t{team_id}" if team_id is not None else f"u{user_id}"
            account = account_of(db, scope, now)
            if account is None or account.available_nano == 0:
                continue
            data = {
                **account.as_json(),
                "grant_id": grant_id,
                "grant_credits": credits_from_nano(amount),
                "expires_at": iso_z(expires_at),
            }
            key_text = f"credits:grant:{grant_id}:expiring"
            enqueued += bool(enqueue(db, "credits.expiring", data, dedupe_key=key_text))
    return enqueued
