"""The delivery worker inside `serve`: claim due deliveries, sign, POST, record the outcome.

    loop ─ due? (a read: no write lock while idle) ─ claim up to the free slots
         │   UPDATE … SET lease_until = now + lease, attempts + 1 WHERE id IN (due rows
         │   [FOR UPDATE SKIP LOCKED on PostgreSQL]) RETURNING …
         ├─ each claimed row, concurrently: sign ─ POST (bounded by the timeout) ─ record:
         │     2xx ─▶ delivered
         │     else ─▶ attempts < max: pending again at now + backoff | failed
         └─ every TASKMETER_SWEEP_INTERVAL_S: the credits.expiring sweep

The lease makes a claim safe without holding a transaction open over the network: on SQLite
the claim is one conditional UPDATE in a write transaction (exclusive), on PostgreSQL the due
rows are picked with SKIP LOCKED, so workers of several processes never take the same row.
An outcome is recorded only under the claim's token; a worker killed mid-send leaves its rows
leased until the lease expires, when another claims them again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import ColumnElement, or_, select, update

from taskmeter import __version__
from taskmeter.config import Settings
from taskmeter.store import Store
from taskmeter.store.tables import WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS, WEBHOOK_EVENTS
from taskmeter.timeutil import utc_now
from taskmeter.webhooks.credits import sweep_expiring
from taskmeter.webhooks.signing import signed_headers

__all__ = [
    "Claimed",
    "Outcome",
    "WebhookWorker",
    "backoff_s",
    "claim_due",
    "record",
    "release_leases",
]

log = logging.getLogger("taskmeter.webhooks")

# Deliveries in flight at once in one process.
CONCURRENCY = 16
# A lease outlives the longest attempt by this much.
LEASE_MARGIN_S = 30.0
_jitter = random.SystemRandom()

D = WEBHOOK_DELIVERIES.c


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    token: str
    attempts: int  # this attempt's number, from 1
    url: str
    secret: str
    message_id: str
    body: str


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def backoff_s(
    attempts: int, base_s: float, max_s: float, retry_after_s: float | None = None
) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base × 2^(attempts−1),
    at most max, with equal jitter (half fixed, half random); a receiver's Retry-After is
    honoured up to the maximum."""
    delay = min(max_s, base_s * 2.0 ** min(attempts - 1, 60))
    delay = delay / 2 + _jitter.random() * delay / 2
    if retry_after_s is not None:
        delay = max(delay, min(max_s, retry_after_s))
    return delay


def _due_conditions(now: datetime) -> list[ColumnElement[bool]]:
    return [
        D.status == "pending",
        D.next_attempt_at <= now,
        or_(D.lease_until.is_(None), D.lease_until < now),
    ]


def any_due(store: Store, now: datetime | None = None) -> bool:
    now = now or utc_now()
    with store.read() as db:
        return db.scalar(select(D.id).where(*_due_conditions(now)).limit(1)) is not None


def claim_due(
    store: Store, limit: int, lease_s: float, now: datetime | None = None
) -> list[Claimed]:
    """Lease up to `limit` due deliveries to this worker, oldest due first."""
    now = now or utc_now()
    token = uuid.uuid4().hex
    with store.write() as db:
        due = (
            select(D.id).where(*_due_conditions(now)).order_by(D.next_attempt_at, D.id).limit(limit)
        )
        if db.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claimed = db.execute(
            update(WEBHOOK_DELIVERIES)
            .where(D.id.in_(due.scalar_subquery()), *_due_conditions(now))
            .values(
                lease_until=now + timedelta(seconds=lease_s),
                lease_token=token,
                attempts=D.attempts + 1,
                updated_at=now,
            )
            .returning(D.id, D.attempts, D.event_id, D.endpoint_id)
        ).all()
        if not claimed:
            return []
        events = {row.id: row for row in db.execute(
            select(WEBHOOK_EVENTS.c.id, WEBHOOK_EVENTS.c.message_id, WEBHOOK_EVENTS.c.body)
            .where(WEBHOOK_EVENTS.c.id.in_({c.event_id for c in claimed}))
        )}  # fmt: skip
        endpoints = {row.id: row for row in db.execute(
            select(WEBHOOK_ENDPOINTS.c.id, WEBHOOK_ENDPOINTS.c.url, WEBHOOK_ENDPOINTS.c.secret)
            .where(WEBHOOK_ENDPOINTS.c.id.in_({c.endpoint_id for c in claimed}))
        )}  # fmt: skip
    return [
        Claimed(
            c.id,
            token,
            c.attempts,
            endpoints[c.endpoint_id].url,
            endpoints[c.endpoint_id].secret,
            events[c.event_id].message_id,
            events[c.event_id].body,
        )
        for c in sorted(claimed, key=lambda c: c.id)
    ]


def record(store: Store, claimed: Claimed, outcome: Outcome, settings: Settings) -> str:
    """Write an attempt's outcome (under the claim's token): the delivery's new status."""
    now = utc_now()
    values: dict[str, object] = {
        "lease_until": None,
        "lease_token": None,
        "last_status": outcome.status,
        "last_error": None if outcome.ok else (outcome.error or "")[:500],
        "updated_at": now,
    }
    if outcome.ok:
        values.update(status="delivered", delivered_at=now)
    elif claimed.attempts >= settings.webhook_max_attempts:
        values.update(status="failed")
    else:
        delay = backoff_s(
            claimed.attempts,
            settings.webhook_backoff_base_s,
            settings.webhook_backoff_max_s,
            outcome.retry_after_s,
        )
        values.update(status="pending", next_attempt_at=now + timedelta(seconds=delay))
    with store.write() as db:
        db.execute(
            update(WEBHOOK_DELIVERIES)
            .where(D.id == claimed.delivery_id, D.lease_token == claimed.token)
            .values(**values)
        )
    return str(values["status"])


def release_leases(store: Store, claims: list[Claimed]) -> None:
    with store.write() as db:
        for claimed in claims:
            db.execute(
                update(WEBHOOK_DELIVERIES)
                .where(D.id == claimed.delivery_id, D.lease_token == claimed.token)
                .values(lease_until=None, lease_token=None)
            )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None or response.status_code not in (429, 503):
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def send(client: httpx.AsyncClient, claimed: Claimed, timeout_s: float) -> Outcome:
    """One attempt: POST the body, signed now; the answer's body is never read."""
    headers = signed_headers(claimed.secret, claimed.message_id, int(time.time()), claimed.body)
    headers["user-agent"] = f"taskmeter-webhooks/{__version__}"
    try:
        async with asyncio.timeout(timeout_s):
            request = client.build_request(
                "POST", claimed.url, content=claimed.body.encode(), headers=headers
            )
            response = await client.send(request, stream=True)
            await response.aclose()
    except TimeoutError:
        return Outcome(False, error=f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(False, error=reason)
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code)
    return Outcome(
        False, response.status_code, f"HTTP {response.status_code}", _retry_after(response)
    )


class WebhookWorker:
    """Delivers the outbox until cancelled, surviving store and network faults."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S

    async def run(self) -> None:
        in_flight: dict[asyncio.Task[None], Claimed] = {}
        last_sweep = float("-inf")
        timeout = httpx.Timeout(self.settings.webhook_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                while True:
                    if time.monotonic() - last_sweep >= self.settings.sweep_interval_s:
                        last_sweep = time.monotonic()
                        await self._sweep()
                    free = CONCURRENCY - len(in_flight)
                    for claimed in await self._claim(free) if free > 0 else []:
                        task = asyncio.create_task(self._deliver(client, claimed))
                        in_flight[task] = claimed
                        task.add_done_callback(lambda done: in_flight.pop(done, None))
                    if in_flight:
                        await asyncio.wait(
                            set(in_flight),
                            timeout=self.settings.webhook_poll_s,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    else:
                        await asyncio.sleep(self.settings.webhook_poll_s)
            finally:
                stopped = dict(in_flight)
                for task in stopped:
                    task.cancel()
                await asyncio.gather(*stopped, return_exceptions=True)
                unrecorded = [claimed for task, claimed in stopped.items() if task.cancelled()]
                if unrecorded:
                    # A clean stop hands its claims back at once rather than when the leases
                    # run out; the attempt stays counted (it may have reached the receiver).
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(release_leases, self.store, unrecorded)

    async def _claim(self, limit: int) -> list[Claimed]:
        try:
            if not await asyncio.to_thread(any_due, self.store):
                return []
            return await asyncio.to_thread(claim_due, self.store, limit, self.lease_s)
        except Exception:
            log.exception("webhooks: could not claim deliveries; retrying")
            return []

    async def _sweep(self) -> None:
        try:
            await asyncio.to_thread(sweep_expiring, self.store, self.settings.credits_expiring_days)
        except Exception:
            log.exception("webhooks: the credits.expiring sweep failed; retrying later")

    async def _deliver(self, client: httpx.AsyncClient, claimed: Claimed) -> None:
        outcome = await send(client, claimed, self.settings.webhook_timeout_s)
        try:
            status = await asyncio.to_thread(record, self.store, claimed, outcome, self.settings)
        except Exception:
            # Unrecorded: the lease runs out and the delivery is attempted again.
            log.exception("webhooks: could not record delivery %d", claimed.delivery_id)
            return
        if status != "delivered":
            log.warning(
                "webhooks: delivery %d to %s attempt %d: %s (%s)",
                claimed.delivery_id, claimed.url, claimed.attempts, outcome.error, status,
            )  # fmt: skip
