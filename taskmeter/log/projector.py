"""Projection from the ingest log into the store: pull, merge, apply once, acknowledge.

    fetch up to `batch` messages (durable pull consumer, shared by every projector)
      ─ decode ─ group by principal (order kept) ─ Ingestor.ingest(principal, events…)
        in a worker thread: one store transaction a group
      ─ commit ─▶ ack each message of the group
      store unavailable ─▶ no ack; the messages are redelivered after a pause

Acknowledging only after the commit is what makes a crash lose nothing: a message whose
transaction did not commit is delivered again, and applying it again adds nothing (events are
idempotent on (stream_id, event_id)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy.exc import OperationalError

from taskmeter.identity.principal import Principal
from taskmeter.ingest.batch import IngestResult
from taskmeter.ingest.service import Ingestor
from taskmeter.log.messages import LoggedBatch, decode
from taskmeter.log.publisher import CONSUMER, IngestLog

__all__ = ["Projector", "ProjectorStats"]

log = logging.getLogger("taskmeter.projector")

FETCH_MESSAGES = 32
# A merged transaction holds at most about this many events (a batch is at most 1000).
MAX_EVENTS = 16_000


@dataclass
class ProjectorStats:
    messages: int = 0
    events_accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    store_failures: int = 0


def _principal_key(principal: Principal) -> tuple[Any, ...]:
    return (principal.service_name, principal.user_id, principal.email)


class Projector:
    """Applies the ingest log to the store until stopped."""

    def __init__(
        self,
        ingest_log: IngestLog,
        ingestor: Ingestor,
        *,
        fetch: int = FETCH_MESSAGES,
        run_blocking: Callable[..., Any] | None = None,
    ) -> None:
        self.ingest_log = ingest_log
        self.ingestor = ingestor
        self.fetch = fetch
        self.stats = ProjectorStats()
        self._run_blocking = run_blocking or asyncio.to_thread
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        js = self.ingest_log.jetstream
        subscription = await js.pull_subscribe(
            self.ingest_log.subject, durable=CONSUMER, stream=self.ingest_log.stream
        )
        backoff = 0.5
        while not self._stop.is_set():
            try:
                messages = await subscription.fetch(self.fetch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # the log unreachable: try again shortly
                log.warning("ingest log fetch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._apply(messages)
                backoff = 0.5
            except OperationalError as exc:
                # The store is down or unreachable: nothing was acknowledged, so JetStream
                # delivers these again; wait before asking for more.
                self.stats.store_failures += 1
                log.warning("store unavailable while projecting (%s); retrying", exc.orig)
                await self._retry_later(messages, backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                log.exception(
                    "projecting %d log messages failed; they will be retried", len(messages)
                )
                await self._retry_later(messages, backoff)
                backoff = min(backoff * 2, 10.0)

    async def _retry_later(self, messages: list[Any], delay: float) -> None:
        for message in messages:
            with contextlib.suppress(Exception):  # unacknowledged, it comes back anyway
                await message.nak(delay=delay)
        await asyncio.sleep(delay)

    async def _apply(self, messages: list[Any]) -> None:
        groups: list[tuple[Principal, list[Any], list[Any]]] = []
        by_principal: dict[tuple[Any, ...], int] = {}
        for message in messages:
            try:
                batch: LoggedBatch = decode(message.data)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ingest log message %s is unreadable (%s); dropped", message, exc)
                await message.term()
                continue
            key = _principal_key(batch.principal)
            index = by_principal.get(key)
            if index is None or len(groups[index][1]) + len(batch.events) > MAX_EVENTS:
                by_principal[key] = index = len(groups)
                groups.append((batch.principal, [], []))
            groups[index][1].extend(batch.events)
            groups[index][2].append(message)
        for principal, events, of_group in groups:
            result: IngestResult = await self._run_blocking(self.ingestor.ingest, principal, events)
            self._count(result, len(of_group))
            for message in of_group:
                await message.ack()

    def _count(self, result: IngestResult, messages: int) -> None:
        stats = self.stats
        stats.messages += messages
        stats.events_accepted += result.accepted
        stats.duplicates += result.duplicates
        for rejection in result.rejected:
            stats.rejected[rejection.code] = stats.rejected.get(rejection.code, 0) + 1
            log.info(
                "event %s rejected when applied: %s: %s",
                rejection.id,
                rejection.code,
                rejection.message,
            )
