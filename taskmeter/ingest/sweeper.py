"""The stream sweeper: an open stream that has received nothing for the timeout is closed as
`aborted` with "stream timed out", its execution time running to its last event.

It runs inside `serve` every TASKMETER_SWEEP_INTERVAL_S and as `taskmeter sweep`. On
PostgreSQL a transaction-scoped advisory lock makes one replica sweep at a time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text

from taskmeter.ingest.tasks import project_tasks
from taskmeter.store import Store
from taskmeter.store.tables import Stream
from taskmeter.timeutil import utc_now
from taskmeter.usage.rollups import RollupDeltas, stream_contribution

__all__ = ["SweepReport", "run_sweeper", "sweep"]

log = logging.getLogger("taskmeter.sweeper")
SWEEP_LOCK_ID = 7_325_012
BATCH = 500
TIMED_OUT = "stream timed out"


@dataclass(frozen=True)
class SweepReport:
    closed: int
    ownerless: int
    skipped: bool = False


def sweep(store: Store, timeout_s: int, *, now: datetime | None = None) -> SweepReport:
    cutoff = (now or utc_now()) - timedelta(seconds=timeout_s)
    closed = 0
    while True:
        with store.write() as db:
            if db.get_bind().dialect.name == "postgresql" and not db.scalar(
                text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": SWEEP_LOCK_ID}
            ):
                return SweepReport(closed=closed, ownerless=0, skipped=True)
            idle = db.scalars(
                select(Stream)
                .where(
                    Stream.status.is_(None),
                    Stream.started.is_(True),
                    Stream.last_received_at < cutoff,
                )
                .order_by(Stream.last_received_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            rollups = RollupDeltas()
            for stream in idle:
                before = stream_contribution(stream)
                stream.status = "aborted"
                stream.error_message = TIMED_OUT
                stream.finished_at = stream.last_event_at
                stream.finish_event_id = None
                stream.stated_execution_ms = None
                stream.swept = True
                rollups.stream_changed(before, stream_contribution(stream))
            db.flush()
            project_tasks(db, {(s.scope, s.task_id) for s in idle if s.scope is not None}, rollups)
            rollups.write(db)
            closed += len(idle)
            if len(idle) < BATCH:
                # Events of streams that never started have no owner: kept, never shown.
                ownerless = db.scalar(
                    select(func.count())
                    .select_from(Stream)
                    .where(
                        Stream.status.is_(None),
                        Stream.started.is_(False),
                        Stream.last_received_at < cutoff,
                    )
                )
                break
    report = SweepReport(closed=closed, ownerless=int(ownerless or 0))
    if report.closed or report.ownerless:
        log.info(
            "sweeper closed %d idle streams as aborted; %d idle streams never started "
            "(no owner: kept, not shown)",
            report.closed,
            report.ownerless,
        )
    return report


async def run_sweeper(store: Store, timeout_s: int, interval_s: int) -> None:
    """Sweep forever (until cancelled), surviving store outages."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(sweep, store, timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed; retrying in %d s", interval_s)
