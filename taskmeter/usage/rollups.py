"""Additive rollups the summary reads: a change to a stream or task is a delta.

When a row changes, its old contribution is subtracted and its new one added, so the rollups
always equal a GROUP BY over the rows, without one ever being run. Three tiers are kept:
15-minute buckets by owner and model (exact edges, any time zone); calendar months by model,
and separately by owner (a team's year is then a few hundred rows); and hours per scope (the
per-period series).
Upserts are sorted by key (concurrent transactions then lock rollup rows in one order and cannot
deadlock) and issued last in the transaction (hot rows stay locked briefly).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from taskmeter.store.bulk import insert_sql, rows_json, run
from taskmeter.store.tables import (
    STREAM_FIGURES,
    AnyStream,
    OwnerMonth,
    ScopeHour,
    ScopeTotal,
    StreamRollup,
    StreamRollupMonth,
    TaskRollup,
    TaskRollupMonth,
)
from taskmeter.usage.figures import stream_execution_ms, stream_model

__all__ = [
    "BUCKET_S",
    "STREAM_VALUES",
    "TASK_KEY_COLUMNS",
    "Contribution",
    "RollupDeltas",
    "bucket_of",
    "hour_of",
    "month_of",
    "rebuild_coarse_tiers",
    "stream_contribution",
    "task_contribution",
]

BUCKET_S = 900
STREAM_KEY = ("scope", "bucket", "owner_user_id", "model", "is_byok", "finished")
STREAM_VALUES = STREAM_FIGURES
TASK_KEY = ("scope", "bucket", "owner_user_id", "model", "status", "is_byok")
TASK_VALUES = ("tasks",)
SCOPE_KEY = ("scope",)
_STREAM_SCOPE = STREAM_KEY.index("scope")
_STREAM_FINISHED = STREAM_KEY.index("finished")
_TASK_SCOPE = TASK_KEY.index("scope")
SCOPE_VALUES = ("finished_streams", "tasks")
HOUR_KEY = ("scope", "bucket")
HOUR_VALUES = ("neo_credits_nano", "tasks")
HOUR_BUCKETS = 4
_STREAM_BUCKET = STREAM_KEY.index("bucket")
_TASK_BUCKET = TASK_KEY.index("bucket")
_STREAM_NEO = STREAM_VALUES.index("neo_credits_nano")
_STREAM_OWNER = STREAM_KEY.index("owner_user_id")
_TASK_OWNER = TASK_KEY.index("owner_user_id")
# The monthly tiers drop the owner; `owner_months` keeps what the summary shows per owner.
STREAM_MONTH_KEY = tuple(k for k in STREAM_KEY if k != "owner_user_id")
TASK_MONTH_KEY = tuple(k for k in TASK_KEY if k != "owner_user_id")
OWNER_MONTH_KEY = ("scope", "bucket", "owner_user_id")
OWNER_MONTH_VALUES = ("neo_credits_nano", "tasks")

Contribution = tuple[tuple[Any, ...], tuple[int, ...]]


def bucket_of(moment: datetime) -> int:
    return int(moment.timestamp()) // BUCKET_S


def hour_of(bucket: int) -> int:
    """The first 15-minute bucket of the UTC hour holding `bucket`."""
    return bucket - bucket % HOUR_BUCKETS


@functools.lru_cache(maxsize=4096)
def _month_start(days: int) -> int:
    day = datetime.fromtimestamp(days * 86_400, UTC)
    return bucket_of(day.replace(day=1))


def month_of(bucket: int) -> int:
    """The first 15-minute bucket of the UTC month holding `bucket`."""
    return _month_start(bucket * BUCKET_S // 86_400)


def _monthly(key: tuple[Any, ...], bucket_at: int, owner_at: int, month: int) -> tuple[Any, ...]:
    """A 15-minute key as its month's key: the bucket moved to `month`, the owner dropped."""
    return tuple(month if i == bucket_at else value for i, value in enumerate(key) if i != owner_at)


def stream_contribution(stream: AnyStream) -> Contribution | None:
    """What a started stream adds to the stream rollups (None before it has an owner)."""
    if stream.scope is None or stream.created_at is None or stream.owner_user_id is None:
        return None
    finished = stream.status is not None and stream.finished_at is not None
    key = (
        stream.scope,
        bucket_of(stream.created_at),
        stream.owner_user_id,
        stream_model(stream),
        stream.is_byok,
        finished,
    )
    values = (
        1,
        stream.neo_credits_nano,
        stream.base_nano,
        stream.tool_calls,
        stream.input_tokens,
        stream.output_tokens,
        stream.step_count,
        stream.agent_triggers,
        stream_execution_ms(stream) if finished else 0,
    )
    return key, values


# The task row columns `task_contribution` reads.
TASK_KEY_COLUMNS = ("created_at", "owner_user_id", "model", "status", "is_byok")


def task_contribution(scope: str, figures: dict[str, Any] | None) -> Contribution | None:
    if figures is None:
        return None
    key = (
        scope,
        bucket_of(figures["created_at"]),
        figures["owner_user_id"],
        figures["model"],
        figures["status"],
        figures["is_byok"],
    )
    return key, (1,)


class RollupDeltas:
    """Collects before/after contributions within one transaction, then writes the sums.

    `coarse=False` keeps the 15-minute tier and the scope totals only: for bulk loaders,
    which then call `rebuild_coarse_tiers` once instead of upserting months and hours per
    chunk.
    """

    def __init__(self, *, coarse: bool = True) -> None:
        self.coarse = coarse
        self._streams: dict[tuple[Any, ...], list[int]] = {}
        self._tasks: dict[tuple[Any, ...], list[int]] = {}
        self._scopes: dict[tuple[Any, ...], list[int]] = {}
        self._stream_months: dict[tuple[Any, ...], list[int]] = {}
        self._task_months: dict[tuple[Any, ...], list[int]] = {}
        self._owner_months: dict[tuple[Any, ...], list[int]] = {}
        self._hours: dict[tuple[Any, ...], list[int]] = {}

    @staticmethod
    def _add(into: dict[tuple[Any, ...], list[int]], item: Contribution | None, sign: int) -> None:
        if item is None:
            return
        key, values = item
        current = into.setdefault(key, [0] * len(values))
        for i, value in enumerate(values):
            current[i] += sign * value

    def stream_changed(self, before: Contribution | None, after: Contribution | None) -> None:
        if before != after:
            for item, sign in ((before, -1), (after, +1)):
                if item is None:
                    continue
                key, values = item
                bucket = key[_STREAM_BUCKET]
                self._add(self._streams, item, sign)
                finished = key[_STREAM_FINISHED]  # what the lists count and the series shows
                if finished:
                    self._add(self._scopes, ((key[_STREAM_SCOPE],), (1, 0)), sign)
                if not self.coarse:
                    continue
                month = month_of(bucket)
                monthly = _monthly(key, _STREAM_BUCKET, _STREAM_OWNER, month)
                self._add(self._stream_months, (monthly, values), sign)
                if finished:
                    scope, neo = key[_STREAM_SCOPE], values[_STREAM_NEO]
                    self._add(self._hours, ((scope, hour_of(bucket)), (neo, 0)), sign)
                    owner = (scope, month, key[_STREAM_OWNER])
                    self._add(self._owner_months, (owner, (neo, 0)), sign)

    def task_changed(self, before: Contribution | None, after: Contribution | None) -> None:
        if before != after:
            for item, sign in ((before, -1), (after, +1)):
                if item is None:
                    continue
                key, values = item
                bucket = key[_TASK_BUCKET]
                self._add(self._tasks, item, sign)
                scope = key[_TASK_SCOPE]
                self._add(self._scopes, ((scope,), (0, 1)), sign)
                if not self.coarse:
                    continue
                month = month_of(bucket)
                monthly = _monthly(key, _TASK_BUCKET, _TASK_OWNER, month)
                self._add(self._task_months, (monthly, values), sign)
                self._add(self._hours, ((scope, hour_of(bucket)), (0, 1)), sign)
                owner = (scope, month, key[_TASK_OWNER])
                self._add(self._owner_months, (owner, (0, 1)), sign)

    def write(self, db: Session) -> None:
        # Coarser tiers after finer ones: the later a row in this order, the more writers
        # share it, so the hottest rows are locked last and held the shortest; the scope's
        # totals row, which every writer of the scope touches, last of all.
        tiers: list[tuple[Any, tuple[str, ...], tuple[str, ...], dict[Any, list[int]]]] = [
            (StreamRollup, STREAM_KEY, STREAM_VALUES, self._streams),
            (TaskRollup, TASK_KEY, TASK_VALUES, self._tasks),
            (ScopeHour, HOUR_KEY, HOUR_VALUES, self._hours),
            (OwnerMonth, OWNER_MONTH_KEY, OWNER_MONTH_VALUES, self._owner_months),
            (StreamRollupMonth, STREAM_MONTH_KEY, STREAM_VALUES, self._stream_months),
            (TaskRollupMonth, TASK_MONTH_KEY, TASK_VALUES, self._task_months),
            (ScopeTotal, SCOPE_KEY, SCOPE_VALUES, self._scopes),
        ]
        changes: list[Tier] = [(t.__table__, k, v, d.items()) for t, k, v, d in tiers]
        if db.get_bind().dialect.name == "postgresql":
            _upsert_all_pg(db, changes)
        else:
            for tier in changes:
                _upsert_sqlite(db, tier)
        for *_, deltas in tiers:
            deltas.clear()


def _rows(
    key_names: tuple[str, ...],
    value_names: tuple[str, ...],
    deltas: Iterable[tuple[tuple[Any, ...], list[int]]],
) -> list[dict[str, Any]]:
    """A tier's rows that change something, sorted by key: the order they are locked in."""
    names = (*key_names, *value_names)
    changed = sorted(
        ((key, values) for key, values in deltas if any(values)),
        key=lambda kv: tuple(map(str, kv[0])),
    )
    return [dict(zip(names, (*key, *values), strict=True)) for key, values in changed]


Tier = tuple[Table, tuple[str, ...], tuple[str, ...], Iterable[tuple[tuple[Any, ...], list[int]]]]


def _upsert_all_pg(db: Session, tiers: list[Tier]) -> None:
    """Every tier's upsert in one PostgreSQL statement, each tier's rows passed as JSON.

    Seven executemany statements a batch cost a statement per row, each parsed and planned by
    PostgreSQL, and a round trip per tier while the rows written so far, which concurrent
    batches of one scope share, stayed locked. Within one statement the tiers are written in
    a fixed order, so every transaction locks rollup rows in the same order.
    """
    params: dict[str, str] = {}
    for n, (_table, key_names, value_names, deltas) in enumerate(tiers):
        rows = _rows(key_names, value_names, deltas)
        if rows:
            params[f"t{n}"] = rows_json(rows)
    if params:
        shape = tuple((t, k, v) for n, (t, k, v, _) in enumerate(tiers) if f"t{n}" in params)
        run(db, _pg_upsert_all(shape, tuple(params)), params)


@functools.cache
def _pg_upsert_all(
    tiers: tuple[tuple[Table, tuple[str, ...], tuple[str, ...]], ...], parameters: tuple[str, ...]
) -> str:
    parts = [
        f"{p} AS ({insert_sql(table, (*keys, *values), conflict=keys, add=True, parameter=p)})"
        for p, (table, keys, values) in zip(parameters, tiers, strict=True)
    ]
    return f"WITH {', '.join(parts)} SELECT 1"


def _upsert_sqlite(db: Session, tier: Tier) -> None:
    table, key_names, value_names, deltas = tier
    rows = _rows(key_names, value_names, deltas)
    if rows:
        db.execute(_sqlite_upsert(table, key_names, value_names), rows)


@functools.cache
def _sqlite_upsert(table: Table, key_names: tuple[str, ...], value_names: tuple[str, ...]) -> Any:
    """The tier's `INSERT … ON CONFLICT DO UPDATE SET v = v + excluded.v`, built once: building
    it (its `excluded` alias above all) cost more than executing it."""
    statement = sqlite_insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(key_names),
        set_={name: table.c[name] + statement.excluded[name] for name in value_names},
    )


def _month_sql(postgres: bool) -> str:
    """SQL for the first 15-minute bucket of the UTC month holding `bucket` (`month_of`)."""
    if postgres:
        return (
            f"(extract(epoch FROM date_trunc('month', to_timestamp(bucket * {BUCKET_S}) "
            f"AT TIME ZONE 'UTC'))::bigint / {BUCKET_S})"
        )
    return (
        f"(CAST(strftime('%s', bucket * {BUCKET_S}, 'unixepoch', 'start of month') "
        f"AS INTEGER) / {BUCKET_S})"
    )


def rebuild_coarse_tiers(db: Session) -> None:
    """Rebuild the monthly rollups and the hourly series from the 15-minute rollups, which
    always equal a GROUP BY over the rows (for bulk loads; the same SQL as migration 0004)."""
    month = _month_sql(db.get_bind().dialect.name == "postgresql")
    figures = ", ".join(STREAM_VALUES)
    sums = ", ".join(f"sum({name})" for name in STREAM_VALUES)
    stream_key = "scope, {bucket}, model, is_byok, finished"
    task_key = "scope, {bucket}, model, status, is_byok"
    hour = f"bucket - bucket % {HOUR_BUCKETS}"
    # Built from this module's constants only (hence the S608 exemptions).
    statements = [
        "DELETE FROM stream_rollups_monthly",
        "DELETE FROM task_rollups_monthly",
        "DELETE FROM owner_months",
        "DELETE FROM scope_hours",
        f"INSERT INTO stream_rollups_monthly ({stream_key.format(bucket='bucket')}, {figures}) "  # noqa: S608
        f"SELECT {stream_key.format(bucket=month)}, {sums} FROM stream_rollups "
        f"GROUP BY {stream_key.format(bucket=month)}",
        f"INSERT INTO task_rollups_monthly ({task_key.format(bucket='bucket')}, tasks) "  # noqa: S608
        f"SELECT {task_key.format(bucket=month)}, sum(tasks) FROM task_rollups "
        f"GROUP BY {task_key.format(bucket=month)}",
        _two_sources("owner_months", "owner_user_id", month),
        _two_sources("scope_hours", None, hour),
    ]
    for statement in statements:
        db.execute(text(statement))


def _two_sources(table: str, key: str | None, bucket: str) -> str:
    """INSERT … SELECT of finished streams' credits and tasks created per (scope, bucket[, key])."""
    extra = f", {key}" if key else ""
    return (
        f"INSERT INTO {table} (scope, bucket{extra}, neo_credits_nano, tasks) "  # noqa: S608
        f"SELECT scope, unit{extra}, sum(neo), sum(tasks) FROM ("
        f"  SELECT scope, {bucket} AS unit{extra}, neo_credits_nano AS neo, 0 AS tasks"
        "   FROM stream_rollups WHERE finished"
        f"  UNION ALL SELECT scope, {bucket}{extra}, 0, tasks FROM task_rollups"
        f") AS counted GROUP BY scope, unit{extra}"
    )
