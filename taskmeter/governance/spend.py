"""Cap spend kept as ingestion lands: each stream's change in credits, added to the periods of
the caps it counts against, in the batch's own transaction.

    batch's streams before/after ─ spend_of ─▶ (subjects, created_at, credits)
      ─ deltas by (subject, created_at) ─ plan_charges: caps of those subjects ─▶ CapCharges
      ─ apply: cap_spend upserts (sorted keys, RETURNING the new figure)
      ─▶ over_limit streams, threshold crossings

A cap counts from the period it was created in: `backfill_cap` sums that period from the
streams table once, and ingestion adds to that period and later ones. On PostgreSQL a
batch with spend holds a shared advisory lock while it reads the caps and writes their spend,
and creating a cap holds it exclusively while it backfills, so every change in credits is in
the backfill or in a delta, never both and never neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, String, any_, bindparam, func, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from taskmeter.governance.caps import stream_subjects
from taskmeter.governance.periods import parse_zone, period_bounds
from taskmeter.store.bulk import fetch, fetch_compiled, insert_sql, rows_json, run
from taskmeter.store.tables import CAP_SPEND, CAPS, PROJECTS, STREAMS, AnyStream, Cap
from taskmeter.timeutil import as_utc

__all__ = [
    "CapAlert",
    "CapCharges",
    "OverLimit",
    "backfill_cap",
    "plan_charges",
    "spend_of",
]

# The key of the advisory lock between cap creation (exclusive) and spend (shared).
_CAPS_LOCK = 0x7A5C_CA95
_EXCLUSIVE_LOCK = text(f"SELECT pg_advisory_xact_lock({_CAPS_LOCK})")

Spend = tuple[tuple[str, ...], datetime, int]


def code_for(kind: str) -> str:
    """The ErrorResponse code of a cap of this kind. A team cap is the account's own limit,
    so it answers like a user's (docs/decisions.md)."""
    return "project_spending_cap_reached" if kind == "project" else "user_spending_cap_reached"


@dataclass(frozen=True)
class OverLimit:
    stream_id: uuid.UUID
    code: str

    def as_json(self) -> dict[str, str]:
        return {"stream_id": str(self.stream_id), "code": self.code}


@dataclass(frozen=True)
class CapAlert:
    """A soft threshold (`threshold` percent) or the limit (`threshold` None) crossed."""

    cap_id: int
    kind: str
    subject: str
    period_start: datetime
    threshold: int | None
    used_nano: int
    limit_nano: int


def spend_of(stream: AnyStream) -> Spend | None:
    """What a stream's credits count against: None until it has started (owner and time)."""
    if stream.scope is None or stream.created_at is None or stream.owner_user_id is None:
        return None
    subjects = stream_subjects(stream.owner_user_id, stream.team_id, stream.project_id)
    return subjects, stream.created_at, stream.neo_credits_nano


_PG_SHARED_LOCK = f"SELECT pg_advisory_xact_lock_shared({_CAPS_LOCK})"
# Sorted rows, so concurrent batches lock shared spend rows in one order.
_PG_CHARGE = (
    insert_sql(
        CAP_SPEND, ("cap_id", "period_start", "used_nano"), conflict=("cap_id", "period_start"),
        add=True,
    )
    + " RETURNING cap_id, period_start, used_nano"
)  # fmt: skip

_CAPS_COLUMNS = select(
    CAPS.c.id, CAPS.c.kind, CAPS.c.subject, CAPS.c.period, CAPS.c.tz, CAPS.c.limit_nano,
    CAPS.c.thresholds, CAPS.c.created_at,
)  # fmt: skip
_CAPS_OF = _CAPS_COLUMNS.where(CAPS.c.subject.in_(bindparam("subjects", expanding=True)))
# An array parameter, so that `fetch_compiled` compiles it once.
_PG_CAPS_OF = _CAPS_COLUMNS.where(
    CAPS.c.subject == any_(bindparam("subjects", type_=ARRAY(String)))
)


@dataclass(frozen=True)
class CapCharges:
    """A batch's charges to its caps' periods, planned before any spend row is locked."""

    caps: Mapping[int, Any]
    charges: Mapping[tuple[int, datetime], int]
    streams_of: Mapping[tuple[int, datetime], set[uuid.UUID]]
    running: frozenset[uuid.UUID]
    postgresql: bool

    def apply(self, db: Session) -> tuple[list[OverLimit], list[CapAlert]]:
        """Add the charges to the spend rows: the running streams whose spend grew into a cap
        at or past its limit, and the thresholds crossed. The rows stay locked to the commit,
        so this is the batch's last write but the outbox's."""
        if not self.charges:
            return [], []
        rows = [
            {"cap_id": c, "period_start": p, "used_nano": n}
            for (c, p), n in sorted(self.charges.items())
        ]
        written: Sequence[Any]
        if self.postgresql:
            written = fetch(db, _PG_CHARGE, {"rows": rows_json(rows)})
        else:
            upsert = sqlite_insert(CAP_SPEND).values(rows)
            upsert = upsert.on_conflict_do_update(
                index_elements=["cap_id", "period_start"],
                set_={"used_nano": CAP_SPEND.c.used_nano + upsert.excluded.used_nano},
            )
            written = db.execute(
                upsert.returning(
                    CAP_SPEND.c.cap_id, CAP_SPEND.c.period_start, CAP_SPEND.c.used_nano
                )
            ).all()
        over: set[OverLimit] = set()
        alerts: list[CapAlert] = []
        for cap_id, period_start, used in written:
            cap = self.caps[cap_id]
            spent_key = (cap_id, as_utc(period_start))
            delta = self.charges.get(spent_key, 0)
            old = used - delta
            if delta > 0 and used >= cap.limit_nano:
                code = code_for(cap.kind)
                contributed = self.streams_of.get(spent_key, ())
                over.update(OverLimit(sid, code) for sid in contributed if sid in self.running)
            for percent in (*cap.thresholds, None):
                # In whole numbers: percent of the limit against 100 x the spend.
                line = cap.limit_nano * (100 if percent is None else percent)
                if old * 100 < line <= used * 100:
                    alerts.append(
                        CapAlert(
                            cap_id,
                            cap.kind,
                            cap.subject,
                            spent_key[1],
                            percent,
                            used,
                            cap.limit_nano,
                        )
                    )
        ordered = sorted(over, key=lambda o: (str(o.stream_id), o.code))
        return ordered, alerts


_NOTHING = CapCharges({}, {}, {}, frozenset(), False)


def plan_charges(
    db: Session,
    before: Mapping[uuid.UUID, Spend | None],
    after: Mapping[uuid.UUID, Spend | None],
    running: Iterable[uuid.UUID],
) -> CapCharges:
    """The streams' changes in credits, as charges to the periods of the caps they count
    against. On PostgreSQL this takes the shared caps lock (held to the commit) and reads the
    caps, neither of which locks a row: done before the batch's hot rows (rollups, spend) are
    locked, these round trips do not lengthen the time other batches wait on them."""
    deltas: dict[tuple[str, datetime], int] = {}
    growing: dict[tuple[str, datetime], set[uuid.UUID]] = {}
    for sid, now in after.items():
        was = before.get(sid)
        if was == now:
            continue
        for spend, sign in ((was, -1), (now, 1)):
            if spend is None:
                continue
            subjects, created_at, nano = spend
            for subject in subjects:
                delta_key = (subject, created_at)
                deltas[delta_key] = deltas.get(delta_key, 0) + sign * nano
        if now is not None and (was is None or now[2] > was[2]):
            for subject in now[0]:
                growing.setdefault((subject, now[1]), set()).add(sid)
    deltas = {key: nano for key, nano in deltas.items() if nano}
    if not deltas:
        return _NOTHING
    postgresql = db.get_bind().dialect.name == "postgresql"
    wanted = sorted({subject for subject, _ in deltas})
    caps: list[Any]
    if postgresql:
        # Straight to psycopg, as the bulk writes go: SQLAlchemy's execution path was most of
        # these two statements' cost. The lock first, in a statement of its own (see above).
        run(db, _PG_SHARED_LOCK, {})
        caps = fetch_compiled(db, _PG_CAPS_OF, {"subjects": wanted})
    else:
        caps = list(db.execute(_CAPS_OF, {"subjects": wanted}).all())
    if not caps:
        return _NOTHING
    by_subject: dict[str, list[Any]] = {}
    for cap in caps:
        by_subject.setdefault(cap.subject, []).append(cap)
    charges: dict[tuple[int, datetime], int] = {}
    streams_of: dict[tuple[int, datetime], set[uuid.UUID]] = {}
    for (subject, created_at), nano in deltas.items():
        for cap in by_subject.get(subject, ()):
            start, end = period_bounds(cap.period, parse_zone(cap.tz), created_at)
            if end is not None and end <= cap.created_at:
                continue  # before the cap existed: not counted (see backfill_cap)
            charge_key = (cap.id, start)
            charges[charge_key] = charges.get(charge_key, 0) + nano
            streams_of.setdefault(charge_key, set()).update(growing.get((subject, created_at), ()))
    return CapCharges(
        {cap.id: cap for cap in caps}, charges, streams_of, frozenset(running), postgresql
    )


def _subject_conditions(cap: Cap) -> list[Any]:
    if cap.kind == "user":
        return [STREAMS.c.owner_user_id == cap.user_id]
    if cap.kind == "team":
        return [STREAMS.c.scope == f"t{cap.team_id}"]
    if cap.kind == "member":
        return [STREAMS.c.scope == f"t{cap.team_id}", STREAMS.c.owner_user_id == cap.user_id]
    scope = select(PROJECTS.c.scope).where(PROJECTS.c.id == cap.project_id).scalar_subquery()
    return [STREAMS.c.scope == scope, STREAMS.c.project_id == cap.project_id]


def backfill_cap(db: Session, cap: Cap) -> int:
    """Count the spend of the cap's current period from the streams already stored: the
    period the cap starts counting in. Returns the nano-credits found."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(_EXCLUSIVE_LOCK)
    start, end = period_bounds(cap.period, parse_zone(cap.tz), cap.created_at)
    conditions = [
        *_subject_conditions(cap),
        STREAMS.c.created_at >= start,
        STREAMS.c.started.is_(True),
    ]
    if end is not None:
        conditions.append(STREAMS.c.created_at < end)
    used = int(
        db.scalar(select(func.coalesce(func.sum(STREAMS.c.neo_credits_nano), 0)).where(*conditions))
        or 0
    )
    db.execute(CAP_SPEND.delete().where(CAP_SPEND.c.cap_id == cap.id))
    db.execute(CAP_SPEND.insert().values(cap_id=cap.id, period_start=start, used_nano=used))
    return used
