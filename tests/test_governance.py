"""Spend governance on both stores: projects, caps, authorize with reservations, over_limit.

Spend counts in the period of the stream's created_at, running streams included; usage that
happened is always recorded; refusals come from authorize, before work starts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from taskmeter.cli import app
from taskmeter.governance.caps import stream_subjects
from taskmeter.governance.periods import period_bounds
from taskmeter.governance.spend import plan_charges
from taskmeter.pricing.credits import NANO
from taskmeter.store import Store
from taskmeter.store.tables import RESERVATIONS, TEAMS
from tests.factories import Factory


def now_iso(offset_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def stream_batch(
    user: str,
    *,
    credits: str = "1",
    project: str | None = None,
    finished: bool = False,
    stream_id: str | None = None,
    task_id: str = "task-1",
) -> tuple[str, list[dict[str, Any]]]:
    """A stream that spends `credits` (a stated cost at 10 USD a credit), started now."""
    sid = stream_id or str(uuid.uuid4())
    started: dict[str, Any] = {
        "id": "s", "type": "stream.started", "time": now_iso(-5), "stream_id": sid,
        "task_id": task_id, "user": user, "model": "gpt-4o",
    }  # fmt: skip
    if project is not None:
        started["project"] = project
    events = [
        started,
        {
            "id": f"c{credits}", "type": "llm.call", "time": now_iso(-4), "stream_id": sid,
            "task_id": task_id, "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1,
            "duration_ms": 5, "cost_usd": str(float(credits) * 10),
        },
    ]  # fmt: skip
    if finished:
        events.append(
            {"id": "f", "type": "stream.finished", "time": now_iso(-1), "stream_id": sid,
             "task_id": task_id, "status": "completed"}
        )  # fmt: skip
    return sid, events


def ingest(client: TestClient, key: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post(
        "/api/v1/usage/events", headers={"X-Api-Key": key}, json={"events": events}
    )
    assert response.status_code in (200, 207), response.text
    body: dict[str, Any] = response.json()
    return body


def run(cli: CliRunner, *args: str) -> Any:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def org(factory: Factory, cli: CliRunner) -> dict[str, Any]:
    admin = factory.person("admin@acme.test", team="acme", role="admin")
    member = factory.person("dev@acme.test", team="acme")
    solo = factory.person("solo@example.com")
    other = factory.person("boss@rival.test", team="rival", role="admin")
    run(cli, "projects", "create", "recon", "--team", "acme")
    run(cli, "projects", "create", "side", "--user", "solo@example.com")
    run(cli, "credits", "grant", "--team", "acme", "100")
    run(cli, "credits", "grant", "--user", "solo@example.com", "100")
    return {
        "admin": admin, "member": member, "solo": solo, "other": other,
        "service": factory.service_key(),
    }  # fmt: skip


def authorize(client: TestClient, key: str, **body: Any) -> Any:
    return client.post("/api/v1/usage/authorize", headers={"X-Api-Key": key}, json=body)


# --- periods ---------------------------------------------------------------------------


def test_a_berlin_month_starts_at_local_midnight_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29 is the spring change: March starts at +01:00, April at +02:00.
    start, end = period_bounds("month", berlin, datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert start == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert end == datetime(2026, 3, 31, 22, tzinfo=UTC)
    # The change day itself has 23 hours.
    start, end = period_bounds("day", berlin, datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert (end - start) == timedelta(hours=23)
    # Autumn: 25 hours.
    start, end = period_bounds("day", berlin, datetime(2026, 10, 25, 12, tzinfo=UTC))
    assert (end - start) == timedelta(hours=25)
    # The last instant of a local month is in it; the next is not.
    inside = datetime(2026, 3, 31, 21, 59, 59, tzinfo=UTC)
    assert period_bounds("month", berlin, inside)[0] == datetime(2026, 2, 28, 23, tzinfo=UTC)
    after = datetime(2026, 3, 31, 22, tzinfo=UTC)
    assert period_bounds("month", berlin, after)[0] == datetime(2026, 3, 31, 22, tzinfo=UTC)


def test_month_ends_weeks_and_total() -> None:
    utc = ZoneInfo("UTC")
    assert period_bounds("month", utc, datetime(2028, 2, 29, 23, 59, tzinfo=UTC)) == (
        datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC),
    )  # fmt: skip
    assert period_bounds("month", utc, datetime(2026, 12, 31, 23, 59, tzinfo=UTC))[1] == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    # Weeks start on Monday: 2026-12-07 is one.
    assert period_bounds("week", utc, datetime(2026, 12, 13, 23, tzinfo=UTC))[0] == datetime(
        2026, 12, 7, tzinfo=UTC
    )
    assert period_bounds("total", utc, datetime(2026, 1, 1, tzinfo=UTC))[1] is None
    # A zone whose clock jumped at midnight (America/Santiago, 2026-09-06 00:00 -> 01:00):
    # the day starts at the jump.
    santiago = ZoneInfo("America/Santiago")
    start, end = period_bounds("day", santiago, datetime(2026, 9, 6, 12, tzinfo=UTC))
    assert start == datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert end - start == timedelta(hours=23)


# --- projects --------------------------------------------------------------------------


def test_streams_name_projects_of_their_own_scope(client: TestClient, org: dict[str, Any]) -> None:
    key = org["service"]
    _, events = stream_batch("dev@acme.test", project="recon")
    assert ingest(client, key, events)["accepted"] == 2
    # Another team's project, or a solo user's, is not the acme member's to name.
    _, events = stream_batch("dev@acme.test", project="side")
    body = ingest(client, key, events)
    assert [r["code"] for r in body["rejected"]] == ["unknown_project"]
    assert body["accepted"] == 1  # the call lands; the stream waits for a valid start
    _, events = stream_batch("boss@rival.test", project="recon")
    assert [r["code"] for r in ingest(client, key, events)["rejected"]] == ["unknown_project"]
    _, events = stream_batch("solo@example.com", project="side")
    assert ingest(client, key, events)["rejected"] == []


def test_projects_cli(cli: CliRunner, org: dict[str, Any]) -> None:
    import json

    listed = json.loads(run(cli, "projects", "list", "--json").output)
    assert {(p["name"], p.get("team"), p.get("user")) for p in listed} == {
        ("recon", "acme", None), ("side", None, "solo@example.com"),
    }  # fmt: skip
    again = cli.invoke(app, ["projects", "create", "recon", "--team", "acme"])
    assert again.exit_code != 0 and "exists" in again.output
    nobody = cli.invoke(app, ["projects", "create", "x", "--team", "nope"])
    assert nobody.exit_code != 0 and "error:" in nobody.output
    member = cli.invoke(app, ["projects", "create", "x", "--user", "dev@acme.test"])
    assert member.exit_code != 0 and "in a team" in member.output
    archived = json.loads(
        run(cli, "projects", "archive", "recon", "--team", "acme", "--json").output
    )
    assert archived["archived_at"] is not None


# --- caps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--team", "nope", "--limit", "5"], "no team"),
        (["--team", "acme", "--limit", "-1"], "0 or more"),
        (["--team", "acme", "--limit", "0.0000000001"], "9 decimal"),
        (["--team", "acme", "--limit", "5", "--tz", "Mars/Olympus"], "time zone"),
        (["--team", "acme", "--limit", "5", "--period", "year"], "period"),
        (["--team", "acme", "--limit", "5", "--thresholds", "50,120"], "between 1 and 99"),
        (["--user", "dev@acme.test", "--team", "rival", "--limit", "5"], "not a member"),
    ],
)
def test_bad_caps_are_refused_and_nothing_is_written(
    cli: CliRunner, org: dict[str, Any], args: list[str], message: str
) -> None:
    result = cli.invoke(app, ["caps", "set", *args])
    assert result.exit_code != 0
    assert message in result.output and result.output.startswith("error:")
    assert run(cli, "caps", "list", "--json").output.strip() == "[]"


def test_caps_count_spend_in_the_period_of_created_at_running_streams_included(
    client: TestClient, cli: CliRunner, org: dict[str, Any]
) -> None:
    import json

    key = org["service"]
    ingest(client, key, stream_batch("dev@acme.test", credits="2", finished=True)[1])
    # Created before the cap: counted by the cap's backfill of its first period.
    run(cli, "caps", "set", "--team", "acme", "--limit", "10", "--period", "month")
    ingest(client, key, stream_batch("dev@acme.test", credits="3")[1])  # still running
    # An old stream (another month) spends nothing in this period.
    old = stream_batch("dev@acme.test", credits="50")[1]
    for event in old:
        event["time"] = "2025-01-01T10:00:00+02:00"
    ingest(client, key, old)
    (cap,) = json.loads(run(cli, "caps", "list", "--json").output)
    assert cap["used_credits"] == 5.0 and cap["limit_credits"] == 10.0
    assert cap["remaining_credits"] == 5.0 and cap["team"] == "acme"
    run(cli, "caps", "remove", str(cap["id"]))
    assert json.loads(run(cli, "caps", "list", "--json").output) == []


# --- authorize -------------------------------------------------------------------------


def test_authorize_flips_to_402_as_usage_is_ingested(
    client: TestClient, cli: CliRunner, org: dict[str, Any]
) -> None:
    key = org["service"]
    run(cli, "caps", "set", "--team", "acme", "--user", "dev@acme.test", "--limit", "3")
    # A stream dated next year opens a later period: this one still has everything left.
    future = stream_batch("dev@acme.test", credits="50")[1]
    for event in future:
        event["time"] = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    ingest(client, key, future)
    first = authorize(client, key, user="dev@acme.test", estimate_credits=1)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["allowed"] is True and body["reservation_id"].startswith("rsv_")
    assert body["remaining"]["neo_credits"] == 2.0
    released = client.delete(
        f"/api/v1/usage/reservations/{body['reservation_id']}", headers={"X-Api-Key": key}
    )
    assert released.status_code == 200
    over = ingest(client, key, stream_batch("dev@acme.test", credits="3.5")[1])
    # Usage that happened is recorded, and the platform is told to stop the stream.
    assert over["accepted"] == 2
    assert [o["code"] for o in over["over_limit"]] == ["user_spending_cap_reached"]
    refused = authorize(client, key, user="dev@acme.test", estimate_credits=0)
    assert refused.status_code == 402
    error = refused.json()
    assert error["code"] == "user_spending_cap_reached" and error["error"] == "Payment required"
    assert error["cap"]["kind"] == "member" and error["cap"]["used_credits"] == 3.5
    assert error["cap"]["resets_at"] is not None
    # The admin, not capped, may still run.
    assert authorize(client, key, user="admin@acme.test").status_code == 200


def test_project_caps_answer_their_own_code(
    client: TestClient, cli: CliRunner, org: dict[str, Any]
) -> None:
    key = org["service"]
    run(
        cli,
        "caps",
        "set",
        "--project",
        "recon",
        "--team",
        "acme",
        "--limit",
        "1",
        "--period",
        "day",
    )
    ingest(client, key, stream_batch("dev@acme.test", credits="1", project="recon")[1])
    refused = authorize(client, key, user="dev@acme.test", project="recon")
    assert refused.status_code == 402 and refused.json()["code"] == "project_spending_cap_reached"
    assert authorize(client, key, user="dev@acme.test").status_code == 200
    unknown = authorize(client, key, user="dev@acme.test", project="side")
    assert unknown.status_code == 400 and unknown.json()["code"] == "unknown_project"


def test_credits_are_checked_unless_turned_off(
    settings: Any, store: Store, factory: Factory, cli: CliRunner
) -> None:
    from taskmeter.app import create_app

    factory.person("broke@example.com")
    key = factory.service_key()
    with TestClient(create_app(settings, store=store)) as client:
        refused = authorize(client, key, user="broke@example.com")
        assert refused.status_code == 402
        assert refused.json()["code"] == "insufficient_neo_credits"
        run(cli, "credits", "grant", "--user", "broke@example.com", "2")
        assert (
            authorize(client, key, user="broke@example.com", estimate_credits=2).status_code == 200
        )
        # The 2 credits are held now.
        assert (
            authorize(client, key, user="broke@example.com", estimate_credits="0.5").status_code
            == 402
        )
    relaxed = settings.model_copy(update={"require_credits": False})
    factory.person("free@example.com")
    with TestClient(create_app(relaxed, store=store)) as client:
        assert authorize(client, key, user="free@example.com").status_code == 200


def test_authorize_input_and_callers(client: TestClient, org: dict[str, Any]) -> None:
    key = org["service"]
    for body, code in [
        ({"user": "dev@acme.test", "estimate_credits": -1}, "invalid_request"),
        ({"user": "dev@acme.test", "estimate_credits": "0.0000000001"}, "invalid_request"),
        ({"user": "ghost@example.com"}, "unknown_user"),
        ({"user": "dev@acme.test", "team": "rival"}, "invalid_request"),
        ({"user": "dev@acme.test", "stream_id": "not-a-uuid"}, "invalid_request"),
        ({"estimate_credits": 1}, "invalid_request"),
        # A NUL is in no stored name, and PostgreSQL cannot even compare against one.
        ({"user": "dev@acme.test\u0000"}, "invalid_request"),
        ({"user": "dev@acme.test", "team": "acme\u0000"}, "invalid_request"),
        ({"user": "dev@acme.test", "project": "p\u0000"}, "invalid_request"),
        ({"user": "dev@acme.test", "task_id": "t\u0000"}, "invalid_request"),
    ]:
        response = authorize(client, key, **body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == code
    # `curl -d` labels a JSON body as a form; it is read as JSON, as the events endpoint does.
    as_curl_sends_it = client.post(
        "/api/v1/usage/authorize",
        headers={"X-Api-Key": key, "Content-Type": "application/x-www-form-urlencoded"},
        content=b'{"user": "dev@acme.test", "estimate_credits": 0.5}',
    )
    assert as_curl_sends_it.status_code == 200, as_curl_sends_it.text
    not_json = client.post(
        "/api/v1/usage/authorize", headers={"X-Api-Key": key}, content=b"user=dev@acme.test"
    )
    assert not_json.status_code == 400 and not_json.json()["code"] == "invalid_request"
    # A user's own key authorizes itself only.
    assert authorize(client, org["solo"].key, user="solo@example.com").status_code == 200
    assert authorize(client, org["solo"].key, user="dev@acme.test").status_code == 403
    assert client.post("/api/v1/usage/authorize", json={"user": "x@y.z"}).status_code == 401


def test_a_finished_stream_replaces_its_hold_with_its_cost(
    client: TestClient, cli: CliRunner, org: dict[str, Any], store: Store
) -> None:
    key = org["service"]
    run(cli, "caps", "set", "--team", "acme", "--limit", "10")
    sid = str(uuid.uuid4())
    held = authorize(client, key, user="dev@acme.test", stream_id=sid, estimate_credits=6)
    assert held.status_code == 200
    assert authorize(client, key, user="dev@acme.test", estimate_credits=5).status_code == 402
    # Running with 2 spent: the hold is 6 - 2 = 4, so 10 - 2 - 4 = 4 are left.
    ingest(client, key, stream_batch("dev@acme.test", credits="2", stream_id=sid)[1])
    assert authorize(client, key, user="dev@acme.test", estimate_credits="4.5").status_code == 402
    # Finished: only its real cost counts.
    ingest(client, key, stream_batch("dev@acme.test", credits="2", stream_id=sid, finished=True)[1])
    assert authorize(client, key, user="dev@acme.test", estimate_credits=8).status_code == 200
    # Its reservation is released by the batch that finished it, the other one still open.
    with store.read() as db:
        rows = db.execute(select(RESERVATIONS.c.stream_id, RESERVATIONS.c.released_at)).all()
    released = {str(stream_id): at is not None for stream_id, at in rows}
    assert released.pop(sid) is True
    assert list(released.values()) == [False]
    # Releasing is idempotent: the platform's own release after the stream finished, twice,
    # answers 200 and keeps the first release time; an unknown reservation is a 404.
    with store.read() as db:
        first_release = db.scalar(
            select(RESERVATIONS.c.released_at).where(RESERVATIONS.c.stream_id == uuid.UUID(sid))
        )
    path = f"/api/v1/usage/reservations/{held.json()['reservation_id']}"
    for _ in range(2):
        assert client.delete(path, headers={"X-Api-Key": key}).status_code == 200
    with store.read() as db:
        assert first_release == db.scalar(
            select(RESERVATIONS.c.released_at).where(RESERVATIONS.c.stream_id == uuid.UUID(sid))
        )
    missing = client.delete("/api/v1/usage/reservations/rsv_nope", headers={"X-Api-Key": key})
    assert missing.status_code == 404 and missing.json()["code"] == "not_exists"


# --- caps API --------------------------------------------------------------------------


def test_team_admins_manage_their_caps_over_the_api(
    client: TestClient, org: dict[str, Any]
) -> None:
    admin, member, other = org["admin"], org["member"], org["other"]
    put = client.put(
        "/api/v1/usage/caps",
        headers=admin.headers,
        json={"kind": "member", "user": "dev@acme.test", "period": "week", "tz": "Europe/Berlin",
              "limit_credits": 5},
    )  # fmt: skip
    assert put.status_code == 201, put.text
    cap = put.json()
    assert cap["user"] == "dev@acme.test" and cap["thresholds"] == [50, 80, 95]
    changed = client.put(
        "/api/v1/usage/caps",
        headers=admin.headers,
        json={"kind": "member", "user": "dev@acme.test", "period": "week", "tz": "Europe/Berlin",
              "limit_credits": "7.5", "thresholds": [90]},
    )  # fmt: skip
    assert changed.status_code == 200 and changed.json()["limit_credits"] == 7.5
    project = client.put(
        "/api/v1/usage/caps", headers=admin.headers,
        json={"kind": "project", "project": "recon", "period": "total", "limit_credits": 50},
    )  # fmt: skip
    assert project.status_code == 201
    listed = client.get("/api/v1/usage/caps", headers=admin.headers).json()["data"]
    assert {c["kind"] for c in listed} == {"member", "project"}
    summary = client.get("/api/v1/usage/summary", headers=admin.headers).json()
    assert {c["id"] for c in summary["caps"]} == {c["id"] for c in listed}
    # Members and viewers: 403; another team's admin: 403 for kinds, 404 for our ids.
    assert client.get("/api/v1/usage/caps", headers=member.headers).status_code == 403
    assert client.get("/api/v1/usage/caps", headers=other.headers).json()["data"] == []
    gone = client.delete(f"/api/v1/usage/caps/{cap['id']}", headers=other.headers)
    assert gone.status_code == 404 and gone.json()["code"] == "not_exists"
    foreign = client.put(
        "/api/v1/usage/caps", headers=other.headers,
        json={"kind": "member", "user": "dev@acme.test", "period": "day", "limit_credits": 1},
    )  # fmt: skip
    assert foreign.status_code == 404
    user_cap = client.put(
        "/api/v1/usage/caps", headers=admin.headers,
        json={"kind": "user", "user": "dev@acme.test", "period": "day", "limit_credits": 1},
    )  # fmt: skip
    assert user_cap.status_code == 403
    for bad in (
        {"limit_credits": -1},
        {"tz": "Nowhere/Land"},
        {"period": "year"},
        {"tz": "UTC\u0000"},
        {"kind": "member", "user": "dev@acme.test\u0000"},
    ):
        body = {"kind": "team", "period": "day", "limit_credits": 1, **bad}
        response = client.put("/api/v1/usage/caps", headers=admin.headers, json=body)
        assert response.status_code == 400, (bad, response.text)
        assert set(response.json()) >= {"error", "code", "message"}
    assert (
        client.delete(f"/api/v1/usage/caps/{cap['id']}", headers=admin.headers).status_code == 200
    )
    assert client.put("/api/v1/usage/caps", json={}).status_code == 401


# --- SDK -------------------------------------------------------------------------------


def test_the_recorder_authorizes_first_and_reports_over_limit(
    live_server: str, factory: Factory, cli: CliRunner
) -> None:
    from taskmeter.recorder import InsufficientCredits, Recorder, SpendingCapReached

    factory.person("dev@example.com")
    key = factory.service_key()
    seen: list[list[dict[str, str]]] = []
    recorder = Recorder(live_server, api_key=key, flush_interval=0.05, on_over_limit=seen.append)
    try:
        with pytest.raises(InsufficientCredits) as refused:
            recorder.stream("t", user="dev@example.com", authorize=True)
        assert refused.value.status == 402 and refused.value.body["credits"]
        run(cli, "credits", "grant", "--user", "dev@example.com", "100")
        run(cli, "caps", "set", "--user", "dev@example.com", "--limit", "1", "--period", "day")
        with recorder.stream(
            "t", user="dev@example.com", model="gpt-4o", authorize=True, estimate_credits=0.5
        ) as s:
            assert s.reservation_id is not None
            s.llm_call(model="gpt-4o", input_tokens=1, output_tokens=1, duration_ms=1, cost_usd=15)
            assert recorder.flush(10)
            assert s.over_limit
        assert seen == [[{"stream_id": s.stream_id, "code": "user_spending_cap_reached"}]]
        with pytest.raises(SpendingCapReached) as capped:
            recorder.stream("t", user="dev@example.com", authorize=True)
        assert capped.value.code == "user_spending_cap_reached"
    finally:
        recorder.close()


# --- the read side ---------------------------------------------------------------------


def test_rows_carry_their_project_and_the_reads_filter_by_it(
    client: TestClient, org: dict[str, Any]
) -> None:
    key, admin = org["service"], org["admin"]
    ingest(client, key, stream_batch("dev@acme.test", credits="2", project="recon", finished=True,
                                     task_id="in-project")[1])  # fmt: skip
    ingest(client, key, stream_batch("dev@acme.test", credits="1", finished=True,
                                     task_id="no-project")[1])  # fmt: skip
    streams = client.get("/api/v1/usage/streams", headers=admin.headers).json()["data"]
    assert {(s["task_id"], s.get("project")) for s in streams} == {
        ("in-project", "recon"), ("no-project", None),
    }  # fmt: skip
    only = client.get("/api/v1/usage/tasks?project=recon", headers=admin.headers).json()
    assert [t["task_id"] for t in only["data"]] == ["in-project"] and only["total"] == 1
    assert only["data"][0]["project"] == "recon"
    one = client.get("/api/v1/usage/tasks/in-project", headers=admin.headers).json()
    assert one["project"] == "recon" and one["email"] == "dev@acme.test"
    assert (
        "project" not in client.get("/api/v1/usage/tasks/no-project", headers=admin.headers).json()
    )
    # A project of another scope matches nothing.
    none = client.get("/api/v1/usage/streams?project=side", headers=admin.headers).json()
    assert none == {"data": [], "total": 0, "has_more": False}
    summary = client.get("/api/v1/usage/summary", headers=admin.headers).json()
    assert summary["total_neo_credits"] == 3.0
    assert summary["by_project"] == [
        {"project": "recon", "neo_credits": 2.0, "streams": 1, "tasks": 1}
    ]
    scoped = client.get("/api/v1/usage/summary?project=recon", headers=admin.headers).json()
    assert scoped["total_neo_credits"] == 2.0 and scoped["total_tasks"] == 1
    assert list(scoped["by_model"]) == ["gpt-4o"]
    nothing = client.get("/api/v1/usage/summary?project=nope", headers=admin.headers).json()
    assert nothing["total_neo_credits"] == 0 and nothing["total_tasks"] == 0


def test_cap_alerts_name_their_period_in_utc_whatever_the_sessions_zone(
    store: Store, org: dict[str, Any], cli: CliRunner
) -> None:
    """The spend upsert's RETURNING comes back through psycopg on PostgreSQL, in the session's
    zone: the alert (its payload and its once-per-period dedupe key) still names the period's
    start as a UTC instant."""
    run(cli, "caps", "set", "--team", "acme", "--limit", "10", "--period", "month")
    member = org["member"]
    with store.read() as db:
        team_id = db.scalar(select(TEAMS.c.id).where(TEAMS.c.name == "acme"))
    now = datetime.now(UTC)
    sid = uuid.uuid4()
    spend = (stream_subjects(member.id, team_id, None), now, 6 * NANO)
    with store.write() as db:
        if store.dialect == "postgresql":
            db.execute(text("SET LOCAL timezone = 'Asia/Kolkata'"))
        _, alerts = plan_charges(db, {sid: None}, {sid: spend}, [sid]).apply(db)
    start, _ = period_bounds("month", ZoneInfo("UTC"), now)
    assert [a.threshold for a in alerts] == [50]
    assert alerts[0].period_start == start
    assert alerts[0].period_start.utcoffset() == timedelta(0)
