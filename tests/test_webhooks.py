"""Webhook alerts on both stores: the outbox, fan-out, signing, retries and the CLI, delivered
by the worker of the real app to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from taskmeter.app import create_app
from taskmeter.cli import app
from taskmeter.config import Settings
from taskmeter.store import Store
from taskmeter.store.tables import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_EVENTS,
    CreditGrant,
    WebhookEvent,
)
from taskmeter.timeutil import utc_now
from taskmeter.webhooks import enqueue
from taskmeter.webhooks.credits import sweep_expiring
from taskmeter.webhooks.signing import signature
from taskmeter.webhooks.worker import backoff_s, claim_due
from tests.factories import Factory
from tests.test_governance import ingest, stream_batch
from tests.webhook_receiver import Receiver, verified

FAST = {
    "webhook_poll_s": 0.05,
    "webhook_backoff_base_s": 0.3,
    "webhook_backoff_max_s": 1.0,
    "webhook_max_attempts": 3,
}


def run(cli: CliRunner, *args: str, ok: bool = True) -> str:
    result = cli.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.stdout
    assert result.exit_code != 0, (args, result.stdout)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def add_endpoint(cli: CliRunner, url: str, events: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run(cli, "webhooks", "add", url, "--events", events, "--json"))
    return out


def deliveries(cli: CliRunner, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(run(cli, "webhooks", "deliveries", "--json", *args))
    return rows


def wait_until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def fast_client(database_url: str, store: Store) -> Iterator[TestClient]:
    """The app with its delivery worker polling fast and retrying after tenths of a second."""
    settings = Settings(database_url=database_url, **FAST)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def solo(factory: Factory, cli: CliRunner) -> str:
    factory.person("solo@example.com")
    run(cli, "credits", "grant", "--user", "solo@example.com", "100")
    return factory.service_key()


def test_cap_thresholds_once_each_per_period_and_reached_once_signed(
    fast_client: TestClient, cli: CliRunner, receiver: Receiver, solo: str, store: Store
) -> None:
    endpoint = add_endpoint(cli, receiver.url, "cap.threshold,cap.reached")
    assert endpoint["secret"].startswith("whsec_")
    run(cli, "caps", "set", "--user", "solo@example.com", "--limit", "10", "--period", "month")
    ingest(fast_client, solo, stream_batch("solo@example.com", credits="6")[1])  # 60 %
    _, again = stream_batch("solo@example.com", credits="2.5")  # 85 %
    ingest(fast_client, solo, again)
    ingest(fast_client, solo, again)  # duplicates: nothing changes, nothing is sent
    ingest(fast_client, solo, stream_batch("solo@example.com", credits="2")[1])  # 105 %
    ingest(fast_client, solo, stream_batch("solo@example.com", credits="1")[1])  # past it
    got = receiver.wait_for(4)
    time.sleep(0.5)  # nothing more comes
    assert len(receiver.received) == 4
    payloads = [verified(endpoint["secret"], request) for request in got]
    seen = sorted(
        (p["type"], p["data"]["threshold_percent"] or 100, p["data"]["used_credits"])
        for p in payloads
    )
    assert seen == [
        ("cap.reached", 100, 10.5),
        ("cap.threshold", 50, 6.0),
        ("cap.threshold", 80, 8.5),
        ("cap.threshold", 95, 10.5),
    ]
    for payload in payloads:
        assert set(payload) == {"type", "timestamp", "data"}
        assert payload["data"]["limit_credits"] == 10.0 and payload["data"]["kind"] == "user"
    assert len({r.headers["webhook-id"] for r in got}) == 4
    # The signature is the published algorithm, recomputed here too.
    first = got[0]
    assert first.headers["webhook-signature"] == signature(
        endpoint["secret"],
        first.headers["webhook-id"],
        int(first.headers["webhook-timestamp"]),
        first.body,
    )
    assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 60
    wait_until(lambda: len(deliveries(cli, "--status", "delivered")) == 4)
    with store.read() as db:
        assert db.scalar(select(func.count()).select_from(WEBHOOK_EVENTS)) == 4


def test_a_500_is_retried_with_backoff_then_delivered(
    fast_client: TestClient, cli: CliRunner, factory: Factory
) -> None:
    receiver = Receiver(statuses=(500, 503)).start()
    try:
        endpoint = add_endpoint(cli, receiver.url, "credits.low")
        run(cli, "webhooks", "test", str(endpoint["id"]))
        first, second, third = receiver.wait_for(3)
    finally:
        receiver.stop()
    assert [r.answered for r in (first, second, third)] == [500, 503, 200]
    assert len({r.headers["webhook-id"] for r in (first, second, third)}) == 1
    assert verified(endpoint["secret"], third)["type"] == "webhook.test"
    # Backoff base 0.3 s doubling, with equal jitter: at least half of each delay.
    assert second.at - first.at >= 0.15 and third.at - second.at >= 0.3
    (row,) = wait_until(lambda: deliveries(cli, "--status", "delivered"))
    assert row["attempts"] == 3 and row["last_status"] == 200 and row["event"] == "webhook.test"
    assert row["delivered_at"] is not None and row["last_error"] is None


def test_max_attempts_then_failed_shown_in_deliveries_and_metrics(
    fast_client: TestClient, cli: CliRunner
) -> None:
    receiver = Receiver(then=500).start()
    try:
        endpoint = add_endpoint(cli, receiver.url, "cap.reached")
        run(cli, "webhooks", "test", str(endpoint["id"]))
        (row,) = wait_until(lambda: deliveries(cli, "--status", "failed"))
        assert len(receiver.received) == 3
    finally:
        receiver.stop()
    assert row["attempts"] == 3 and row["last_status"] == 500 and row["last_error"] == "HTTP 500"
    assert deliveries(cli, "--status", "pending") == []
    table = run(cli, "webhooks", "deliveries", "--status", "failed")
    assert "failed" in table and "HTTP 500" in table
    metrics = fast_client.get("/metrics").text
    assert 'taskmeter_webhook_deliveries{status="failed"} 1' in metrics
    assert 'taskmeter_webhook_deliveries{status="pending"} 0' in metrics
    assert "taskmeter_webhook_oldest_pending_seconds 0.000" in metrics


def test_an_unreachable_receiver_is_retried_and_reported(
    fast_client: TestClient, cli: CliRunner
) -> None:
    down = Receiver()  # never started: connections are refused
    endpoint = add_endpoint(cli, down.url, "cap.reached")
    run(cli, "webhooks", "test", str(endpoint["id"]))
    (row,) = wait_until(lambda: deliveries(cli, "--status", "failed"), timeout=30)
    assert row["attempts"] == 3 and row["last_status"] is None
    assert "ConnectError" in row["last_error"]


def test_a_repeated_dedupe_key_is_one_event_and_keeps_the_transaction(
    store: Store, cli: CliRunner
) -> None:
    add_endpoint(cli, "http://127.0.0.1:9/a", "cap.threshold")
    add_endpoint(cli, "https://example.com/b", "cap.threshold,cap.reached")
    add_endpoint(cli, "https://example.com/c", "credits.low")
    with store.write() as db:
        first = enqueue(db, "cap.threshold", {"n": 1}, dedupe_key="k1")
        assert enqueue(db, "cap.threshold", {"n": 2}, dedupe_key="k1") == 0
        # The transaction goes on after the conflict, and commits.
        db.execute(insert(CreditGrant).values(amount_nano=1, granted_at=utc_now(), user_id=None))
    with store.write() as db:
        assert enqueue(db, "cap.threshold", {"n": 3}, dedupe_key="k1") == 0
    assert first > 0
    with store.read() as db:
        (event,) = db.scalars(select(WebhookEvent)).all()
        assert json.loads(event.body)["data"] == {"n": 1}
        endpoints = db.scalars(
            select(WEBHOOK_DELIVERIES.c.endpoint_id).order_by(WEBHOOK_DELIVERIES.c.endpoint_id)
        ).all()
        assert db.scalar(select(func.count()).select_from(CreditGrant)) == 1
    assert endpoints == [1, 2]  # the two subscribers of cap.threshold, not credits.low's


def test_credits_low_once_per_account_state(
    fast_client: TestClient, cli: CliRunner, factory: Factory, store: Store
) -> None:
    factory.person("low@example.com")
    run(cli, "credits", "grant", "--user", "low@example.com", "10")
    key = factory.service_key()
    add_endpoint(cli, "http://127.0.0.1:9/low", "credits.low")

    def lows() -> list[dict[str, Any]]:
        with store.read() as db:
            rows = db.scalars(select(WebhookEvent.body).where(WebhookEvent.type == "credits.low"))
            return [json.loads(body) for body in rows]

    ingest(fast_client, key, stream_batch("low@example.com", credits="8")[1])  # 20 % left
    assert lows() == []
    ingest(fast_client, key, stream_batch("low@example.com", credits="1.5")[1])  # 5 % left
    ingest(fast_client, key, stream_batch("low@example.com", credits="0.1")[1])
    (low,) = lows()
    assert low["data"] == {
        "account": {"user": "low@example.com"},
        "issued_credits": 10.0,
        "used_credits": 9.5,
        "available_credits": 0.5,
        "threshold_percent": 10,
    }
    # A new grant arms it again.
    run(cli, "credits", "grant", "--user", "low@example.com", "10")
    ingest(fast_client, key, stream_batch("low@example.com", credits="9")[1])  # 0.4 of 20 left
    assert [e["data"]["available_credits"] for e in lows()] == [0.5, 1.4]


def test_credits_expiring_once_per_grant(store: Store, cli: CliRunner, factory: Factory) -> None:
    factory.person("exp@example.com")
    soon = (utc_now() + timedelta(days=2)).isoformat()
    later = (utc_now() + timedelta(days=30)).isoformat()
    run(cli, "credits", "grant", "--user", "exp@example.com", "5", "--expires", soon)
    run(cli, "credits", "grant", "--user", "exp@example.com", "5", "--expires", later)
    assert sweep_expiring(store, 7) == 0  # nobody subscribes
    add_endpoint(cli, "http://127.0.0.1:9/exp", "credits.expiring")
    assert sweep_expiring(store, 7) == 1
    assert sweep_expiring(store, 7) == 0
    assert sweep_expiring(store, 60) == 1  # the later grant, within 60 days
    with store.read() as db:
        bodies = db.scalars(select(WebhookEvent.body).order_by(WebhookEvent.id)).all()
    first = json.loads(bodies[0])
    assert first["type"] == "credits.expiring"
    assert first["data"]["grant_credits"] == 5.0 and first["data"]["available_credits"] == 10.0
    assert first["data"]["account"] == {"user": "exp@example.com"}


def test_workers_never_claim_the_same_delivery(store: Store, cli: CliRunner) -> None:
    endpoint = add_endpoint(cli, "http://127.0.0.1:9/x", "cap.reached")
    with store.write() as db:
        for n in range(40):
            enqueue(db, "cap.reached", {"n": n}, dedupe_key=f"k{n}", endpoint_ids=[endpoint["id"]])
    claims: list[list[int]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            got = [c.delivery_id for c in claim_due(store, 3, 60)]
            with lock:
                claims.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [d for got in claims for d in got]
    assert sorted(claimed) == list(range(1, 41))  # each exactly once
    assert claim_due(store, 10, 60) == []  # leased: not due again until the lease ends
    later = utc_now() + timedelta(seconds=61)
    assert len(claim_due(store, 100, 60, now=later)) == 40  # expired leases are claimed again


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    for attempts, low, high in ((1, 5, 10), (2, 10, 20), (3, 20, 40), (20, 150, 300)):
        delays = [backoff_s(attempts, 10, 300) for _ in range(50)]
        assert all(low <= d <= high for d in delays), (attempts, delays)
        assert len(set(delays)) > 1
    assert backoff_s(1, 10, 300, retry_after_s=120) == 120
    assert backoff_s(1, 10, 300, retry_after_s=9999) == 300


def test_cli_add_list_remove_and_bad_input(cli: CliRunner, store: Store) -> None:
    out = run(cli, "webhooks", "add", "https://example.com/h", "--events", "cap.reached",
              "--description", "ops")  # fmt: skip
    assert "added webhook endpoint 1" in out and "whsec_" in out
    listed = json.loads(run(cli, "webhooks", "list", "--json"))
    assert listed[0]["url"] == "https://example.com/h" and listed[0]["events"] == ["cap.reached"]
    assert "secret" not in listed[0] and "whsec_" not in run(cli, "webhooks", "list")
    for url in ("ftp://example.com/h", "example.com/h", "http://", "http://h:port/"):
        assert "http" in run(cli, "webhooks", "add", url, "--events", "cap.reached", ok=False)
    error = run(
        cli, "webhooks", "add", "https://e.com", "--events", "cap.reached,cap.nope", ok=False
    )
    assert "unknown event 'cap.nope'" in error and "credits.expiring" in error
    assert "names no event" in run(cli, "webhooks", "add", "https://e.com", "--events", ",",
                                   ok=False)  # fmt: skip
    assert "no webhook endpoint 9" in run(cli, "webhooks", "remove", "9", ok=False)
    assert "no webhook endpoint 9" in run(cli, "webhooks", "test", "9", ok=False)
    assert "--status" in run(cli, "webhooks", "deliveries", "--status", "sent", ok=False)
    assert "--limit" in run(cli, "webhooks", "deliveries", "--limit", "0", ok=False)
    run(cli, "webhooks", "test", "1")
    removed = json.loads(run(cli, "webhooks", "remove", "1", "--json"))
    assert removed == {"removed": True, "id": 1, "dropped_pending": 1}
    assert json.loads(run(cli, "webhooks", "list", "--json")) == []
    (row,) = deliveries(cli)
    assert row["status"] == "failed" and row["last_error"] == "endpoint removed"
    assert "no webhook endpoint 1" in run(cli, "webhooks", "remove", "1", ok=False)


def test_metrics_report_the_pending_backlog(
    database_url: str, store: Store, cli: CliRunner
) -> None:
    endpoint = add_endpoint(cli, "http://127.0.0.1:9/m", "cap.reached")
    run(cli, "webhooks", "test", str(endpoint["id"]))
    settings = Settings(database_url=database_url, webhooks=False)
    with TestClient(create_app(settings, store=store)) as client:
        time.sleep(0.05)
        text = client.get("/metrics").text
    assert 'taskmeter_webhook_deliveries{status="pending"} 1' in text
    (age,) = [line for line in text.splitlines() if line.startswith("taskmeter_webhook_oldest")]
    assert float(age.split()[1]) > 0
