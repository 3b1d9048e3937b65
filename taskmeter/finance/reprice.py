"""Re-pricing, applied: stored calls re-priced under the current rules, stream group by group.

    reprice(store, book, rules)                       (the plan: reprice_plan.py)
      ─ a run: resumed if one with the same rule (filters, prices file sha256, genai-prices
        version, credit price) is unfinished, else a new `reprice_runs` row with the plan
      ─ for each group of ≤ `group_streams` changed streams (a task's streams together), ONE
        transaction: lock_streams (FOR UPDATE, sorted, as ingestion does) ─ re-read their
        calls in range and re-price them ─ update the calls (cost, price source) ─ the
        streams' base_nano / unpriced_calls, refresh_derived ─ write_streams ─ project_tasks
        ─ RollupDeltas (rollups, owner months, hours: what credit balances read) ─ the run's
        cursor and progress ─ commit
      ─ the run marked done (or failed, with the error; running again resumes it)

Readers see a stream, its calls and its task either all before or all after (one transaction).
A group re-reads its calls under the streams' locks, so a batch ingested meanwhile is either
already there (and re-priced with the rest) or waits. Re-pricing is idempotent: a call already
at its rule's price does not change, so a resumed run does only what is left and ends with the
numbers an uninterrupted one does; its progress counters come from committed transactions only.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Uuid, bindparam, cast, func, select, text, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from taskmeter.finance.reprice_plan import (
    CallRepricer,
    Owners,
    Plan,
    RepriceError,
    RepriceFilter,
    candidate_query,
    in_filter,
    plan,
    validate,
)
from taskmeter.ingest.dedupe import lock_streams
from taskmeter.ingest.projection import refresh_derived
from taskmeter.ingest.rows import write_streams
from taskmeter.ingest.tasks import project_tasks
from taskmeter.pricing.prices import GENAI_PRICES_VERSION, PriceBook
from taskmeter.store import Store
from taskmeter.store.tables import REPRICE_RUNS, USAGE_EVENTS, RepriceRun, StreamRow
from taskmeter.timeutil import utc_now
from taskmeter.usage.rollups import RollupDeltas, stream_contribution

__all__ = ["RepriceError", "RepriceFilter", "RepriceOutcome", "list_runs", "reprice"]

GROUP_STREAMS = 200


@dataclass
class RepriceOutcome:
    plan: Plan
    run_id: int | None  # None for a dry run
    resumed: bool
    transactions: int  # committed by this invocation


def rule_of(rules: RepriceFilter, book: PriceBook, credit_usd: Decimal) -> dict[str, Any]:
    """What the run re-prices by: its filters and the price rules in force."""
    return {
        **rules.describe(),
        "prices_file": str(book.prices_file) if book.prices_file else None,
        "prices_file_sha256": book.file_sha256,
        "genai_prices": GENAI_PRICES_VERSION,
        "credit_usd": str(credit_usd),
    }


def reprice(
    store: Store,
    book: PriceBook,
    rules: RepriceFilter,
    *,
    credit_usd: Decimal,
    default_rate: Decimal,
    dry_run: bool = False,
    actor: str | None = None,
    group_streams: int = GROUP_STREAMS,
    on_plan: Callable[[Plan, bool], None] | None = None,
    fail_after: int | None = None,
) -> RepriceOutcome:
    """Plan, then (unless `dry_run`) apply. `on_plan` sees the plan before anything changes.
    `fail_after`: raise after that many committed transactions (tests of resumption)."""
    repricer = CallRepricer(book, credit_usd)
    with store.read() as db:
        owners = validate(db, rules, book)
        planned = plan(db, rules, owners, repricer, default_rate)
    rule = rule_of(rules, book, credit_usd)
    key = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()
    if dry_run:
        if on_plan:
            on_plan(planned, False)
        return RepriceOutcome(planned, None, False, 0)
    with store.write() as db:
        run_id, resumed = _open_run(db, rule, key, planned, actor or getpass.getuser())
    if on_plan:
        on_plan(planned, resumed)
    done = 0
    try:
        for group in _groups(planned, group_streams):
            with store.write() as db:
                sources = _reprice_group(db, group, rules, owners, repricer, default_rate, run_id)
            book.sources.committed(sources)
            done += 1
            if fail_after is not None and done >= fail_after:
                raise RuntimeError(f"injected failure after {done} transactions")
    except BaseException as exc:
        with store.write() as db:
            db.execute(
                update(REPRICE_RUNS)
                .where(REPRICE_RUNS.c.id == run_id)
                .values(state="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            )
        raise
    with store.write() as db:
        db.execute(
            update(REPRICE_RUNS)
            .where(REPRICE_RUNS.c.id == run_id)
            .values(state="done", finished_at=utc_now(), error=None)
        )
    return RepriceOutcome(planned, run_id, resumed, done)


def _open_run(
    db: Session, rule: dict[str, Any], key: str, planned: Plan, actor: str
) -> tuple[int, bool]:
    """The unfinished run of this rule (resumed: its plan and figures are kept), or a new one."""
    unfinished = db.execute(
        select(REPRICE_RUNS.c.id)
        .where(REPRICE_RUNS.c.rule_key == key, REPRICE_RUNS.c.state != "done")
        .order_by(REPRICE_RUNS.c.id.desc())
        .limit(1)
    ).scalar()
    if unfinished is not None:
        db.execute(
            update(REPRICE_RUNS)
            .where(REPRICE_RUNS.c.id == unfinished)
            .values(state="running", error=None)
        )
        return int(unfinished), True
    counts = planned.counts()
    run = RepriceRun(
        actor=actor,
        started_at=utc_now(),
        state="running",
        rule=rule,
        rule_key=key,
        plan=counts,
        transactions=0,
        streams_done=0,
        calls_done=0,
        **{
            name: counts[name]
            for name in (
                "calls_seen",
                "calls_changed",
                "streams_changed",
                "tasks_changed",
                "newly_priced",
                "base_before_nano",
                "base_after_nano",
                "charged_before_nano",
                "charged_after_nano",
            )
        },
    )
    db.add(run)
    db.flush()
    return run.id, False


def _groups(planned: Plan, size: int) -> Iterable[list[uuid.UUID]]:
    """Changed streams in groups of about `size`, never splitting a task (unless one task
    alone has more streams than that)."""
    group: list[uuid.UUID] = []
    last_task: tuple[str, str] | None = None
    for scope, task_id, stream_id in planned.order:
        if len(group) >= size and (scope, task_id) != last_task:
            yield group
            group = []
        group.append(stream_id)
        last_task = (scope, task_id)
    if group:
        yield group


def _reprice_group(
    db: Session,
    group: list[uuid.UUID],
    rules: RepriceFilter,
    owners: Owners,
    repricer: CallRepricer,
    default_rate: Decimal,
    run_id: int,
) -> Any:
    ids = sorted(group)
    streams = {row.stream_id: row for row in map(StreamRow, lock_streams(db, ids))}
    before = {sid: stream_contribution(s) for sid, s in streams.items()}
    changed: list[dict[str, Any]] = []
    for row in in_filter(_group_calls(db, rules, owners, ids), rules):
        cost, source = repricer.reprice(row)
        if (cost, source) == (row.cost_nano, row.price_source_id):
            continue
        stream = streams[row.stream_id]
        stream.base_nano += (cost or 0) - (row.cost_nano or 0)
        if (row.cost_nano is None) != (cost is None):
            stream.unpriced_calls += 1 if cost is None else -1
        changed.append({"k_sid": row.stream_id, "k_eid": row.event_id, "c": cost, "p": source})
    rollups = RollupDeltas()
    changed_ids = {c["k_sid"] for c in changed}
    touched = [s for s in streams.values() if s.stream_id in changed_ids]
    for stream in touched:
        refresh_derived(stream, default_rate)
        rollups.stream_changed(before[stream.stream_id], stream_contribution(stream))
    _update_calls(db, changed)
    write_streams(db, sorted(touched, key=lambda s: s.stream_id))
    project_tasks(
        db,
        {(s.scope, s.task_id) for s in touched if s.scope is not None and s.status is not None},
        rollups,
        loaded=touched,
    )
    rollups.write(db)
    sources = repricer.book.sources.write_pending(db)
    db.execute(
        update(REPRICE_RUNS)
        .where(REPRICE_RUNS.c.id == run_id)
        .values(
            cursor=ids[-1].hex,
            transactions=REPRICE_RUNS.c.transactions + 1,
            streams_done=REPRICE_RUNS.c.streams_done + len(touched),
            calls_done=REPRICE_RUNS.c.calls_done + len(changed),
        )
    )
    return sources


def _group_calls(db: Session, rules: RepriceFilter, owners: Owners, ids: list[uuid.UUID]) -> Any:
    """The group's calls in range: on PostgreSQL one index probe a stream (a LATERAL join
    from the ids). `stream_id IN (…)` was planned as a sequential scan of the whole table
    for every group: 0.3 s a group at 1.2M events, most of a re-pricing's time."""
    query = candidate_query(rules, owners)
    if db.get_bind().dialect.name != "postgresql":
        return db.execute(query.where(USAGE_EVENTS.c.stream_id.in_(ids)))
    keys = func.unnest(cast(bindparam("ids"), ARRAY(Uuid()))).table_valued("stream_id")
    k = keys.render_derived(name="k")
    # OFFSET 0 keeps the subquery a probe of its own (not flattened into a hash join).
    probe = query.where(USAGE_EVENTS.c.stream_id == k.c.stream_id).offset(0).lateral("e")
    return db.execute(select(probe).select_from(k).join(probe, true()), {"ids": ids})


_PG_UPDATE_CALLS = text(
    "UPDATE usage_events AS u SET cost_nano = v.cost, price_source_id = v.source "
    "FROM unnest(CAST(:sids AS uuid[]), CAST(:eids AS text[]), CAST(:costs AS bigint[]), "
    "CAST(:sources AS bigint[])) AS v(stream_id, event_id, cost, source) "
    "WHERE u.stream_id = v.stream_id AND u.event_id = v.event_id"
)
_UPDATE_CALL = (
    update(USAGE_EVENTS)
    .where(
        USAGE_EVENTS.c.stream_id == bindparam("k_sid"),
        USAGE_EVENTS.c.event_id == bindparam("k_eid"),
    )
    .values(cost_nano=bindparam("c"), price_source_id=bindparam("p"))
)


def _update_calls(db: Session, changed: list[dict[str, Any]]) -> None:
    if not changed:
        return
    if db.get_bind().dialect.name == "postgresql":
        db.execute(
            _PG_UPDATE_CALLS,
            {
                "sids": [c["k_sid"] for c in changed],
                "eids": [c["k_eid"] for c in changed],
                "costs": [c["c"] for c in changed],
                "sources": [c["p"] for c in changed],
            },
        )
        return
    db.execute(_UPDATE_CALL, changed)


def list_runs(db: Session) -> list[dict[str, Any]]:
    """The re-pricing log, newest first."""
    runs = db.execute(select(REPRICE_RUNS).order_by(REPRICE_RUNS.c.id.desc())).mappings()
    return [{k: v for k, v in run.items() if k != "rule_key"} for run in runs]
