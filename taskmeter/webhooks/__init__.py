"""Alerts as webhooks: a durable outbox in the store, delivered at least once, signed the
Standard Webhooks way.

    the transaction that crossed a line (an ingest batch: cap.threshold, cap.reached,
    credits.low; the worker's sweep: credits.expiring; `webhooks test`)
      ─ enqueue(db, type, data, dedupe_key=…) ─▶ webhook_events   (INSERT … ON CONFLICT DO
                                                                   NOTHING: once per key)
                                               ─▶ webhook_deliveries, one per subscribed
                                                  endpoint (fanned out at enqueue), pending
    worker task in each `serve` process (worker.py)
      ─ claims due rows (a lease: SKIP LOCKED on PostgreSQL, a conditional UPDATE on SQLite)
      ─ signs (signing.py: webhook-id, webhook-timestamp, webhook-signature v1,HMAC-SHA256)
      ─ POST {"type", "timestamp", "data"} ─▶ 2xx: delivered
                                           ─▶ otherwise: pending at now + backoff (with
                                              jitter) ... failed after the last attempt
    `taskmeter webhooks deliveries` ─▶ what was sent, what is pending, what failed

Enqueueing is an INSERT in the caller's transaction: an alert exists exactly when the usage
that caused it is committed, and ingestion never waits on a receiver. Delivery is at least
once: a receiver dedupes by `webhook-id`.
"""

from __future__ import annotations

from taskmeter.observability.metrics import COLLECTORS
from taskmeter.webhooks.metrics import backlog_lines
from taskmeter.webhooks.outbox import EVENT_TYPES, TEST_EVENT, enqueue

__all__ = ["EVENT_TYPES", "TEST_EVENT", "enqueue"]

if backlog_lines not in COLLECTORS:
    COLLECTORS.append(backlog_lines)
