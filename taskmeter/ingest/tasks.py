"""Project tasks: a task row recomputed from its visible streams, under its lock."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from taskmeter.ingest.dedupe import STREAM_VALUES_SQL
from taskmeter.store import bulk
from taskmeter.store.tables import (
    STREAMS,
    TASKS,
    AnyStream,
    StreamRow,
)
from taskmeter.usage.figures import (
    stream_figures,
    task_figures,
    task_row_values,
)
from taskmeter.usage.rollups import (
    TASK_KEY_COLUMNS,
    RollupDeltas,
    task_contribution,
)

__all__ = ["project_tasks"]

# On PostgreSQL a batch's (scope, task id) pairs are read one index probe each. Matched as two
# lists instead, the planner, while a fresh table had not been analyzed yet, searched by scope
# alone and read every task and finished stream of the scope for each batch (a whole team's;
# in the OTLP benchmark, every row: most of a batch's time). OFFSET 0 keeps each subquery a
# probe of its own (else the planner may flatten the join into a hash join over the table).
# The streams' status is tested outside the probe: inside, it matched the list indexes'
# partial predicate, and without statistics one of those, searched by scope alone, looked as
# good as (scope, task_id). (While a table is tiny, a generic plan may still search by scope
# alone; from a few hundred rows on, the whole key wins, statistics or not.)
_PAIRS = (
    "unnest(CAST(:scopes AS text[]), CAST(:task_ids AS text[])) AS k(scope, task_id) "
    "CROSS JOIN LATERAL"
)
_TASK_KEYS = ", ".join(f"t.{name}" for name in TASK_KEY_COLUMNS)
_PG_LOCK_TASKS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) "
    "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(key, n) ORDER BY n"
)
_PG_TASK_KEYS = text(
    f"SELECT t.scope, t.task_id, {_TASK_KEYS} FROM {_PAIRS} (SELECT * FROM tasks "  # noqa: S608 - column names
    "WHERE scope = k.scope AND task_id = k.task_id OFFSET 0) AS t"
).columns(TASKS.c.scope, TASKS.c.task_id, *(TASKS.c[n] for n in TASK_KEY_COLUMNS))
_PG_VISIBLE_STREAMS = text(
    f"SELECT {STREAM_VALUES_SQL} FROM {_PAIRS} (SELECT * FROM streams "  # noqa: S608 - column names
    "WHERE scope = k.scope AND task_id = k.task_id OFFSET 0) AS s "
    "WHERE s.status IS NOT NULL AND s.started AND s.stream_id <> ALL(CAST(:held AS uuid[]))"
).columns(*STREAMS.c)


def project_tasks(
    db: Session,
    keys: set[tuple[str, str]],
    rollups: RollupDeltas,
    loaded: Iterable[AnyStream] = (),
) -> None:
    """Recompute the task rows for (scope, task_id) from their visible streams.

    `loaded` are streams this transaction holds already, saved: they are not read again (an
    ingest batch's own streams were a second full read of the same rows).

    Two transactions finishing different streams of one task must not both compute from a
    snapshot that misses the other's stream: on PostgreSQL every task is locked first with a
    transaction-scoped advisory lock (all in one statement, in sorted order, so transactions
    cannot deadlock), and the queries that follow see everything committed before the locks
    were granted. A batch costs four statements however many tasks it touches.
    """
    if not keys:
        return
    ordered = sorted(keys)
    if db.get_bind().dialect.name == "postgresql":
        db.execute(
            _PG_LOCK_TASKS,
            {"keys": [f"task:{scope}:{task_id}" for scope, task_id in ordered]},
        )
    visible: dict[tuple[str, str], list[AnyStream]] = {key: [] for key in ordered}
    held = {s.stream_id: s for s in loaded}
    if db.get_bind().dialect.name == "postgresql":
        pairs = {"scopes": [s for s, _ in ordered], "task_ids": [t for _, t in ordered]}
        found = db.execute(_PG_TASK_KEYS, pairs)
        others = list(map(StreamRow, db.execute(_PG_VISIBLE_STREAMS, {**pairs, "held": [*held]})))
    else:
        # Scopes and task ids are matched separately (one plan: SQLite searches the primary
        # key with both lists), then paired here.
        scopes = sorted({scope for scope, _ in ordered})
        task_ids = sorted({task_id for _, task_id in ordered})
        found = db.execute(
            select(TASKS.c.scope, TASKS.c.task_id, *(TASKS.c[n] for n in TASK_KEY_COLUMNS)).where(
                TASKS.c.scope.in_(scopes), TASKS.c.task_id.in_(task_ids)
            )
        )
        query = select(STREAMS).where(
            STREAMS.c.scope.in_(scopes),
            STREAMS.c.task_id.in_(task_ids),
            STREAMS.c.status.is_not(None),
            STREAMS.c.started.is_(True),
        )
        if held:
            query = query.where(STREAMS.c.stream_id.not_in(sorted(held)))
        others = list(map(StreamRow, db.execute(query)))
    old = {
        (scope, task_id): dict(zip(TASK_KEY_COLUMNS, values, strict=True))
        for scope, task_id, *values in found
        if (scope, task_id) in keys
    }
    held_visible = (s for s in held.values() if s.status is not None and s.started)
    for stream in sorted([*others, *held_visible], key=lambda s: s.stream_id):
        key = (stream.scope, stream.task_id)
        if key in visible:
            visible[key].append(stream)
    gone: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    for scope, task_id in ordered:
        before = task_contribution(scope, old.get((scope, task_id)))
        streams = visible[(scope, task_id)]
        if not streams:
            if before is not None:
                gone.append({"s": scope, "t": task_id})
            rollups.task_changed(before, None)
            continue
        figures = task_figures([stream_figures(s) for s in streams])
        rollups.task_changed(before, task_contribution(scope, figures))
        rows.append(
            {
                "scope": scope,
                "task_id": task_id,
                **task_row_values(figures),
                "project_id": _task_project(streams),
            }
        )
    if gone:
        db.execute(
            TASKS.delete().where(
                TASKS.c.scope == bindparam("s"), TASKS.c.task_id == bindparam("t")
            ),
            gone,
        )
    if not rows:
        return
    if db.get_bind().dialect.name == "postgresql":
        # A task the probe did not find stays absent until this transaction ends: whoever
        # writes a task holds its advisory lock (taken above). New rows then go by COPY,
        # which cost PostgreSQL half what the JSON upsert did (an OTLP export's 50 new tasks).
        fresh: list[dict[str, Any]] = []
        known: list[dict[str, Any]] = []
        for row in rows:
            (known if (row["scope"], row["task_id"]) in old else fresh).append(row)
        if fresh:
            bulk.copy_rows(db, TASKS, map(_task_tuple, fresh))
        bulk.insert_rows(db, TASKS, known, conflict=("scope", "task_id"))
        return
    columns = tuple(name for name in rows[0] if name not in ("scope", "task_id"))
    db.execute(_sqlite_task_upsert(columns), rows)


def _task_project(streams: list[AnyStream]) -> int | None:
    """The project of the task's earliest stream that names one (ties: by stream id)."""
    named = [s for s in streams if s.project_id is not None]
    if not named:
        return None
    return min(named, key=lambda s: (s.created_at, s.stream_id)).project_id


# A task row's values in the table's column order (the keys `project_tasks` builds).
_task_tuple = operator.itemgetter(*(c.name for c in TASKS.columns))


@functools.cache
def _sqlite_task_upsert(columns: tuple[str, ...]) -> Any:
    """The task rows' upsert, built once (its `excluded` alias cost more than running it)."""
    insert = sqlite_insert(TASKS)
    return insert.on_conflict_do_update(
        index_elements=["scope", "task_id"],
        set_={name: insert.excluded[name] for name in columns},
    )
