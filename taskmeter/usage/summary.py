"""`GET /api/v1/usage/summary`: totals, breakdowns, periods and the credit account of a scope.

The window [from, to) is read coarse to fine: whole UTC months from the monthly rollups, the
whole 15-minute buckets left at either end from the 15-minute rollups, and the partial buckets at
the very edges from the rows themselves. Every figure is exact for any `from`/`to`, while the
work stays proportional to the number of months and buckets, never to the number of streams.
Periods are cut in `tz`: the hourly series (or, for zones with :30/:45 offsets, the 15-minute
rollups) is grouped in SQL by the largest unit that divides every UTC offset the zone uses in
the window (a day for UTC, an hour for most zones, 15 minutes at worst), then assigned to local
days, ISO weeks or months.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session

from taskmeter.errors import BadRequest
from taskmeter.identity.principal import Scope
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.engine import one_snapshot
from taskmeter.store.tables import (
    OwnerMonth,
    ScopeHour,
    Stream,
    StreamRollup,
    StreamRollupMonth,
    Task,
    TaskRollup,
    TaskRollupMonth,
    User,
)
from taskmeter.timeutil import iso_z, utc_now
from taskmeter.usage.account import credit_account
from taskmeter.usage.buckets import (
    Span,
    bucket_bounds,
    bucket_time,
    grain_buckets,
    in_spans,
    next_hour,
    next_month,
    next_period,
    period_start,
    split_spans,
)
from taskmeter.usage.params import SummaryQuery, Window
from taskmeter.usage.projects import by_project
from taskmeter.usage.repository import project_id_in_scope
from taskmeter.usage.rollups import (
    HOUR_BUCKETS,
    STREAM_VALUES,
    TASK_KEY_COLUMNS,
    hour_of,
    month_of,
    stream_contribution,
    task_contribution,
)

__all__ = ["MAX_PERIODS", "summarise"]

MAX_PERIODS = 5000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_z(moment)


@dataclass
class Totals:
    streams: int = 0
    neo_credits: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    steps: int = 0
    agent_triggers: int = 0
    execution_ms: int = 0
    byok_streams: int = 0
    byok_base: int = 0
    byok_neo: int = 0
    tasks: int = 0
    byok_tasks: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    owners: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    periods: dict[date, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def model(self, name: str) -> dict[str, Any]:
        return self.models.setdefault(
            name,
            {
                "tasks": 0,
                "streams": 0,
                "neo_credits": 0,
                "llm_cost": None,
                "tool_calls": 0,
                "input_tokens": 0,
                "output_tokens": 0,
            },
        )

    def add_streams(self, owner: int | None, model: str, is_byok: bool, v: tuple[int, ...]) -> None:
        if not any(v):
            return  # a rollup row whose contributions have all moved elsewhere
        streams, neo, base, tools, inp, out, steps, agents, execution = v
        self.streams += streams
        self.neo_credits += neo
        self.tool_calls += tools
        self.input_tokens += inp
        self.output_tokens += out
        self.steps += steps
        self.agent_triggers += agents
        self.execution_ms += execution
        entry = self.model(model)
        entry["streams"] += streams
        entry["neo_credits"] += neo
        entry["tool_calls"] += tools
        entry["input_tokens"] += inp
        entry["output_tokens"] += out
        if is_byok:
            self.byok_streams += streams
            self.byok_base += base
            self.byok_neo += neo
            entry["llm_cost"] = (entry["llm_cost"] or 0) + base
        if owner is not None:  # None: a monthly row; owners come from `owner_months`
            self.owners[owner][0] += neo

    def add_tasks(self, owner: int | None, model: str, status: str, is_byok: bool, n: int) -> None:
        if not n:
            return
        self.tasks += n
        self.by_status[status] += n
        self.model(model)["tasks"] += n
        if owner is not None:
            self.owners[owner][1] += n
        if is_byok:
            self.byok_tasks += n


def _owner_first(row: Any, monthly: bool) -> tuple[int | None, tuple[Any, ...]]:
    """A breakdown row as (owner, the rest); monthly rows carry no owner."""
    return (None, tuple(row)) if monthly else (row[0], tuple(row[1:]))


class _Summary:
    def __init__(self, db: Session, scope: Scope, query: SummaryQuery) -> None:
        self.db = db
        self.scope = scope
        self.query = query
        self.totals = Totals()
        # With a `project` filter: its id in the scope (None: no such project, nothing counts).
        self.project_id: int | None = None

    def _period_of(self, moment: datetime) -> date:
        assert self.query.group_by is not None
        return period_start(moment.astimezone(self.query.tz).date(), self.query.group_by)

    def _totals(self, spans: list[Span], *, monthly: bool) -> None:
        """Add the breakdowns of one rollup tier over the given spans: the 15-minute rows by
        owner and model, or the monthly rows by model plus `owner_months` by owner."""
        if not spans:
            return
        streams: Any = StreamRollupMonth if monthly else StreamRollup
        tasks: Any = TaskRollupMonth if monthly else TaskRollup
        owner = [] if monthly else [streams.owner_user_id]
        sums = [func.sum(getattr(streams, c)) for c in STREAM_VALUES]
        # The same columns, in the same order, as a stream's contribution (Totals reads them).
        for row in self.db.execute(
            select(*owner, streams.model, streams.is_byok, *sums)
            .where(
                streams.scope == self.scope.key,
                in_spans(streams.bucket, spans),
                streams.finished.is_(True),
            )
            .group_by(*owner, streams.model, streams.is_byok)
        ):
            who, (model, is_byok, *values) = _owner_first(row, monthly)
            self.totals.add_streams(who, model, is_byok, tuple(int(v or 0) for v in values))
        owner = [] if monthly else [tasks.owner_user_id]
        for row in self.db.execute(
            select(*owner, tasks.model, tasks.status, tasks.is_byok, func.sum(tasks.tasks))
            .where(tasks.scope == self.scope.key, in_spans(tasks.bucket, spans))
            .group_by(*owner, tasks.model, tasks.status, tasks.is_byok)
        ):
            who, (model, status, is_byok, n) = _owner_first(row, monthly)
            self.totals.add_tasks(who, model, status, is_byok, int(n or 0))
        if not monthly:
            return
        for who, neo, n in self.db.execute(
            select(
                OwnerMonth.owner_user_id,
                func.sum(OwnerMonth.neo_credits_nano),
                func.sum(OwnerMonth.tasks),
            )
            .where(OwnerMonth.scope == self.scope.key, in_spans(OwnerMonth.bucket, spans))
            .group_by(OwnerMonth.owner_user_id)
        ):
            self.totals.owners[who][0] += int(neo or 0)
            self.totals.owners[who][1] += int(n or 0)

    def _series(self, spans: list[Span], grain: int, hourly: bool) -> None:
        """Add finished-stream credits and task counts per unit of `grain` buckets."""
        if not spans:
            return
        if hourly:
            sources: list[tuple[Any, Any, list[ColumnElement[bool]]]] = [
                (ScopeHour, [ScopeHour.neo_credits_nano, ScopeHour.tasks], [])
            ]
        else:
            sources = [
                (StreamRollup, [StreamRollup.neo_credits_nano], [StreamRollup.finished.is_(True)]),
                (TaskRollup, [TaskRollup.tasks], []),
            ]
        slots = 0
        for table, columns, extra in sources:
            # Floor division on integers: `bucket // grain` is integer division on both stores
            # (buckets are positive: ingestion keeps times after 2000).
            unit = table.bucket // grain if grain > 1 else table.bucket
            for unit_value, *amounts in self.db.execute(
                select(unit, *(func.sum(c) for c in columns))
                .where(table.scope == self.scope.key, in_spans(table.bucket, spans), *extra)
                .group_by(unit)
            ):
                period = self.totals.periods[self._period_of(bucket_time(int(unit_value) * grain))]
                for i, amount in enumerate(amounts):
                    period[slots + i] += int(amount or 0)
            slots += len(columns)

    def _rollups(self, first: int | None, last: int | None, grain: int) -> None:
        months, fine = split_spans((first, last), month_of, next_month)
        self._totals([months] if months else [], monthly=True)
        self._totals(fine, monthly=False)
        if self.query.group_by is None:
            return
        if grain % HOUR_BUCKETS:  # a zone with :30 or :45 offsets: 15-minute rows throughout
            self._series([(first, last)], grain, hourly=False)
            return
        hours, fine = split_spans((first, last), hour_of, next_hour)
        self._series([hours] if hours else [], grain, hourly=True)
        self._series(fine, grain, hourly=False)

    def _edge_rows(self, start: datetime, end: datetime) -> None:
        """Streams and tasks created in a partial bucket at the window's edge, read exactly."""
        if start >= end:
            return
        project = [] if self.project_id is None else [Stream.project_id == self.project_id]
        for stream in self.db.scalars(
            select(Stream).where(
                Stream.scope == self.scope.key,
                Stream.status.is_not(None),
                Stream.created_at >= start,
                Stream.created_at < end,
                *project,
            )
        ):
            contribution = stream_contribution(stream)
            if contribution is None or not contribution[0][5]:
                continue
            (_, _, owner, model, is_byok, _), values = contribution
            self.totals.add_streams(owner, model, is_byok, values)
            if self.query.group_by is not None:
                assert stream.created_at is not None
                self.totals.periods[self._period_of(stream.created_at)][0] += values[1]
        for values in self.db.execute(
            select(*(getattr(Task, name) for name in TASK_KEY_COLUMNS)).where(
                Task.scope == self.scope.key,
                Task.created_at >= start,
                Task.created_at < end,
                *([] if self.project_id is None else [Task.project_id == self.project_id]),
            )
        ):
            figures = dict(zip(TASK_KEY_COLUMNS, values, strict=True))
            item = task_contribution(self.scope.key, figures)
            assert item is not None
            (_, _, owner, model, status, is_byok), _ = item
            self.totals.add_tasks(owner, model, status, is_byok, 1)
            if self.query.group_by is not None:
                self.totals.periods[self._period_of(figures["created_at"])][1] += 1

    @functools.cached_property
    def _data_span(self) -> tuple[datetime, datetime] | None:
        """The first and last bucket with finished streams: one query, only if periods need it."""
        low, high = self.db.execute(
            select(func.min(StreamRollup.bucket), func.max(StreamRollup.bucket)).where(
                StreamRollup.scope == self.scope.key, StreamRollup.finished.is_(True)
            )
        ).one()
        if low is None:
            return None
        return bucket_time(int(low)), bucket_time(int(high) + 1)

    def _periods(self, window: Window) -> list[dict[str, Any]]:
        assert self.query.group_by is not None
        span = self._data_span
        start = window.start or (span[0] if span else None)
        end = window.end or max(utc_now(), span[1] if span else utc_now())
        if start is None or start >= end:
            return []
        group_by = self.query.group_by
        first = self._period_of(start)
        last = self._period_of(end - timedelta(microseconds=1))
        periods = []
        current = first
        while current <= last:
            periods.append(current)
            if len(periods) > MAX_PERIODS:
                raise BadRequest(
                    f"the range holds more than {MAX_PERIODS} {group_by} periods; "
                    "narrow from/to or group by a longer period"
                )
            current = next_period(current, group_by)
        return [
            {
                "date": p.isoformat(),
                "neo_credits": credits_from_nano(self.totals.periods[p][0]),
                "tasks": self.totals.periods[p][1],
            }
            for p in periods
        ]

    def run(self) -> dict[str, Any]:
        window = self.query.window
        if self.query.project is not None:
            # The rollups have no project: a project's figures are read from its rows (the
            # partial index on scope, project and created_at), exactly.
            self.project_id = project_id_in_scope(self.db, self.scope, self.query.project)
            if self.project_id is not None and not window.empty:
                self._edge_rows(window.start or EPOCH, window.end or FAR_FUTURE)
            return self._response(window)
        if not window.empty:
            first, last = bucket_bounds(window)
            if first is not None and last is not None and first >= last:
                assert window.start is not None and window.end is not None
                self._edge_rows(window.start, window.end)
            else:
                grain = 1
                span = self._data_span if self.query.group_by is not None else None
                if span is not None:
                    grain = grain_buckets(
                        self.query.tz,
                        max(window.start or span[0], span[0]),
                        min(window.end or span[1], span[1]),
                    )
                self._rollups(first, last, grain)
                if window.start is not None and first is not None:
                    self._edge_rows(window.start, bucket_time(first))
                if window.end is not None and last is not None:
                    self._edge_rows(bucket_time(last), window.end)
        return self._response(window)

    def _response(self, window: Window) -> dict[str, Any]:
        t = self.totals
        by_model = {
            name: {
                **entry,
                "neo_credits": credits_from_nano(entry["neo_credits"]),
                "llm_cost": None
                if entry["llm_cost"] is None
                else credits_from_nano(entry["llm_cost"]),
            }
            for name, entry in sorted(t.models.items())
        }
        body: dict[str, Any] = {
            "total_tasks": t.tasks,
            "total_neo_credits": credits_from_nano(t.neo_credits),
            "by_status": {status: n for status, n in sorted(t.by_status.items()) if n},
            "by_model": by_model,
        }
        if self.scope.is_team_admin:
            emails = (
                dict(
                    self.db.execute(
                        select(User.id, User.email).where(User.id.in_(sorted(t.owners)))
                    ).all()
                )
                if t.owners
                else {}
            )
            ranked = sorted(
                (
                    (neo, emails.get(owner, ""), tasks)
                    for owner, (neo, tasks) in t.owners.items()
                    if neo or tasks
                ),
                key=lambda e: (-e[0], e[1]),
            )
            body["by_email"] = [
                {"email": email, "neo_credits": credits_from_nano(neo), "tasks": tasks}
                for neo, email, tasks in ranked
            ]
        if self.query.group_by is not None:
            body["by_period"] = [] if window.empty else self._periods(window)
        body["byok"] = {
            "total_llm_cost": credits_from_nano(t.byok_base),
            "total_neo_cost": credits_from_nano(t.byok_neo),
            "total_streams": t.byok_streams,
            "total_tasks": t.byok_tasks,
        }
        body.update(
            total_steps=t.steps,
            total_tool_calls=t.tool_calls,
            total_agent_triggers=t.agent_triggers,
            total_execution_ms=t.execution_ms,
        )
        body["by_project"] = by_project(self.db, self.scope, window)
        body.update(credit_account(self.db, self.scope))
        return body


def summarise(db: Session, scope: Scope, query: SummaryQuery) -> dict[str, Any]:
    # One snapshot for every figure of the answer: its breakdowns add up to its totals even
    # while ingestion commits between its statements.
    one_snapshot(db)
    if db.get_bind().dialect.name == "postgresql":
        # The planner expects a group per rollup row, so with the default 4 MB it sorts a
        # large team's year on disk; with room it hashes the few hundred groups in memory
        # (EXPLAIN ANALYZE, 90,000-stream team: 76 ms -> 31 ms for the owner/model totals).
        # For this transaction only.
        db.execute(text("SET LOCAL work_mem = '32MB'"))
    return _Summary(db, scope, query).run()
