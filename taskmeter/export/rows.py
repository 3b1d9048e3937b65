"""The export's scoped reads: the list endpoints' conditions, walked in keyset chunks.

Each chunk is one query `ORDER BY created_at, id LIMIT n` after the last row of the chunk
before (the list endpoints' index, read forwards), in a read session of its own: no
connection or transaction stays open while a slow client drains the body, and memory holds
one chunk. Rows that land during an export behind its cursor are not in it; none is repeated
or skipped (docs/decisions.md "Exports").

    stream_records(store, scope, f)   one record a finished stream     (columns.STREAMS)
    task_records(store, scope, f)     one record a task                (columns.TASKS)
    call_records(store, scope, f)     one record an llm.call event     (columns.CALLS)
    stream_chunks(store, scope, f)    the raw stream rows, for FOCUS   (focus.py)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, case, func, literal, select, tuple_
from sqlalchemy.orm import Session

from taskmeter.identity.principal import Scope
from taskmeter.store import Store
from taskmeter.store.tables import PROJECTS, STREAMS, TASKS, USAGE_EVENTS, USERS
from taskmeter.usage.figures import execution_ms, rounded_mean
from taskmeter.usage.params import UsageFilters
from taskmeter.usage.repository import stream_conditions, task_conditions

__all__ = ["CHUNK", "Record", "call_records", "stream_chunks", "stream_records", "task_records"]

CHUNK = 1000
Record = tuple[Any, ...]
Conditions = Callable[[Session, Scope, UsageFilters], list[ColumnElement[bool]] | None]

_S = STREAMS.c
# What a stream record and a FOCUS group read: not the tool history and breakdowns, the
# largest values of a row.
STREAM_FIELDS = (
    _S.stream_id, _S.task_id, _S.task_title, _S.model, _S.status, _S.error_message, _S.is_byok,
    _S.created_at, _S.finished_at, _S.stated_execution_ms, _S.step_count, _S.step_latency_ms,
    _S.tool_calls, _S.tool_time_ms, _S.agent_triggers, _S.llm_calls, _S.llm_time_ms,
    _S.input_tokens, _S.output_tokens, _S.cache_read_tokens, _S.cache_write_tokens,
    _S.base_nano, _S.neo_credits_nano, _S.owner_user_id,
)  # fmt: skip


def _keyset(
    store: Store,
    scope: Scope,
    f: UsageFilters,
    conditions_of: Conditions,
    query: Select[Any],
    keys: tuple[Any, Any],
    chunk: int,
) -> Iterator[list[Any]]:
    """`query` (without its scope and filters) in chunks of `chunk` rows, ascending by `keys`."""
    if f.matches_nothing:
        return
    conditions: list[ColumnElement[bool]] | None = None
    after: tuple[Any, Any] | None = None
    while True:
        with store.read(replica=True) as db:
            if conditions is None:
                # Resolved once (an email's user, a project's id), then reused by every chunk.
                conditions = conditions_of(db, scope, f)
                if conditions is None:
                    return
            page = query.where(*conditions)
            if after is not None:
                page = page.where(
                    tuple_(*keys)
                    > tuple_(*(literal(v, k.type) for k, v in zip(keys, after, strict=True)))
                )
            rows = list(db.execute(page.order_by(*keys).limit(chunk)))
        if rows:
            yield rows
        if len(rows) < chunk:
            return
        last = rows[-1]._mapping
        after = (last[keys[0]], last[keys[1]])


def stream_chunks(
    store: Store, scope: Scope, f: UsageFilters, *, chunk: int = CHUNK
) -> Iterator[list[Any]]:
    """The scope's finished streams matching `f` (STREAM_FIELDS, owner email, project name),
    oldest first."""
    query = (
        select(*STREAM_FIELDS, USERS.c.email, PROJECTS.c.name.label("project"))
        .outerjoin(USERS, USERS.c.id == _S.owner_user_id)
        .outerjoin(PROJECTS, PROJECTS.c.id == _S.project_id)
    )
    keys = (_S.created_at, _S.stream_id)
    return _keyset(store, scope, f, stream_conditions, query, keys, chunk)


def _stream_record(row: Any, admin: bool) -> Record:
    # Unpacked by position: a Row's attribute access had been a third of an export's time.
    (stream_id, task_id, title, model, status, error, byok, created, finished, stated, steps,
     latency, tools, tool_ms, agents, llm_calls, llm_ms, tokens_in, tokens_out, cache_read,
     cache_write, base, neo, _owner, email, project) = row  # fmt: skip
    return (
        str(stream_id), task_id, title, email if admin else None, project, model, status, error,
        byok, created, finished, execution_ms(stated, created, finished), steps,
        rounded_mean(latency, steps), tools, tool_ms, agents, llm_calls, llm_ms, tokens_in,
        tokens_out, cache_read, cache_write, tokens_in + tokens_out, neo,
        base if byok else None, neo if byok else None,
    )  # fmt: skip


def stream_records(
    store: Store, scope: Scope, f: UsageFilters, *, chunk: int = CHUNK
) -> Iterator[list[Record]]:
    admin = scope.is_team_admin
    for rows in stream_chunks(store, scope, f, chunk=chunk):
        yield [_stream_record(s, admin) for s in rows]


def _task_money(store: Store, scope: Scope, task_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Exact credits of the tasks (their stored rendering has them rounded to 6 places):
    task id -> (neo_credits, llm_cost, neo_cost) in nano-credits, over the finished streams in
    the scope, as `figures.task_figures` sums them."""
    byok = _S.is_byok.is_(True)
    query = (
        select(
            _S.task_id,
            func.sum(_S.neo_credits_nano),
            func.sum(case((byok, 1), else_=0)),
            func.sum(case((byok, _S.base_nano), else_=0)),
            func.sum(case((byok, _S.neo_credits_nano), else_=0)),
        )
        .where(_S.scope == scope.key, _S.task_id.in_(task_ids), _S.status.is_not(None))
        .group_by(_S.task_id)
    )
    with store.read(replica=True) as db:
        return {
            task_id: (int(neo), int(base) if n_byok else None, int(fee) if n_byok else None)
            for task_id, neo, n_byok, base, fee in db.execute(query)
        }


_TASK_FIELDS = (
    "task_title", "model", "status", "error_message", "is_byok", "created_at", "finished_at",
    "total_execution_ms", "step_count", "avg_step_latency_ms", "tool_calls", "tool_time_ms",
    "agent_triggers", "llm_calls", "llm_time_ms", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "total_tokens",
)  # fmt: skip


def task_records(
    store: Store, scope: Scope, f: UsageFilters, *, chunk: int = CHUNK
) -> Iterator[list[Record]]:
    """Tasks from their stored `TaskUsage` rendering (what the list endpoint serves), with
    times as instants and credits exact."""
    t = TASKS.c
    query = (
        select(t.task_id, t.created_at, t.finished_at, t.usage, USERS.c.email, PROJECTS.c.name)
        .outerjoin(USERS, USERS.c.id == t.owner_user_id)
        .outerjoin(PROJECTS, PROJECTS.c.id == t.project_id)
    )
    admin = scope.is_team_admin
    for rows in _keyset(store, scope, f, task_conditions, query, (t.created_at, t.task_id), chunk):
        money = _task_money(store, scope, [r.task_id for r in rows])
        records = []
        for task_id, created_at, finished_at, usage, email, project in rows:
            u = orjson.loads(usage)
            u["created_at"], u["finished_at"] = created_at, finished_at
            neo, llm, fee = money.get(task_id, (0, None, None))
            records.append(
                (
                    task_id,
                    *(u[name] for name in _TASK_FIELDS[:1]),
                    email if admin else None,
                    project,
                    *(u[name] for name in _TASK_FIELDS[1:]),
                    neo,
                    llm,
                    fee,
                    u["stream_count"],
                )
            )
        yield records


_E = USAGE_EVENTS.c


def call_records(
    store: Store, scope: Scope, f: UsageFilters, *, chunk: int = CHUNK
) -> Iterator[list[Record]]:
    """The `llm.call` events of the matching streams, stream by stream in the streams' order,
    each stream's calls by time (then event id)."""
    admin = scope.is_team_admin
    calls = select(_E.stream_id, _E.event_id, _E.time, _E.model, _E.payload, _E.cost_nano)
    for streams in stream_chunks(store, scope, f, chunk=max(1, chunk // 10)):
        by_stream: dict[Any, list[Any]] = {s.stream_id: [] for s in streams}
        with store.read(replica=True) as db:
            query = calls.where(_E.stream_id.in_(list(by_stream)), _E.type == "llm.call")
            for call in db.execute(query.order_by(_E.stream_id, _E.time, _E.event_id)):
                by_stream[call.stream_id].append(call)
        records = []
        for s in streams:
            email = s.email if admin else None
            for c in by_stream[s.stream_id]:
                p = c.payload
                records.append(
                    (
                        str(s.stream_id), c.event_id, s.task_id, s.task_title, email, s.project,
                        c.time, c.model, p.get("provider"), s.is_byok, p["input_tokens"],
                        p["output_tokens"], p.get("cache_read_tokens", 0),
                        p.get("cache_write_tokens", 0), p.get("reasoning_tokens", 0),
                        p["duration_ms"], c.cost_nano is not None, c.cost_nano or 0,
                    )
                )  # fmt: skip
        if records:
            yield records
