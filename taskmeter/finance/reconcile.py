"""Reconciliation: a provider's cost report beside taskmeter's prices of the same calls.

    CostReport ─┐
                ├─ reconcile ─▶ [Line] per (UTC day, model), then one per day ("day total")
    store ─ taskmeter_costs ─┘   (llm.call cost_nano summed per UTC day, model, stream BYOK)

taskmeter's side is the sum of `usage_events.cost_nano` of `llm.call` events (each call's
price, fixed when it landed), in USD (× credit_usd / 1e9), per UTC day of the call's `time`,
lower-cased model and the BYOK flag of its stream. BYOK calls ran on the user's own provider
key, so the operator's bill does not hold them: the difference and ratio compare the provider
with taskmeter's non-BYOK figure; the BYOK figure is shown beside it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, or_, select
from sqlalchemy.orm import Session

from taskmeter.finance.reports import DAY, CostReport, projects
from taskmeter.store.tables import STREAMS, USAGE_EVENTS

__all__ = ["DAY_TOTAL", "Line", "TaskmeterCost", "reconcile", "taskmeter_costs"]

NANO = Decimal(10) ** 9
DAY_TOTAL = "(day total)"
ALL_MODELS = "(all models)"


@dataclass(frozen=True)
class TaskmeterCost:
    day: date
    model: str | None
    byok: bool
    # Whether the calls named their provider (else only their model says whose they are).
    stated: bool
    calls: int
    cost_nano: int


def _day_of(db: Session) -> ColumnElement[Any]:
    """The UTC calendar day of an event's `time`, as 'YYYY-MM-DD' text, on either store."""
    if db.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", USAGE_EVENTS.c.time), "YYYY-MM-DD")
    # SQLite keeps UTC instants as fixed-width text 'YYYY-MM-DD HH:MM:SS…' (store/types.py).
    return func.substr(USAGE_EVENTS.c.time, 1, 10)


def taskmeter_costs(
    db: Session,
    start: date,
    end: date,
    *,
    provider: str | None = None,
    scope: str | None = None,
) -> list[TaskmeterCost]:
    """Priced `llm.call` figures per UTC day in [start, end), lower-cased model and BYOK.

    `provider`: only calls that state this provider or none (a call that names no provider
    is known by its model alone). `scope`: only calls of streams paid by this account.
    """
    day = _day_of(db).label("day")
    model = func.lower(USAGE_EVENTS.c.model).label("model")
    stated = func.lower(cast(USAGE_EVENTS.c.payload["provider"].as_string(), String))
    named = stated.is_not(None).label("named")
    # Summed per stream first, then joined for the BYOK flag: the join meets a row per
    # stream, day and model instead of one per call (and a plan misled by stale statistics
    # into a nested loop stays cheap).
    per_stream = (
        select(
            USAGE_EVENTS.c.stream_id,
            day,
            model,
            named,
            func.count().label("calls"),
            func.coalesce(func.sum(USAGE_EVENTS.c.cost_nano), 0).label("cost_nano"),
        )
        .where(
            USAGE_EVENTS.c.type == "llm.call",
            USAGE_EVENTS.c.time >= datetime.combine(start, time(), UTC),
            USAGE_EVENTS.c.time < datetime.combine(end, time(), UTC),
        )
        .group_by(USAGE_EVENTS.c.stream_id, day, model, named)
    )
    if provider is not None:
        per_stream = per_stream.where(or_(stated.is_(None), stated == provider.lower()))
    calls = per_stream.subquery("calls")
    query = (
        select(
            calls.c.day,
            calls.c.model,
            STREAMS.c.is_byok,
            calls.c.named,
            func.sum(calls.c.calls).label("calls"),
            func.sum(calls.c.cost_nano).label("cost_nano"),
        )
        .join(STREAMS, STREAMS.c.stream_id == calls.c.stream_id)
        .group_by(calls.c.day, calls.c.model, STREAMS.c.is_byok, calls.c.named)
    )
    if scope is not None:
        query = query.where(STREAMS.c.scope == scope)
    return [
        TaskmeterCost(
            date.fromisoformat(row.day),
            row.model,
            bool(row.is_byok),
            bool(row.named),
            int(row.calls),
            int(row.cost_nano),
        )
        for row in db.execute(query)
    ]


@dataclass(frozen=True)
class Line:
    """One row of the reconciliation: a (day, model) pair, or a day's total."""

    day: date
    model: str
    projects: tuple[str, ...]
    provider_usd: Decimal
    taskmeter_usd: Decimal  # non-BYOK calls: what the operator's provider key paid
    byok_usd: Decimal
    calls: int
    flagged: bool

    @property
    def difference_usd(self) -> Decimal:
        """Provider minus taskmeter (non-BYOK): positive when the bill is higher."""
        return self.provider_usd - self.taskmeter_usd

    @property
    def ratio(self) -> Decimal | None:
        """taskmeter (non-BYOK) / provider; None when the provider billed nothing."""
        if self.provider_usd == 0:
            return None
        return self.taskmeter_usd / self.provider_usd

    @property
    def is_total(self) -> bool:
        return self.model == DAY_TOTAL

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "day": self.day.isoformat(),
            "model": None if self.is_total else self.model,
            "day_total": self.is_total,
            "projects": list(self.projects),
            "provider_usd": _plain(self.provider_usd),
            "taskmeter_usd": _plain(self.taskmeter_usd),
            "taskmeter_byok_usd": _plain(self.byok_usd),
            "calls": self.calls,
            "difference_usd": _plain(self.difference_usd),
            "ratio": None if ratio is None else _plain(round(ratio, 6)),
            "flagged": self.flagged,
        }


def _plain(value: Decimal) -> str:
    """A Decimal as plain text, exact, without exponent or trailing zeros."""
    text = f"{value.normalize():f}"
    return "0" if text in ("-0", "0") else text


def beyond(provider: Decimal, taskmeter: Decimal, tolerance: Decimal) -> bool:
    """Whether the two figures differ by more than `tolerance` (a fraction) of the bill."""
    return abs(provider - taskmeter) > tolerance * abs(provider)


def reconcile(
    report: CostReport,
    costs: list[TaskmeterCost],
    *,
    credit_usd: Decimal,
    tolerance: Decimal,
) -> list[Line]:
    """The report's (day, model) figures beside taskmeter's, each day closed by its total.

    A report without a model breakdown compares day totals only (its rows say "all models").
    Models taskmeter priced that the report does not list on that day get a row with a
    provider figure of 0, so a call the provider did not bill still shows. A call that named
    no provider counts only if the report lists its model on some day (by model alone it
    is this provider's); on a report of day totals it counts.
    """
    by_model = report.by_model
    listed = {row.model for row in report.rows}
    provider: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    project_ids: dict[tuple[date, str], set[str]] = defaultdict(set)
    for row in report.rows:
        key = (row.day, (row.model or ALL_MODELS) if by_model else ALL_MODELS)
        provider[key] += row.usd
        if row.project is not None:
            project_ids[key].add(row.project)
    ours: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for cost in costs:
        if cost.day not in report.days or (
            by_model and not cost.stated and cost.model not in listed
        ):
            continue
        key = (cost.day, (cost.model or "(no model)") if by_model else ALL_MODELS)
        figures = ours[key]
        figures[1 if cost.byok else 0] += cost.cost_nano
        figures[2] += cost.calls
    lines: list[Line] = []
    for day in sorted(report.days):
        keys = sorted({k for k in (*provider, *ours) if k[0] == day}, key=lambda k: k[1])
        day_lines = []
        for key in keys:
            billed = provider.get(key, Decimal(0))
            nano, byok_nano, calls = ours.get(key, (0, 0, 0))
            priced = nano * credit_usd / NANO
            day_lines.append(
                Line(
                    day,
                    key[1],
                    tuple(sorted(project_ids.get(key, ()))),
                    billed,
                    priced,
                    byok_nano * credit_usd / NANO,
                    calls,
                    beyond(billed, priced, tolerance),
                )
            )
        billed = sum((line.provider_usd for line in day_lines), Decimal(0))
        priced = sum((line.taskmeter_usd for line in day_lines), Decimal(0))
        lines.extend(day_lines)
        lines.append(
            Line(
                day,
                DAY_TOTAL,
                tuple(projects(r for r in report.rows if r.day == day)),
                billed,
                priced,
                sum((line.byok_usd for line in day_lines), Decimal(0)),
                sum(line.calls for line in day_lines),
                beyond(billed, priced, tolerance),
            )
        )
    return lines


def report_range(report: CostReport) -> tuple[date, date]:
    """The report's days as a half-open range [first, last + 1 day)."""
    return min(report.days), max(report.days) + DAY
