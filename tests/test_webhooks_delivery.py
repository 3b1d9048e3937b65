"""Webhook delivery by `taskmeter serve` as a real process, on both stores: an event enqueued
survives `kill -9` of serve and is delivered after the restart; a receiver that hangs never
slows or fails ingestion, and a clean stop hands its in-flight claims back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from taskmeter.store import Store
from taskmeter.store.tables import WEBHOOK_DELIVERIES
from tests.factories import Factory
from tests.processes import free_port, serve, stop
from tests.test_governance import stream_batch
from tests.test_webhooks import add_endpoint, run, wait_until
from tests.webhook_receiver import Receiver, verified

ENV = {
    "TASKMETER_WEBHOOK_POLL_S": "0.05",
    "TASKMETER_WEBHOOK_BACKOFF_BASE_S": "0.5",
    "TASKMETER_WEBHOOK_BACKOFF_MAX_S": "1",
    "TASKMETER_WEBHOOK_MAX_ATTEMPTS": "100",
}


def _rows(store: Store) -> list[Any]:
    with store.read() as db:
        return list(db.execute(select(WEBHOOK_DELIVERIES).order_by(WEBHOOK_DELIVERIES.c.id)))


def _capped_user(factory: Factory, cli: CliRunner, limit: str) -> str:
    factory.person("solo@example.com")
    run(cli, "credits", "grant", "--user", "solo@example.com", "100")
    run(cli, "caps", "set", "--user", "solo@example.com", "--limit", limit, "--period", "month")
    return factory.service_key()


def _post(base: str, key: str, events: list[dict[str, Any]]) -> tuple[int, float]:
    started = time.monotonic()
    answer = httpx.post(
        f"{base}/api/v1/usage/events",
        headers={"X-Api-Key": key},
        json={"events": events},
        timeout=30,
    )
    return answer.status_code, time.monotonic() - started


def test_an_enqueued_event_survives_kill_9_and_is_delivered_after_restart(
    database_url: str, store: Store, cli: CliRunner, factory: Factory, tmp_path: Path
) -> None:
    key = _capped_user(factory, cli, "10")
    receiver = Receiver(port=free_port())  # down at first: connections are refused
    endpoint = add_endpoint(cli, receiver.url, "cap.threshold")
    process, base = serve(database_url, tmp_path, ENV)
    try:
        assert _post(base, key, stream_batch("solo@example.com", credits="6")[1])[0] == 200
        # Attempted, refused, waiting for its retry: then serve dies without warning.
        wait_until(lambda: [r for r in _rows(store) if r.attempts >= 1 and r.lease_until is None])
    finally:
        process.kill()
        process.wait(timeout=10)
    (row,) = _rows(store)
    assert row.status == "pending" and "ConnectError" in row.last_error
    receiver.start()
    process, base = serve(database_url, tmp_path, ENV)
    try:
        (request,) = receiver.wait_for(1, timeout=30)
        payload = verified(endpoint["secret"], request)
        assert payload["type"] == "cap.threshold"
        assert payload["data"]["threshold_percent"] == 50
        (done,) = wait_until(lambda: [r for r in _rows(store) if r.status == "delivered"])
        assert done.attempts >= 2 and done.last_status == 200
    finally:
        stop(process)
        receiver.stop()


def test_a_hanging_receiver_never_slows_or_fails_ingestion(
    database_url: str, store: Store, cli: CliRunner, factory: Factory, tmp_path: Path
) -> None:
    key = _capped_user(factory, cli, "1")
    receiver = Receiver().start()
    receiver.hang.set()  # reads the request, never answers
    endpoint = add_endpoint(cli, receiver.url, "cap.threshold,cap.reached")
    process, base = serve(database_url, tmp_path, {**ENV, "TASKMETER_WEBHOOK_TIMEOUT_S": "60"})
    try:
        answers = [_post(base, key, stream_batch("solo@example.com", credits="0.6")[1])]
        receiver.wait_for(1)  # the 50 % alert is being sent, and hangs
        for _ in range(20):  # 80 %, 95 %, the limit, then more spend
            answers.append(_post(base, key, stream_batch("solo@example.com", credits="0.1")[1]))
        for _ in range(3):
            run(cli, "webhooks", "test", str(endpoint["id"]))
        receiver.wait_for(7)  # every delivery is in flight at once, none answered
        answers.append(_post(base, key, stream_batch("solo@example.com", credits="0.1")[1]))
        assert {status for status, _ in answers} == {200}
        slowest = max(seconds for _, seconds in answers)
        assert slowest < 3, f"an ingest batch took {slowest:.2f} s"
        rows = _rows(store)
        assert len(rows) == 7
        assert all(r.status == "pending" and r.attempts == 1 for r in rows)
        assert all(r.lease_until is not None for r in rows)  # in flight, leased
        stop(process)  # SIGTERM: a clean stop hands the claims back at once
        assert all(r.lease_until is None and r.status == "pending" for r in _rows(store))
    finally:
        stop(process)
        receiver.stop()
