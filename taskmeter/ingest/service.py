"""Ingestion: a batch of raw events → validated → stored once → projected, in one transaction.

    raw events ─ parse_event ─▶ Event | Rejection, the valid ones grouped by stream
               ─ owners resolved (users, their team *now*, their BYOK rate)
               ─ streams locked (FOR UPDATE on PostgreSQL; SQLite's write lock is global),
                 the missing ones built in memory
               ─ duplicates dropped, task and owner checked per event
               ─ streams projected and saved (new ones inserted whole), events stored,
                 tasks recomputed
               ─ commit ─▶ {accepted, duplicates, rejected}

Holding the stream rows' locks while checking duplicates makes the check exact: a concurrent
batch touching the same stream waits, then sees what this one committed. A stream that no
batch has stored yet has no row to lock: two batches may both build it, and the second to
insert it waits for the first to end, fails on its key and starts over, finding it stored.
"""

from __future__ import annotations

import functools
import logging
import operator
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from taskmeter.identity.principal import Principal, scope_key
from taskmeter.identity.service import IdentityError, normalise_email
from taskmeter.ingest.projection import apply_event, refresh_derived
from taskmeter.ingest.schemas import (
    EVENT_MODELS,
    Event,
    LlmCall,
    Rejection,
    StreamStarted,
    parse_event,
)
from taskmeter.pricing.prices import CallTokens, PriceBook, usd_to_nano_credits
from taskmeter.store import Store, bulk
from taskmeter.store.tables import (
    MEMBERSHIPS,
    STREAM_COLUMNS,
    STREAMS,
    TASKS,
    USAGE_EVENTS,
    USERS,
    AnyStream,
    StreamRow,
    UsageEvent,
)
from taskmeter.timeutil import utc_now
from taskmeter.usage.figures import (
    stream_figures,
    task_figures,
    task_row_values,
)
from taskmeter.usage.rollups import (
    TASK_KEY_COLUMNS,
    RollupDeltas,
    stream_contribution,
    task_contribution,
)

__all__ = [
    "IngestResult",
    "Ingestor",
    "append_events",
    "insert_streams",
    "new_stream",
    "parse_batch",
    "project_tasks",
    "write_streams",
]

# A stream row's columns as the PostgreSQL probes below select them (aliased `s`).
_STREAM_VALUES = ", ".join(f"s.{name}" for name in STREAM_COLUMNS)
_STREAM_UPDATE = STREAMS.update().where(STREAMS.c.stream_id == bindparam("key"))

# A stream's figures before its first event (Core inserts skip the ORM's Python-side
# defaults). Its JSON documents are made fresh for each stream in `new_stream`.
STREAM_DEFAULTS: dict[str, Any] = {
    "started": False,
    "model": None,
    "is_byok": False,
    "step_count": 0,
    "step_latency_ms": 0,
    "tool_calls": 0,
    "tool_time_ms": 0,
    "agent_triggers": 0,
    "llm_calls": 0,
    "llm_time_ms": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
    "unpriced_calls": 0,
    "base_nano": 0,
    "neo_credits_nano": 0,
    "swept": False,
}

log = logging.getLogger("taskmeter.ingest")


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_json() for r in sorted(self.rejected, key=lambda r: r.index)],
        }


@dataclass(frozen=True)
class Owner:
    user_id: int
    team_id: int | None
    neo_cost_rate: Decimal | None


# Built once, from the tables (the ORM's execution path cost more than the query).
_OWNERS = (
    select(USERS.c.email, USERS.c.id, MEMBERSHIPS.c.team_id, USERS.c.neo_cost_rate)
    .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
    .where(USERS.c.email.in_(bindparam("emails", expanding=True)))
)


def _owners(db: Session, emails: Iterable[str]) -> dict[str, Owner]:
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    rows = db.execute(_OWNERS, {"emails": wanted}).all()
    return {email: Owner(uid, team, rate) for email, uid, team, rate in rows}


# Statements are module constants: a `text()` built per call had its cache key computed
# afresh from its whole string every batch.
_PG_STORED_PAIRS = text(
    "SELECT e.stream_id, e.event_id FROM unnest(CAST(:sids AS uuid[]), "
    "CAST(:eids AS text[])) AS k(stream_id, event_id) CROSS JOIN LATERAL ("
    "SELECT u.stream_id, u.event_id FROM usage_events u WHERE "
    "u.stream_id = k.stream_id AND u.event_id = k.event_id LIMIT 1) AS e"
)


def _stored_pairs(db: Session, pairs: list[tuple[uuid.UUID, str]]) -> dict[uuid.UUID, set[str]]:
    """Which of these (stream_id, event_id) pairs are stored already, by stream: one index
    probe a pair.

    Matching `stream_id IN (…) AND event_id IN (…)` instead probes the unique index once per
    combination of the two lists (50 streams × 700 events = 35,000 probes for one OTLP
    export), which was the busiest statement of an ingest batch on PostgreSQL. The LIMIT
    keeps PostgreSQL on the index whatever its statistics say: a plain join, planned while
    the table had never been analyzed, hashed the whole table for every batch.
    """
    found: Iterable[tuple[uuid.UUID, str]]
    if db.get_bind().dialect.name == "postgresql":
        found = db.execute(
            _PG_STORED_PAIRS, {"sids": [s for s, _ in pairs], "eids": [e for _, e in pairs]}
        )
    else:
        # SQLite scans the whole table for `(a, b) IN (VALUES …)`; joined from a VALUES list
        # with CROSS JOIN (SQLite keeps that order), it searches the unique index once a pair.
        # Stream ids are stored as 32 hex digits (SQLAlchemy's Uuid without a native type).
        values = ", ".join(["(?, ?)"] * len(pairs))
        rows = db.connection().exec_driver_sql(
            f"WITH k(stream_id, event_id) AS (VALUES {values}) "  # noqa: S608 - placeholders only
            "SELECT e.stream_id, e.event_id FROM k CROSS JOIN usage_events e "
            "WHERE e.stream_id = k.stream_id AND e.event_id = k.event_id",
            tuple(value for sid, eid in pairs for value in (sid.hex, eid)),
        )
        found = ((uuid.UUID(hex=sid), eid) for sid, eid in rows)
    stored: dict[uuid.UUID, set[str]] = {}
    for sid, eid in found:
        stored.setdefault(sid, set()).add(eid)
    return stored


# One primary-key probe a stream, locked in the order given (sorted: no two batches wait on
# each other in a cycle). `stream_id IN (…)` was planned once as a sequential scan while the
# table was small, and psycopg's prepared statement kept that plan as the table grew.
_PG_LOCK_STREAMS = text(
    f"SELECT {_STREAM_VALUES} "  # noqa: S608 - column names
    "FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS k(stream_id, n) CROSS JOIN LATERAL "
    "(SELECT * FROM streams WHERE stream_id = k.stream_id LIMIT 1 FOR UPDATE) AS s ORDER BY k.n"
).columns(*STREAMS.c)


def _lock_streams(db: Session, ids: list[uuid.UUID]) -> Any:
    """The rows of these streams (sorted ids), locked until the transaction ends."""
    if db.get_bind().dialect.name == "postgresql":
        return db.execute(_PG_LOCK_STREAMS, {"ids": ids})
    # SQLite's write lock is the whole database's, taken when the transaction began.
    return db.execute(select(STREAMS).where(STREAMS.c.stream_id.in_(ids)))


# A batch's valid events by stream, each stream's in batch order, keyed by event id.
EventsByStream = dict[uuid.UUID, dict[str, tuple[int, Event]]]


def parse_batch(
    raw_events: Sequence[Any], result: IngestResult, *, nul_free: bool = False
) -> EventsByStream:
    """Validate a batch's events: rejections and repeats within the batch go to `result`,
    the rest are grouped by stream (a UUID hashes in Python: once an event here, and the
    store phase then works stream by stream)."""
    by_stream: EventsByStream = {}
    for index, raw in enumerate(raw_events):
        parsed = parse_event(index, raw, nul_free=nul_free)
        if isinstance(parsed, Rejection):
            result.rejected.append(parsed)
            continue
        of_stream = by_stream.get(parsed.stream_id)
        if of_stream is None:
            of_stream = by_stream[parsed.stream_id] = {}
        if parsed.id in of_stream:
            result.duplicates += 1
        else:
            of_stream[parsed.id] = (index, parsed)
    return by_stream


class Ingestor:
    """Turns batches of events into stored, priced, projected usage."""

    def __init__(
        self, store: Store, prices: PriceBook, *, credit_usd: Decimal, default_rate: Decimal
    ) -> None:
        self.store = store
        self.prices = prices
        self.credit_usd = credit_usd
        self.default_rate = default_rate

    def cost_nano(self, event: LlmCall) -> int | None:
        if event.cost_usd is not None:
            return usd_to_nano_credits(event.cost_usd, self.credit_usd)
        usd = self.prices.price_usd(
            event.model,
            event.provider,
            CallTokens(
                event.input_tokens,
                event.output_tokens,
                event.cache_read_tokens,
                event.cache_write_tokens,
            ),
            event.time,
        )
        return None if usd is None else usd_to_nano_credits(usd, self.credit_usd)

    def ingest(
        self, principal: Principal, raw_events: Sequence[Any], *, nul_free: bool = False
    ) -> IngestResult:
        """Validate, store and project a batch. `nul_free`: the caller knows no string in
        these events holds a NUL character (see `parse_event`)."""
        result = IngestResult()
        by_stream = parse_batch(raw_events, result, nul_free=nul_free)
        if not by_stream:
            return result
        for attempt in range(1, _ATTEMPTS + 1):
            outcome = IngestResult(result.accepted, result.duplicates, list(result.rejected))
            try:
                with self.store.write() as db:
                    self._store(db, principal, by_stream, outcome)
                outcome.rejected.sort(key=operator.attrgetter("index"))
                return outcome
            except IntegrityError as exc:
                if not _clashed_on_stream(exc):
                    raise
                # Another batch created one of these streams after this one looked for it.
                # Rolled back whole; on the next attempt the stream is there to lock.
                log.debug("attempt %d: a stream of this batch was created meanwhile", attempt)
        raise RuntimeError(f"streams kept being created under this batch ({_ATTEMPTS} attempts)")

    def _starter_email(self, principal: Principal, event: StreamStarted) -> str:
        """The email that owns a stream this start event opens, or raise a Rejection code."""
        if principal.is_service:
            if not event.user:
                raise _Reject("user_required", "stream.started needs `user` with a service key")
            try:
                return normalise_email(event.user)
            except IdentityError as exc:
                raise _Reject("invalid_event", f"user: {exc}") from None
        assert principal.email is not None
        if event.user and event.user.strip().lower() != principal.email:
            raise _Reject("forbidden_stream", "a user's key may only start its own streams")
        return principal.email

    def _store(
        self,
        db: Session,
        principal: Principal,
        by_stream: EventsByStream,
        result: IngestResult,
    ) -> None:
        now = utc_now()
        emails = [
            e.user.strip().lower()
            for of_stream in by_stream.values()
            for _, e in of_stream.values()
            if isinstance(e, StreamStarted) and e.user and principal.is_service
        ]
        if principal.email:
            emails.append(principal.email)
        owners = _owners(db, emails)

        ids = sorted(by_stream)
        streams = {row.stream_id: row for row in map(StreamRow, _lock_streams(db, ids))}
        # Streams not stored yet are built here and inserted whole once projected: a
        # placeholder row inserted first and then updated had written every index twice.
        new = {
            sid: new_stream(sid, next(iter(by_stream[sid].values()))[1].task_id)
            for sid in ids
            if sid not in streams
        }
        streams.update(new)
        # A stream that has never accepted an event (new, or only rejections so far) holds
        # none: events land only beside their stream's row, under its lock, and the first one
        # sets first_event_at. Only the others are probed (an OTLP export's traces are
        # usually all new).
        probed = [
            (sid, event_id)
            for sid in ids
            if streams[sid].first_event_at
            for event_id in sorted(by_stream[sid])
        ]
        stored = _stored_pairs(db, probed) if probed else {}
        rollups = RollupDeltas()
        before = {sid: stream_contribution(s) for sid, s in streams.items()}

        rows: list[tuple[Any, ...]] = []
        for sid in ids:
            stream = streams[sid]
            stored_ids = stored.get(sid, ())
            accepted = 0
            for index, event in by_stream[sid].values():
                if event.id in stored_ids:
                    result.duplicates += 1
                    continue
                try:
                    self._check(principal, stream, event, owners)
                except _Reject as rejection:
                    result.rejected.append(
                        Rejection(index, event.id, rejection.code, rejection.message)
                    )
                    continue
                cost = self.cost_nano(event) if isinstance(event, LlmCall) else None
                apply_event(stream, event, cost)
                rows.append(_event_row(event, cost, now))
                accepted += 1
            if accepted:
                stream.last_received_at = now
                result.accepted += accepted

        for sid in ids:
            refresh_derived(streams[sid], self.default_rate)
            rollups.stream_changed(before[sid], stream_contribution(streams[sid]))
        # New streams before their events: a batch that raced this one to create a stream
        # waits here on its key, not on an event's (where it would fail, not skip).
        insert_streams(db, [streams[sid] for sid in ids if sid in new])
        write_streams(db, [streams[sid] for sid in ids if sid not in new])
        append_events(db, rows)
        project_tasks(
            db,
            {
                (s.scope, s.task_id)
                for s in (streams[sid] for sid in ids)
                if s.scope is not None and s.status is not None
            },
            rollups,
            loaded=(streams[sid] for sid in ids),
        )
        rollups.write(db)

    def _check(
        self, principal: Principal, stream: StreamRow, event: Event, owners: dict[str, Owner]
    ) -> None:
        if stream.first_event_at is None:
            # Nothing accepted yet: the stream is still unclaimed by any task.
            stream.task_id = event.task_id
        if stream.task_id != event.task_id:
            raise _Reject(
                "task_mismatch",
                f"stream {event.stream_id} belongs to task {stream.task_id!r}, "
                f"not {event.task_id!r}",
            )
        if (
            not principal.is_service
            and stream.owner_user_id is not None
            and stream.owner_user_id != principal.user_id
        ):
            raise _Reject("forbidden_stream", "this stream belongs to another user")
        if isinstance(event, StreamStarted):
            email = self._starter_email(principal, event)
            owner = owners.get(email)
            if owner is None:
                raise _Reject("unknown_user", f"no user with email {email}")
            if stream.owner_user_id is not None and stream.owner_user_id != owner.user_id:
                raise _Reject("forbidden_stream", "this stream belongs to another user")
            if stream.scope is None:
                # Ownership is stamped, not looked up: the owner's team at this moment.
                stream.owner_user_id = owner.user_id
                stream.team_id = owner.team_id
                stream.scope = scope_key(team_id=owner.team_id, user_id=owner.user_id)
                stream.neo_cost_rate = owner.neo_cost_rate
        elif not principal.is_service and stream.owner_user_id is None:
            stream.owner_user_id = principal.user_id


# Each retry finds the raced streams stored; a third race in a row is not a race.
_ATTEMPTS = 3


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Every column, in the table's order: what COPY writes and `_event_row` builds.
EVENT_COLUMNS = tuple(c.name for c in USAGE_EVENTS.columns)
# Stored in their own columns, so not again in the payload.
_COLUMN_FIELDS = frozenset({"id", "type", "time", "stream_id", "task_id"})
# Each type's payload fields, looked up once rather than filtered per event.
_PAYLOAD_FIELDS = {
    kind: tuple(name for name in model.model_fields if name not in _COLUMN_FIELDS)
    for kind, model in EVENT_MODELS.items()
}


def _event_row(event: Event, cost_nano: int | None, now: datetime) -> tuple[Any, ...]:
    """The event's `usage_events` row, its values in `EVENT_COLUMNS` order."""
    # What `model_dump(mode="json", exclude=…, exclude_none=True)` gives for these flat
    # models (a Decimal as its string), at a fifth of its cost.
    fields = event.__dict__
    payload = {}
    for name in _PAYLOAD_FIELDS[event.type]:
        value = fields[name]
        if value is not None:
            payload[name] = str(value) if isinstance(value, Decimal) else value
    # `fields`, not getattr: pydantic answers a missing attribute by raising, slowly.
    model = fields.get("model")
    return (event.stream_id, event.id, event.task_id, event.type, event.time, model, payload,
            cost_nano, now)  # fmt: skip


assert EVENT_COLUMNS == (
    "stream_id", "event_id", "task_id", "type", "time", "model", "payload", "cost_nano",
    "received_at",
)  # fmt: skip
_SQLITE_EVENT_INSERT = (
    f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608 - column names
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) "
    "ON CONFLICT (stream_id, event_id) DO NOTHING"
)


@functools.cache
def _sqlite_event_processors(dialect: Any) -> tuple[Any, Any, Any]:
    """The SQLite bind processing of `usage_events`' stream id, instants and payload."""
    columns = UsageEvent.__table__.c
    processors = []
    for name in ("stream_id", "time", "payload"):
        process = columns[name].type.dialect_impl(dialect).bind_processor(dialect)
        processors.append(process or (lambda value: value))
    return processors[0], processors[1], processors[2]


def append_events(db: Session, rows: list[tuple[Any, ...]]) -> None:
    """Store accepted events: COPY on PostgreSQL, a prepared executemany on SQLite.

    COPY takes no ON CONFLICT, and needs none: the caller holds every touched stream's row
    lock and has dropped the events already stored for those streams, so no other
    transaction can insert one of these (stream_id, event_id) pairs until this one commits.
    A row-per-statement insert spent a third of an ingest batch's time (bench/RESULTS.md).
    """
    if not rows:
        return
    dialect = db.get_bind().dialect
    if dialect.name != "postgresql":
        # The driver's executemany with the columns' own bind processing applied here:
        # SQLAlchemy's per-row parameter dictionaries had been a third of the insert.
        stream_id, when, payload = _sqlite_event_processors(dialect)
        received = when(rows[0][8])  # one instant for the whole batch
        db.connection().exec_driver_sql(
            _SQLITE_EVENT_INSERT,
            [
                (stream_id(r[0]), r[1], r[2], r[3], when(r[4]), r[5], payload(r[6]), r[7], received)
                for r in rows
            ],
        )
        return
    # Binary COPY saved a fifth of COPY's time over text (bench/RESULTS.md).
    bulk.copy_rows(db, USAGE_EVENTS, rows)


def new_stream(stream_id: uuid.UUID, task_id: str) -> StreamRow:
    """A stream with no events yet, as ingestion builds it before its first insert."""
    values = {
        **STREAM_DEFAULTS,
        "stream_id": stream_id,
        "task_id": task_id,
        # Fresh containers: the projection updates them in place.
        "model_calls": {},
        "tool_breakdown": {},
        "tool_history": [],
        "agent_breakdown": {},
    }
    return StreamRow(values.get(name) for name in STREAM_COLUMNS)


_STREAM_INSERT = STREAMS.insert()
# A stream row's values in the table's column order.
_stream_tuple = operator.attrgetter(*STREAM_COLUMNS)


def insert_streams(db: Session, rows: Sequence[StreamRow]) -> None:
    """Insert streams this transaction found missing. If another transaction has inserted
    one of them since, the insert waits for that one to end and then fails on the key: the
    caller's whole batch is retried (see `_clashed_on_stream`)."""
    if not rows:
        return
    if db.get_bind().dialect.name == "postgresql":
        bulk.copy_rows(db, STREAMS, map(_stream_tuple, rows))
    else:
        db.execute(_STREAM_INSERT, [_stream_values(row) for row in rows])


def _stream_values(row: StreamRow) -> dict[str, Any]:
    return dict(zip(STREAM_COLUMNS, _stream_tuple(row), strict=True))


def _clashed_on_stream(exc: IntegrityError) -> bool:
    """Whether an insert failed on a stream's key: another batch created that stream."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    return constraint == STREAMS.primary_key.name or (
        f"UNIQUE constraint failed: {STREAMS.name}." in str(exc.orig)
    )


def write_streams(db: Session, rows: Sequence[StreamRow]) -> None:
    """Save projected stream rows whole: one statement (PostgreSQL) or one prepared UPDATE
    executed for each row (SQLite)."""
    if not rows:
        return
    if db.get_bind().dialect.name == "postgresql":
        bulk.update_rows(db, STREAMS, "stream_id", [_stream_values(row) for row in rows])
        return
    db.execute(_STREAM_UPDATE, [{"key": row.stream_id, **_stream_values(row)} for row in rows])


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
    f"SELECT {_STREAM_VALUES} FROM {_PAIRS} (SELECT * FROM streams "  # noqa: S608 - column names
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
        rows.append({"scope": scope, "task_id": task_id, **task_row_values(figures)})
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
