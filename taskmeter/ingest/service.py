"""Ingestion: a batch of raw events → validated → stored once → projected, in one transaction.

    raw events ─ batch.parse_batch ─▶ Event | Rejection, the valid ones grouped by stream
               ─ owners.resolve_owners (users, their team *now*, their BYOK rate)
               ─ dedupe.lock_streams (FOR UPDATE on PostgreSQL; SQLite's write lock is
                 global), the missing ones built in memory (rows.new_stream)
               ─ dedupe.stored_pairs: duplicates dropped; task and owner checked per event
               ─ projection.apply_event: streams projected, then rows.insert_streams /
                 write_streams / append_events, tasks.project_tasks, rollups
               ─ commit ─▶ {accepted, duplicates, rejected}

This module is the pipeline that runs those steps; each step lives in its own module. A
stream that no batch has stored yet has no row to lock: two batches may both build it, and the
second to insert it waits for the first to end, fails on its key and starts over, finding it
stored.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from taskmeter.governance.alerts import emit_cap_alerts
from taskmeter.governance.authorize import release_finished
from taskmeter.governance.projects import ProjectRef, projects_by_name
from taskmeter.governance.spend import plan_charges, spend_of
from taskmeter.identity.principal import Principal, scope_key
from taskmeter.identity.service import IdentityError, normalise_email
from taskmeter.ingest.batch import EventsByStream, IngestResult, parse_batch
from taskmeter.ingest.dedupe import lock_streams, stored_pairs
from taskmeter.ingest.owners import Owner, resolve_owners
from taskmeter.ingest.projection import apply_event, refresh_derived
from taskmeter.ingest.rows import (
    append_events,
    clashed_on_stream,
    event_row,
    insert_streams,
    new_stream,
    write_streams,
)
from taskmeter.ingest.schemas import Event, LlmCall, Rejection, StreamStarted
from taskmeter.ingest.tasks import project_tasks
from taskmeter.pricing.prices import CallTokens, PriceBook, usd_to_nano_credits
from taskmeter.store import Store
from taskmeter.store.tables import StreamRow
from taskmeter.timeutil import utc_now
from taskmeter.usage.rollups import RollupDeltas, stream_contribution
from taskmeter.webhooks.credits import credits_low_watched, emit_credits_low

__all__ = ["IngestResult", "Ingestor", "parse_batch"]

log = logging.getLogger("taskmeter.ingest")


class Ingestor:
    """Turns batches of events into stored, priced, projected usage."""

    def __init__(
        self,
        store: Store,
        prices: PriceBook,
        *,
        credit_usd: Decimal,
        default_rate: Decimal,
        credits_low_percent: int = 10,
    ) -> None:
        self.store = store
        self.prices = prices
        self.credit_usd = credit_usd
        self.default_rate = default_rate
        self.credits_low_percent = credits_low_percent

    def cost_nano(self, event: LlmCall) -> tuple[int | None, int | None]:
        """The call's cost in nano-credits and its price source's id (None, None: unpriced)."""
        if event.cost_usd is not None:
            source = self.prices.stated_source(event.model, event.provider)
            return usd_to_nano_credits(event.cost_usd, self.credit_usd), source.id
        rates = self.prices.rates_for(event.model, event.provider, event.input_tokens, event.time)
        if rates is None:
            return None, None
        usd = rates.cost(
            CallTokens(
                event.input_tokens,
                event.output_tokens,
                event.cache_read_tokens,
                event.cache_write_tokens,
            )
        )
        assert rates.source is not None
        return usd_to_nano_credits(usd, self.credit_usd), rates.source.id

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
                    # Price sources first used by this batch (rarely any): recorded with it.
                    sources = self.prices.sources.write_pending(db)
                self.prices.sources.committed(sources)
                outcome.rejected.sort(key=operator.attrgetter("index"))
                return outcome
            except IntegrityError as exc:
                if not clashed_on_stream(exc):
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
        owners = resolve_owners(db, emails)
        projects = self._projects_named(db, principal, by_stream, owners)

        ids = sorted(by_stream)
        streams = {row.stream_id: row for row in map(StreamRow, lock_streams(db, ids))}
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
        stored = stored_pairs(db, probed) if probed else {}
        rollups = RollupDeltas()
        open_before = {sid for sid, s in streams.items() if s.status is None}
        before = {sid: stream_contribution(s) for sid, s in streams.items()}
        spend_before = {sid: spend_of(s) for sid, s in streams.items()}

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
                    self._check(principal, stream, event, owners, projects)
                except _Reject as rejection:
                    result.rejected.append(
                        Rejection(index, event.id, rejection.code, rejection.message)
                    )
                    continue
                cost, source = self.cost_nano(event) if isinstance(event, LlmCall) else _NO_PRICE
                apply_event(stream, event, cost)
                rows.append(event_row(event, cost, now, source))
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
        # Reads that lock no row come first: every statement between the first hot-row
        # write (a rollup or a cap's spend, shared by all of a subject's batches) and the
        # commit lengthens the wait of every other batch of that subject.
        spend_after = {sid: spend_of(streams[sid]) for sid in ids}
        charges = plan_charges(
            db, spend_before, spend_after, (sid for sid in ids if streams[sid].status is None)
        )
        charged = {
            streams[sid].scope
            for sid, now_spent in spend_after.items()
            if now_spent is not None and now_spent[2] > (spend_before[sid] or (0, 0, 0))[2]
        }
        watch_low = bool(charged and self.credits_low_percent) and credits_low_watched(db)
        release_finished(
            db, [sid for sid in ids if sid in open_before and streams[sid].status is not None], now
        )
        rollups.write(db)
        over_limit, alerts = charges.apply(db)
        result.over_limit = [o.as_json() for o in over_limit]
        if alerts:
            emit_cap_alerts(db, alerts)
        if watch_low:
            emit_credits_low(db, (s for s in charged if s), self.credits_low_percent)

    def _projects_named(
        self,
        db: Session,
        principal: Principal,
        by_stream: EventsByStream,
        owners: dict[str, Owner],
    ) -> dict[tuple[str, str], ProjectRef]:
        """The projects the batch's start events name, by (owner's scope, name)."""
        wanted = []
        for of_stream in by_stream.values():
            for _, event in of_stream.values():
                if isinstance(event, StreamStarted) and event.project is not None:
                    email = event.user if principal.is_service else principal.email
                    owner = owners.get((email or "").strip().lower())
                    if owner is not None:
                        scope = scope_key(team_id=owner.team_id, user_id=owner.user_id)
                        wanted.append((scope, event.project))
        return projects_by_name(db, wanted) if wanted else {}

    def _check(
        self,
        principal: Principal,
        stream: StreamRow,
        event: Event,
        owners: dict[str, Owner],
        projects: dict[tuple[str, str], ProjectRef],
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
            if event.project is not None:
                scope = stream.scope or scope_key(team_id=owner.team_id, user_id=owner.user_id)
                project = projects.get((scope, event.project))
                if project is None:
                    raise _Reject(
                        "unknown_project",
                        f"no project {event.project!r} in the stream owner's "
                        + ("team" if scope.startswith("t") else "own usage"),
                    )
                if stream.project_id is None:
                    stream.project_id = project.id
            if stream.scope is None:
                # Ownership is stamped, not looked up: the owner's team at this moment.
                stream.owner_user_id = owner.user_id
                stream.team_id = owner.team_id
                stream.scope = scope_key(team_id=owner.team_id, user_id=owner.user_id)
                stream.neo_cost_rate = owner.neo_cost_rate
        elif not principal.is_service and stream.owner_user_id is None:
            stream.owner_user_id = principal.user_id


_NO_PRICE: tuple[None, None] = (None, None)

# Each retry finds the raced streams stored; a third race in a row is not a race.
_ATTEMPTS = 3


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
