"""POST /api/v1/usage/events: every event type, every rejection, the limits, on both stores."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from taskmeter.identity import service
from taskmeter.ingest import schemas
from taskmeter.store import Store
from taskmeter.store.tables import Stream, Task, UsageEvent
from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.spec import assert_error_response, seed_schema

EVENTS = "/api/v1/usage/events"


def post(client: TestClient, key: str, events: list[dict[str, Any]]) -> Any:
    return client.post(EVENTS, json={"events": events}, headers={"X-Api-Key": key})


def task_row(store: Store, task_id: str) -> dict[str, Any]:
    with store.read() as db:
        task = db.scalars(select(Task).where(Task.task_id == task_id)).one()
        row = json.loads(task.usage)
    import jsonschema_rs

    jsonschema_rs.validate(seed_schema("TaskUsage"), row)
    return row


def event_count(store: Store) -> int:
    with store.read() as db:
        return int(db.scalar(select(func.count()).select_from(UsageEvent)) or 0)


def full_stream(s: StreamEvents, user: str | None = None) -> list[dict[str, Any]]:
    extra = {"user": user} if user else {}
    s.started(0, model="gpt-4o", task_title="Scan example.com", **extra)
    s.agent(1, "recon")
    s.llm(
        2,
        model="gpt-4o",
        provider="openai",
        input_tokens=1000,
        output_tokens=200,
        cache_read_tokens=100,
        duration_ms=900,
    )
    s.tool(3, "nuclei", 1500)
    s.tool(5, "httpx", 500)
    s.tool(4, "nuclei", 700)
    s.step(6, 300)
    s.step(7, 101)
    s.agent(8, "exploit")
    s.agent(9, "recon")
    s.finished(60, "completed")
    return s.events


def test_every_event_type_builds_the_stream(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person("ada@example.com")
    s = StreamEvents("task-A")
    answer = post(client, ada.key, full_stream(s))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 11, "duplicates": 0, "rejected": []}
    row = task_row(store, "task-A")
    assert row["stream_count"] == 1 and "stream_id" not in row and "email" not in row
    assert row["model"] == "gpt-4o" and row["task_title"] == "Scan example.com"
    assert row["status"] == "completed" and row["error_message"] is None
    assert row["created_at"] == "2026-05-01T08:00:00Z"
    assert row["finished_at"] == "2026-05-01T08:01:00Z"
    assert row["total_execution_ms"] == 60_000
    assert (row["step_count"], row["avg_step_latency_ms"]) == (2, 201)  # 401/2 rounds half up
    assert (row["tool_calls"], row["tool_time_ms"]) == (3, 2700)
    assert row["tool_breakdown"] == {
        "httpx": {"calls": 1, "total_duration_ms": 500},
        "nuclei": {"calls": 2, "total_duration_ms": 2200},
    }
    assert [(h["index"], h["tool_name"], h["duration_ms"]) for h in row["tool_call_history"]] == [
        (0, "nuclei", 1500),
        (1, "nuclei", 700),
        (2, "httpx", 500),
    ]
    assert row["tool_call_history"][0]["timestamp"] == 1777622403000
    assert (row["agent_triggers"], row["agent_breakdown"]) == (3, {"exploit": 1, "recon": 2})
    assert (row["llm_calls"], row["llm_time_ms"]) == (1, 900)
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["total_tokens"],
    ) == (1000, 200, 100, 1200)
    # gpt-4o: 900 uncached × $2.5 + 100 cached × $1.25 + 200 out × $10, per MTok = $0.004375
    assert row["neo_credits"] == 0.000438  # $0.004375 / 10, rounded to 6 decimals for JSON
    assert row["llm_cost"] is None and row["neo_cost"] is None and row["is_byok"] is False


def test_rejections_land_the_rest_of_the_batch(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person("ada@example.com")
    bob = factory.person("bob@example.com")
    s = StreamEvents("task-A")
    good = [s.started(0, model="m"), s.step(1), s.finished(5)]
    bad: list[Any] = [
        "not an object",
        {**s.step(2), "type": "stream.paused"},
        {**s.step(2), "latency_ms": -5},
        {**s.llm(2), "output_tokens": -1},
        {**s.step(2), "task_id": "task-B"},
        {**s.step(2), "stream_id": "not-a-uuid"},
        {**s.step(2), "time": "yesterday"},
        {k: v for k, v in s.step(2).items() if k != "id"},
        {**s.llm(2), "cache_read_tokens": 5000},
        {**s.finished(9), "status": "running"},
        {**s.agent(2), "agent_name": "nul\x00byte"},
    ]
    answer = post(client, ada.key, [*good, *bad])
    assert answer.status_code == 207
    body = answer.json()
    assert (body["accepted"], body["duplicates"]) == (3, 0)
    codes = [(r["index"], r["code"]) for r in body["rejected"]]
    assert codes == [
        (3, "invalid_event"),
        (4, "unknown_type"),
        (5, "negative_count"),
        (6, "negative_count"),
        (7, "task_mismatch"),
        (8, "invalid_event"),
        (9, "invalid_event"),
        (10, "invalid_event"),
        (11, "invalid_event"),
        (12, "invalid_event"),
        (13, "invalid_event"),
    ]
    assert all(r["message"] for r in body["rejected"])
    assert body["rejected"][1]["id"] == bad[1]["id"]
    assert event_count(store) == 3
    # Another user's key may not write into ada's stream.
    answer = post(client, bob.key, [s.step(3)])
    assert answer.json()["rejected"][0]["code"] == "forbidden_stream"
    # Nor start a stream in someone else's name.
    other = StreamEvents("task-B")
    answer = post(client, bob.key, [other.started(0, user="ada@example.com")])
    assert answer.json()["rejected"][0]["code"] == "forbidden_stream"
    assert event_count(store) == 3


def test_stream_ids_are_validated_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch names few streams in many events: each id, as written, becomes its UUID once
    and its events share that object. The ids kept are bounded; a bad id is still rejected."""
    monkeypatch.setattr(schemas, "_STREAM_IDS", {})
    monkeypatch.setattr(schemas, "_STREAM_IDS_KEPT", 3)
    s = StreamEvents("task-A")
    first, second = (schemas.parse_event(i, s.step(i)) for i in range(2))
    assert isinstance(first, schemas.StepCompleted) and isinstance(second, schemas.StepCompleted)
    assert first.stream_id is second.stream_id == uuid.UUID(s.stream_id)
    shouted = schemas.parse_event(2, {**s.step(2), "stream_id": s.stream_id.upper()})
    assert isinstance(shouted, schemas.StepCompleted) and shouted.stream_id == first.stream_id
    for n in range(10):
        other = StreamEvents(f"task-{n}")
        parsed = schemas.parse_event(n, other.step(0))
        assert isinstance(parsed, schemas.StepCompleted)
        assert parsed.stream_id == uuid.UUID(other.stream_id)
        assert len(schemas._STREAM_IDS) <= 3
    bad = schemas.parse_event(0, {**s.step(3), "stream_id": "not-a-uuid"})
    assert isinstance(bad, schemas.Rejection) and bad.code == "invalid_event"
    assert "stream_id" in bad.message
    assert "not-a-uuid" not in schemas._STREAM_IDS


def test_a_lone_surrogate_or_nan_rejects_its_event_only(
    client: TestClient, factory: Factory, store: Store
) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); no store can keep it as text. NaN is
    not JSON, but the standard library reads it: neither may sink the batch (the fast parser
    refuses both, and the body is read again the lenient way)."""
    ada = factory.person("ada@example.com")
    s = StreamEvents("task-S")
    events = [
        s.started(0, model="m"),
        {**s.agent(1), "agent_name": "half\ud800"},
        {**s.tool(2, "nmap", 10), "duration_ms": float("nan")},
        s.finished(5),
    ]
    answer = client.post(
        EVENTS,
        content=json.dumps({"events": events}),  # ASCII, the surrogate as an escape
        headers={"X-Api-Key": ada.key, "Content-Type": "application/json"},
    )
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (1, "invalid_event"),
        (2, "invalid_event"),
    ]
    assert event_count(store) == 2


def test_service_keys_name_the_user(client: TestClient, factory: Factory, store: Store) -> None:
    factory.person("ada@example.com")
    key = factory.service_key()
    s = StreamEvents("task-S")
    answer = post(client, key, [s.started(0, model="m")])
    assert answer.json()["rejected"][0]["code"] == "user_required"
    answer = post(client, key, [s.started(0, model="m", id="s2", user="ghost@example.com")])
    assert answer.json()["rejected"][0]["code"] == "unknown_user"
    answer = post(
        client, key, [s.started(0, model="m", id="s3", user="ADA@example.com"), s.finished(3)]
    )
    assert answer.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    with store.read() as db:
        stream = db.get(Stream, uuid.UUID(s.stream_id))
        assert stream is not None and stream.scope == "u1" and stream.owner_user_id == 1


def test_duplicates_change_nothing(client: TestClient, factory: Factory, store: Store) -> None:
    ada = factory.person("ada@example.com")
    events = full_stream(StreamEvents("task-D"))
    assert post(client, ada.key, events).json()["accepted"] == 11
    before = task_row(store, "task-D")
    answer = post(client, ada.key, events + events[:3])
    assert answer.json() == {"accepted": 0, "duplicates": 14, "rejected": []}
    assert task_row(store, "task-D") == before
    assert event_count(store) == 11


def test_out_of_order_arrival_gives_the_same_row(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person("ada@example.com")
    in_order = full_stream(StreamEvents("task-1", "00000000-0000-4000-8000-000000000001"))
    shuffled = full_stream(StreamEvents("task-2", "00000000-0000-4000-8000-000000000002"))
    shuffled.reverse()
    assert post(client, ada.key, in_order).status_code == 200
    for event in shuffled:  # one event per batch, finish first, start last
        assert post(client, ada.key, [event]).json()["accepted"] == 1
    first, second = task_row(store, "task-1"), task_row(store, "task-2")
    second["task_id"] = "task-1"
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_times_with_offsets_and_unix_ms(client: TestClient, factory: Factory, store: Store) -> None:
    ada = factory.person("ada@example.com")
    s = StreamEvents("task-T")
    events = [
        s.started(0, time="2026-05-01T10:00:00+02:00"),
        s.finished(0, time=1777622460000),
    ]  # 08:01:00Z in Unix ms
    assert post(client, ada.key, events).status_code == 200
    row = task_row(store, "task-T")
    assert (row["created_at"], row["finished_at"]) == (
        "2026-05-01T08:00:00Z",
        "2026-05-01T08:01:00Z",
    )
    assert row["model"] == "unknown"  # no model stated and no calls


def test_not_a_batch_is_400_and_stores_nothing(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person()
    for body in (b"", b"{", b"[]", b'{"events": 3}', b'{"evnts": []}', b"\xff\xfe", b"[" * 100_000):
        answer = client.post(
            EVENTS, content=body, headers={**ada.headers, "content-type": "application/json"}
        )
        assert answer.status_code == 400, body[:20]
        assert_error_response(answer.json(), code="invalid_request")
    assert event_count(store) == 0
    answer = client.post(EVENTS, json={"events": []}, headers=ada.headers)
    assert answer.json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_batch_limits_are_413(client: TestClient, factory: Factory, store: Store) -> None:
    ada = factory.person()
    s = StreamEvents()
    answer = post(client, ada.key, [s.step(i) for i in range(1001)])
    assert answer.status_code == 413
    assert_error_response(answer.json(), code="payload_too_large")
    huge = [s.started(0, task_title="x" * 1000) for _ in range(0, 6000)]
    assert len(json.dumps({"events": huge})) > 5 * 1024 * 1024
    answer = client.post(EVENTS, json={"events": huge}, headers=ada.headers)
    assert answer.status_code == 413
    assert event_count(store) == 0
    answer = post(client, ada.key, [s.step(i, id=f"ok{i}") for i in range(1000)])
    assert answer.json()["accepted"] == 1000


def test_ingestion_needs_a_credential(client: TestClient) -> None:
    answer = client.post(EVENTS, json={"events": []})
    assert answer.status_code == 401
    assert_error_response(answer.json(), code="unauthorized")


def test_ownership_is_stamped_at_stream_start(
    client: TestClient, factory: Factory, store: Store
) -> None:
    admin = factory.person("boss@acme.io", team="acme", role="admin")
    eve: Person = factory.person("eve@acme.io", team="acme", role="member")
    in_team = StreamEvents("task-team")
    post(client, eve.key, [in_team.started(0, model="m"), in_team.finished(1)])
    with store.write() as db:
        service.remove_member(db, "acme", "eve@acme.io")
    solo = StreamEvents("task-solo")
    post(client, eve.key, [solo.started(0, model="m"), solo.finished(1)])
    # A late event for the team stream still counts for the team that stamped it.
    post(client, eve.key, [in_team.step(0.5)])
    with store.read() as db:
        scopes = {t: sc for t, sc in db.execute(select(Stream.task_id, Stream.scope))}
        tasks = {t: sc for t, sc in db.execute(select(Task.task_id, Task.scope))}
    assert scopes == {"task-team": "t1", "task-solo": f"u{eve.id}"}
    assert tasks == scopes
    assert task_row(store, "task-team")["step_count"] == 1
    assert admin.id == 1
