"""Re-pricing, the plan: which stored calls the current price rules price differently.

    RepriceFilter (model, provider, from/to, user|team, include_stated)
      ─ validate (dates in order, a --model that has calls or a price, the user/team exist)
      ─ candidate_events: the llm.call rows in range, in stream order, streamed
      ─ CallRepricer.reprice(row): (cost_nano, price_source_id) under the current rules,
        through the same PriceBook ingestion prices with
      ─ Plan: the calls, streams and tasks that change, before/after credit totals, and the
        credit difference by model, user and UTC month of the call

Nothing is written here: a dry run is the plan printed; an applied run (reprice.py) prints it,
then re-prices the planned streams, re-reading each under its lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, literal, select, tuple_
from sqlalchemy.orm import Session

from taskmeter.identity.service import IdentityError, find_team, find_user
from taskmeter.pricing.prices import CallTokens, PriceBook, usd_to_nano_credits
from taskmeter.store.tables import STREAMS, USAGE_EVENTS, USERS
from taskmeter.usage.figures import byok_charge_nano

__all__ = [
    "CallRepricer",
    "Plan",
    "RepriceError",
    "RepriceFilter",
    "candidate_events",
    "in_filter",
    "plan",
]

# How many event rows the plan's scan holds at once.
SCAN_CHUNK = 5_000


class RepriceError(ValueError):
    """Bad input to a re-pricing: reported as one line, nothing changed."""


@dataclass(frozen=True)
class RepriceFilter:
    model: str | None = None
    provider: str | None = None
    start: datetime | None = None  # calls at or after (by the call's `time`)
    end: datetime | None = None  # calls before
    user_email: str | None = None
    team_name: str | None = None
    include_stated: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider.lower() if self.provider else None,
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "user": self.user_email.strip().lower() if self.user_email else None,
            "team": self.team_name.strip() if self.team_name else None,
            "include_stated": self.include_stated,
        }


@dataclass(frozen=True)
class Owners:
    """The filter's user or team, resolved to ids."""

    user_id: int | None = None
    team_id: int | None = None


def validate(db: Session, rules: RepriceFilter, book: PriceBook) -> Owners:
    if rules.start and rules.end and rules.start > rules.end:
        raise RepriceError(
            f"--from {rules.start.isoformat()} is after --to {rules.end.isoformat()}"
        )
    if rules.user_email and rules.team_name:
        raise RepriceError("give at most one of --user and --team")
    if rules.model:
        recorded = db.execute(
            select(USAGE_EVENTS.c.stream_id)
            .where(USAGE_EVENTS.c.type == "llm.call", USAGE_EVENTS.c.model == rules.model)
            .limit(1)
        ).first()
        if recorded is None and not book.has_price(rules.model, rules.provider):
            raise RepriceError(f"unknown model {rules.model!r}: no recorded calls and no price")
    try:
        if rules.user_email:
            return Owners(user_id=find_user(db, rules.user_email).id)
        if rules.team_name:
            return Owners(team_id=find_team(db, rules.team_name).id)
    except IdentityError as exc:
        raise RepriceError(str(exc)) from exc
    return Owners()


_EVENT_FIELDS = (
    USAGE_EVENTS.c.stream_id,
    USAGE_EVENTS.c.event_id,
    USAGE_EVENTS.c.time,
    USAGE_EVENTS.c.model,
    USAGE_EVENTS.c.payload,
    USAGE_EVENTS.c.cost_nano,
    USAGE_EVENTS.c.price_source_id,
)


def candidate_query(rules: RepriceFilter, owners: Owners) -> Select[Any]:
    """The llm.call rows the filter selects (provider and stated costs are checked per row:
    they live in the payload)."""
    query = select(*_EVENT_FIELDS).where(USAGE_EVENTS.c.type == "llm.call")
    if rules.model:
        query = query.where(USAGE_EVENTS.c.model == rules.model)
    if rules.start:
        query = query.where(USAGE_EVENTS.c.time >= rules.start)
    if rules.end:
        query = query.where(USAGE_EVENTS.c.time < rules.end)
    if owners.user_id is not None or owners.team_id is not None:
        owned = select(STREAMS.c.stream_id).where(
            STREAMS.c.owner_user_id == owners.user_id
            if owners.user_id is not None
            else STREAMS.c.team_id == owners.team_id
        )
        query = query.where(USAGE_EVENTS.c.stream_id.in_(owned))
    return query


def candidate_events(db: Session, rules: RepriceFilter, owners: Owners) -> Iterator[Any]:
    """The rows in key order, a page at a time (keyset: the read engine autocommits on
    PostgreSQL, where a server-side cursor needs a transaction)."""
    key = tuple_(USAGE_EVENTS.c.stream_id, USAGE_EVENTS.c.event_id)
    query = candidate_query(rules, owners).order_by(
        USAGE_EVENTS.c.stream_id, USAGE_EVENTS.c.event_id
    )
    after: tuple[Any, Any] | None = None
    while True:
        page = query if after is None else query.where(key > tuple_(*map(literal, after)))
        rows = db.execute(page.limit(SCAN_CHUNK)).all()
        yield from in_filter(rows, rules)
        if len(rows) < SCAN_CHUNK:
            return
        after = (rows[-1].stream_id, rows[-1].event_id)


def in_filter(rows: Iterable[Any], rules: RepriceFilter) -> Iterator[Any]:
    """The rows the payload-level filters keep: the provider, and stated costs."""
    provider = rules.provider.lower() if rules.provider else None
    for row in rows:
        payload = row.payload
        if provider is not None and str(payload.get("provider") or "").lower() != provider:
            continue
        if not rules.include_stated and payload.get("cost_usd") is not None:
            continue
        yield row


class CallRepricer:
    """A stored call's price under the current rules: `Ingestor.cost_nano`'s arithmetic on
    the stored row (the payload keeps every field a price depends on)."""

    def __init__(self, book: PriceBook, credit_usd: Decimal) -> None:
        self.book = book
        self.credit_usd = credit_usd

    def reprice(self, row: Any) -> tuple[int | None, int | None]:
        payload = row.payload
        input_tokens = payload.get("input_tokens", 0)
        rates = self.book.rates_for(row.model, payload.get("provider"), input_tokens, row.time)
        if rates is None:
            return None, None
        usd = rates.cost(
            CallTokens(
                input_tokens,
                payload.get("output_tokens", 0),
                payload.get("cache_read_tokens", 0),
                payload.get("cache_write_tokens", 0),
            )
        )
        assert rates.source is not None
        return usd_to_nano_credits(usd, self.credit_usd), rates.source.id


@dataclass
class StreamChange:
    base_delta: int = 0
    unpriced_delta: int = 0
    calls: int = 0


@dataclass
class Plan:
    calls_seen: int = 0
    calls_changed: int = 0
    calls_cost_changed: int = 0
    newly_priced: int = 0
    newly_unpriced: int = 0
    base_before_nano: int = 0
    base_after_nano: int = 0
    charged_before_nano: int = 0
    charged_after_nano: int = 0
    tasks_changed: int = 0
    streams: dict[uuid.UUID, StreamChange] = field(default_factory=dict)
    # Work order: (scope, task id, stream id) of the changed streams, a task's streams together.
    order: list[tuple[str, str, uuid.UUID]] = field(default_factory=list)
    by_model: dict[str, list[int]] = field(default_factory=dict)  # [calls, Δ nano]
    by_user: dict[str, list[int]] = field(default_factory=dict)
    by_month: dict[str, list[int]] = field(default_factory=dict)

    @property
    def streams_changed(self) -> int:
        return len(self.streams)

    def counts(self) -> dict[str, Any]:
        def table(rows: dict[str, list[int]]) -> list[dict[str, Any]]:
            return [
                {"key": key, "calls": calls, "delta_nano": delta}
                for key, (calls, delta) in sorted(rows.items())
            ]

        return {
            "calls_seen": self.calls_seen,
            "calls_changed": self.calls_changed,
            "calls_cost_changed": self.calls_cost_changed,
            "newly_priced": self.newly_priced,
            "newly_unpriced": self.newly_unpriced,
            "streams_changed": self.streams_changed,
            "tasks_changed": self.tasks_changed,
            "base_before_nano": self.base_before_nano,
            "base_after_nano": self.base_after_nano,
            "charged_before_nano": self.charged_before_nano,
            "charged_after_nano": self.charged_after_nano,
            "by_model": table(self.by_model),
            "by_user": table(self.by_user),
            "by_month": table(self.by_month),
        }


def _bump(into: dict[str, list[int]], key: str, delta: int) -> None:
    entry = into.setdefault(key, [0, 0])
    entry[0] += 1
    entry[1] += delta


def plan(
    db: Session,
    rules: RepriceFilter,
    owners: Owners,
    repricer: CallRepricer,
    default_rate: Decimal,
) -> Plan:
    """Scan the calls in range and say what re-pricing them would change."""
    result = Plan()
    for row in candidate_events(db, rules, owners):
        new_cost, new_source = repricer.reprice(row)
        result.calls_seen += 1
        result.base_before_nano += row.cost_nano or 0
        result.base_after_nano += new_cost or 0
        if (new_cost, new_source) == (row.cost_nano, row.price_source_id):
            continue
        result.calls_changed += 1
        change = result.streams.setdefault(row.stream_id, StreamChange())
        change.calls += 1
        delta = (new_cost or 0) - (row.cost_nano or 0)
        change.base_delta += delta
        if (row.cost_nano is None) != (new_cost is None):
            change.unpriced_delta += 1 if new_cost is None else -1
            if new_cost is None:
                result.newly_unpriced += 1
            else:
                result.newly_priced += 1
        if new_cost != row.cost_nano:
            result.calls_cost_changed += 1
            _bump(result.by_model, row.model or "(none)", delta)
            _bump(result.by_month, row.time.strftime("%Y-%m"), delta)
    _stream_figures(db, result, default_rate)
    return result


def _stream_figures(db: Session, result: Plan, default_rate: Decimal) -> None:
    """The changed streams' owners, tasks and charged credits (BYOK: base × rate)."""
    emails = {user_id: email for user_id, email in db.execute(select(USERS.c.id, USERS.c.email))}
    tasks: set[tuple[str, str]] = set()
    ids = sorted(result.streams)
    columns = (
        STREAMS.c.stream_id,
        STREAMS.c.scope,
        STREAMS.c.task_id,
        STREAMS.c.status,
        STREAMS.c.owner_user_id,
        STREAMS.c.is_byok,
        STREAMS.c.neo_cost_rate,
        STREAMS.c.base_nano,
        STREAMS.c.neo_credits_nano,
    )
    for start in range(0, len(ids), 1_000):
        chunk = ids[start : start + 1_000]
        for row in db.execute(select(*columns).where(STREAMS.c.stream_id.in_(chunk))):
            change = result.streams[row.stream_id]
            base_after = row.base_nano + change.base_delta
            if row.is_byok:
                rate = row.neo_cost_rate if row.neo_cost_rate is not None else default_rate
                charged_after = byok_charge_nano(base_after, rate)
            else:
                charged_after = base_after
            result.charged_before_nano += row.neo_credits_nano
            result.charged_after_nano += charged_after
            if change.base_delta:
                owner = emails.get(row.owner_user_id, "(no owner yet)")
                entry = result.by_user.setdefault(owner, [0, 0])
                entry[0] += change.calls
                entry[1] += change.base_delta
            if row.scope is not None and row.status is not None:
                tasks.add((row.scope, row.task_id))
            result.order.append((row.scope or "", row.task_id, row.stream_id))
    result.order.sort()
    result.tasks_changed = len(tasks)
