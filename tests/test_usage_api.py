"""The four read endpoints on both stores: access, filters, sorts, pages, aggregation, summary.

Expected numbers are computed by hand from tests/usage_org.py (prices per million tokens:
gpt-4o $2.50 in / $10 out, gpt-4o-mini $0.15 / $0.60; 1 credit = $10).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from taskmeter.pricing.credits import grant_credits, reset_credits
from taskmeter.store import Store
from taskmeter.store.tables import CreditGrant
from tests.events import StreamEvents
from tests.factories import Factory
from tests.spec import assert_error_response
from tests.usage_org import Org, build_org, get, post

STREAMS, TASKS, SUMMARY = "/api/v1/usage/streams", "/api/v1/usage/tasks", "/api/v1/usage/summary"


@pytest.fixture
def org(client: TestClient, factory: Factory) -> Org:
    return build_org(client, factory)


def ids(answer: Any, key: str = "stream_id") -> list[str]:
    return [row[key][-2:] if key == "stream_id" else row[key] for row in answer.json()["data"]]


# --- who may call ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [STREAMS, TASKS, SUMMARY, TASKS + "/T-A"])
def test_access_matrix(client: TestClient, org: Org, path: str) -> None:
    for person in (org.eve, org.vic):
        answer = get(client, person, path)
        assert answer.status_code == 403
        assert_error_response(answer.json(), code="forbidden")
    answer = get(client, None, path)
    assert answer.status_code == 401
    answer = client.get(path, headers={"X-Api-Key": "neo_sk_" + "x" * 32})
    assert answer.status_code == 401
    assert get(client, org.boss, path).status_code == 200


def test_each_scope_sees_its_own_rows(client: TestClient, org: Org) -> None:
    assert ids(get(client, org.boss, STREAMS)) == ["06", "03", "02", "01"]
    assert ids(get(client, org.olga, STREAMS)) == ["04"]
    assert ids(get(client, org.sol, STREAMS)) == ["05"]
    assert ids(get(client, org.boss, TASKS), "task_id") == ["T-C", "T-B", "T-A"]
    assert ids(get(client, org.olga, TASKS), "task_id") == ["T-O"]
    # email on every row for admins, never for solo users
    assert {r["email"] for r in get(client, org.boss, STREAMS).json()["data"]} == {
        "eve@acme.io",
        "boss@acme.io",
    }
    assert "email" not in get(client, org.sol, STREAMS).json()["data"][0]
    assert "email" not in get(client, org.sol, TASKS + "/T-S").json()
    # another scope's task is 404, not 403: existence does not leak
    for person, task in (
        (org.olga, "T-A"),
        (org.sol, "T-A"),
        (org.boss, "T-S"),
        (org.boss, "nope"),
    ):
        answer = get(client, person, f"{TASKS}/{task}")
        assert answer.status_code == 404
        assert_error_response(answer.json(), code="not_exists")


def test_email_filter_is_for_admins(client: TestClient, org: Org) -> None:
    answer = get(client, org.boss, STREAMS, email="EVE@acme.io")
    assert ids(answer) == ["06", "03", "01"]
    assert ids(get(client, org.boss, TASKS, email="boss@acme.io"), "task_id") == ["T-A"]
    assert get(client, org.boss, STREAMS, email="olga@other.io").json()["total"] == 0
    assert get(client, org.boss, STREAMS, email="ghost@x.io").json()["total"] == 0
    for path in (STREAMS, TASKS):
        answer = get(client, org.sol, path, email="sol@solo.io")
        assert answer.status_code == 403
        assert_error_response(answer.json(), code="forbidden")


# --- filters, sorts, pages ---------------------------------------------------------------


def test_stream_filters(client: TestClient, org: Org) -> None:
    b = org.boss
    assert ids(get(client, b, STREAMS, task_id="T-A")) == ["02", "01"]
    assert ids(get(client, b, STREAMS, stream_id=org.streams["s3"].stream_id)) == ["03"]
    assert ids(get(client, b, STREAMS, status="error")) == ["02"]
    assert ids(get(client, b, STREAMS, model="gpt-4o")) == ["03", "01"]
    assert ids(get(client, b, STREAMS, is_byok="true")) == ["03"]
    assert ids(get(client, b, STREAMS, is_byok="0")) == ["06", "02", "01"]
    # [from, to) is half-open, any offset, bare dates are 00:00 UTC
    assert ids(get(client, b, STREAMS, **{"from": "2026-03-28T12:00:00Z"})) == ["06", "03", "02"]
    assert ids(get(client, b, STREAMS, to="2026-03-28T12:00:00Z")) == ["01"]
    assert ids(
        get(client, b, STREAMS, **{"from": "2026-03-28T11:00:00-01:00", "to": "2026-03-29"})
    ) == ["03", "02"]
    assert ids(get(client, b, STREAMS, task_id="T-A", status="completed")) == ["01"]
    for window in (
        {"from": "2026-03-29", "to": "2026-03-28"},
        {"from": "2026-03-28", "to": "2026-03-28"},
    ):
        answer = get(client, b, STREAMS, **window)
        assert answer.status_code == 200 and answer.json() == {
            "data": [],
            "total": 0,
            "has_more": False,
        }
    for text in ("x\x00y", "' OR 1=1 --", "%", "_", "ünïcödé"):
        assert get(client, b, STREAMS, task_id=text, model=text).json()["total"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"stream_id": "not-a-uuid"},
        {"status": "running"},
        {"status": ""},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"sort": "name"},
        {"sort": ""},
        {"is_byok": ""},
        {"limit": ""},
        {"is_byok": "yes"},
        {"from": "yesterday"},
        {"to": "2026-13-01"},
        {"from": "2026-02-30"},
    ],
)
def test_bad_parameters_are_400(client: TestClient, org: Org, params: dict[str, str]) -> None:
    for path in (STREAMS, TASKS):
        if path == TASKS and "stream_id" in params:
            continue
        answer = get(client, org.boss, path, **params)
        assert answer.status_code == 400, (path, params)
        assert_error_response(answer.json(), code="invalid_request")
        assert next(iter(params)) in answer.json()["message"]


def test_valid_rfc3339_forms_are_accepted(client: TestClient, org: Org) -> None:
    for value in (
        "2026-03-28t10:00:00z",
        "2026-03-28T10:00:00.123456789+02:00",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2026-03-28T10:00:00+14:00",
    ):
        assert get(client, org.boss, STREAMS, **{"from": value}).status_code == 200, value


def test_sorts_and_stable_pages(client: TestClient, org: Org) -> None:
    b = org.boss
    assert ids(get(client, b, STREAMS, sort="cost")) == ["03", "01", "02", "06"]
    assert ids(get(client, b, TASKS, sort="cost"), "task_id") == ["T-B", "T-A", "T-C"]
    walked = []
    for offset in range(4):
        answer = get(client, b, STREAMS, sort="cost", limit=1, offset=offset).json()
        walked += [r["stream_id"][-2:] for r in answer["data"]]
        assert answer["total"] == 4 and answer["has_more"] is (offset < 3)
    assert walked == ["03", "01", "02", "06"]
    assert get(client, b, STREAMS, offset=4).json() == {"data": [], "total": 4, "has_more": False}
    assert get(client, b, STREAMS, offset=10**20).json()["data"] == []
    page = get(client, b, STREAMS, limit=200).json()
    assert len(page["data"]) == 4 and page["has_more"] is False
    assert get(client, b, STREAMS, limit=3).json()["has_more"] is True


def test_task_filters_and_search(client: TestClient, org: Org) -> None:
    b = org.boss
    assert ids(get(client, b, TASKS, status="error"), "task_id") == ["T-A"]
    assert ids(get(client, b, TASKS, model="gpt-4o-mini"), "task_id") == ["T-C", "T-A"]
    assert ids(get(client, b, TASKS, is_byok="1"), "task_id") == ["T-B"]
    assert ids(get(client, b, TASKS, to="2026-03-28T11:00:00Z"), "task_id") == ["T-A"]
    assert ids(get(client, b, TASKS, search="t-b"), "task_id") == ["T-B"]
    assert ids(get(client, b, TASKS, search="RETRY"), "task_id") == ["T-A"]
    assert ids(get(client, b, TASKS, search="eve@"), "task_id") == ["T-C", "T-B"]
    assert ids(get(client, b, TASKS, search="%"), "task_id") == []
    assert ids(get(client, org.sol, TASKS, search="sol@"), "task_id") == []  # no email for solo
    assert ids(get(client, org.sol, TASKS, search="solo"), "task_id") == ["T-S"]


# --- aggregation -------------------------------------------------------------------------


def test_task_aggregation_by_hand(client: TestClient, org: Org) -> None:
    row = get(client, org.boss, TASKS + "/T-A").json()
    assert "stream_id" not in row
    assert row["stream_count"] == 2
    assert row["email"] == "boss@acme.io"  # the latest stream's owner
    assert row["created_at"] == "2026-03-28T10:00:00Z"  # the earliest stream's
    assert (row["status"], row["error_message"], row["model"], row["task_title"]) == (
        "error",
        "target unreachable",
        "gpt-4o-mini",
        "Scan A, retry",
    )  # the latest stream's
    assert (row["step_count"], row["avg_step_latency_ms"]) == (3, 200)  # 601 / 3, weighted
    assert (row["tool_calls"], row["tool_time_ms"]) == (3, 3500)
    assert row["tool_breakdown"] == {
        "httpx": {"calls": 1, "total_duration_ms": 500},
        "nuclei": {"calls": 2, "total_duration_ms": 3000},
    }
    assert [(h["index"], h["tool_name"]) for h in row["tool_call_history"]] == [
        (0, "nuclei"),
        (1, "httpx"),
        (2, "nuclei"),
    ]
    assert (row["agent_triggers"], row["agent_breakdown"]) == (1, {"recon": 1})
    assert (row["llm_time_ms"], row["total_execution_ms"]) == (6000, 5_400_000)
    assert (row["neo_credits"], row["llm_cost"], row["neo_cost"]) == (0.056, None, None)
    assert (row["input_tokens"], row["output_tokens"], row["llm_calls"]) == (1_100_000, 110_000, 2)
    byok = get(client, org.boss, TASKS + "/T-B").json()
    assert (byok["is_byok"], byok["llm_cost"], byok["neo_cost"], byok["neo_credits"]) == (
        True,
        0.35,
        0.035,
        0.035,
    )
    assert byok["task_title"] is None and byok["avg_step_latency_ms"] is None
    stream = get(client, org.boss, STREAMS, stream_id=org.streams["s1"].stream_id).json()
    assert stream["data"][0]["stream_count"] == 1
    assert stream["data"][0]["stream_id"] == org.streams["s1"].stream_id


# --- summary -----------------------------------------------------------------------------


def test_summary_totals_and_breakdowns(client: TestClient, org: Org, store: Store) -> None:
    with store.write() as db:
        grant_credits(
            db,
            amount_nano=10 * 10**9,
            team_name="acme",
            expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        )
    s = get(client, org.boss, SUMMARY).json()
    assert (s["total_tasks"], s["total_neo_credits"]) == (3, 0.0925)
    assert s["by_status"] == {"completed": 2, "error": 1}
    assert s["by_model"] == {
        "gpt-4o": {
            "tasks": 1,
            "streams": 2,
            "neo_credits": 0.07,
            "llm_cost": 0.35,
            "tool_calls": 2,
            "input_tokens": 1_100_000,
            "output_tokens": 110_000,
        },
        "gpt-4o-mini": {
            "tasks": 2,
            "streams": 2,
            "neo_credits": 0.0225,
            "llm_cost": None,
            "tool_calls": 1,
            "input_tokens": 1_100_000,
            "output_tokens": 100_000,
        },
    }
    assert s["by_email"] == [
        {"email": "eve@acme.io", "neo_credits": 0.0715, "tasks": 2},
        {"email": "boss@acme.io", "neo_credits": 0.021, "tasks": 1},
    ]
    assert "by_period" not in s
    assert s["byok"] == {
        "total_llm_cost": 0.35,
        "total_neo_cost": 0.035,
        "total_streams": 1,
        "total_tasks": 1,
    }
    assert (
        s["total_steps"],
        s["total_tool_calls"],
        s["total_agent_triggers"],
        s["total_execution_ms"],
    ) == (3, 3, 1, 9_000_000)
    assert (
        s["total_issued_neo_credits"],
        s["total_neo_credits_post_reset"],
        s["total_available_neo_credits"],
    ) == (10.0, 0.0925, 9.9075)
    assert (s["neo_credits_expires_at"], s["neo_credits_is_expired"], s["last_credit_reset"]) == (
        "2099-01-01T00:00:00Z",
        False,
        None,
    )
    solo = get(client, org.sol, SUMMARY).json()
    assert (solo["total_tasks"], solo["total_neo_credits"]) == (1, 0.05)
    assert "by_email" not in solo
    assert (solo["total_issued_neo_credits"], solo["neo_credits_is_expired"]) == (0.0, False)


def test_summary_windows_are_exact_inside_buckets(client: TestClient, org: Org) -> None:
    # 10:00 falls inside a 15-minute bucket edge case: from 10:00:00.5 excludes s1.
    s = get(
        client,
        org.boss,
        SUMMARY,
        **{"from": "2026-03-28T10:00:00.5Z", "to": "2026-03-28T23:30:00Z"},
    ).json()
    assert (s["total_neo_credits"], s["total_tasks"]) == (0.021, 0)  # s2 only; T-A began 10:00
    s = get(
        client,
        org.boss,
        SUMMARY,
        **{"from": "2026-03-28T10:00:00Z", "to": "2026-03-28T23:30:00.001Z"},
    ).json()
    assert (s["total_neo_credits"], s["total_tasks"]) == (0.091, 2)
    s = get(
        client, org.boss, SUMMARY, **{"from": "2026-03-28T10:07:00Z", "to": "2026-03-28T10:08:00Z"}
    ).json()
    assert (s["total_neo_credits"], s["total_tasks"]) == (0.0, 0)


@pytest.mark.parametrize(
    ("group_by", "tz", "expected"),
    [
        (
            "day",
            "UTC",
            [("2026-03-28", 0.091, 2), ("2026-03-29", 0.0015, 1), ("2026-03-30", 0.0, 0)],
        ),
        (
            "day",
            "Europe/Berlin",
            [("2026-03-28", 0.056, 1), ("2026-03-29", 0.035, 1), ("2026-03-30", 0.0015, 1)],
        ),
        ("week", "UTC", [("2026-03-23", 0.0925, 3), ("2026-03-30", 0.0, 0)]),
        ("week", "Europe/Berlin", [("2026-03-23", 0.091, 2), ("2026-03-30", 0.0015, 1)]),
        ("month", "Asia/Kolkata", [("2026-03-01", 0.0925, 3)]),
    ],
)
def test_summary_periods_across_dst(
    client: TestClient, org: Org, group_by: str, tz: str, expected: list[tuple[str, float, int]]
) -> None:
    window = {"from": "2026-03-28T00:00:00Z", "to": "2026-03-30T12:00:00Z"}
    s = get(client, org.boss, SUMMARY, group_by=group_by, tz=tz, **window).json()
    assert [(p["date"], p["neo_credits"], p["tasks"]) for p in s["by_period"]] == expected
    assert s["total_neo_credits"] == round(sum(p[1] for p in expected), 6)


def test_summary_bad_parameters(client: TestClient, org: Org) -> None:
    for params in (
        {"group_by": "year"},
        {"group_by": ""},
        {"tz": ""},
        {"tz": "Mars/Olympus"},
        {"tz": "../etc/passwd"},
        {"from": "soon"},
        {"group_by": "day", "from": "0001-01-01", "to": "9999-01-01"},
    ):
        answer = get(client, org.boss, SUMMARY, **params)
        assert answer.status_code == 400, params
        assert_error_response(answer.json(), code="invalid_request")
    empty = get(
        client, org.boss, SUMMARY, group_by="day", **{"from": "2026-04-02", "to": "2026-04-01"}
    ).json()
    assert (empty["by_period"], empty["total_tasks"]) == ([], 0)


def test_credit_account_reset_and_expiry(client: TestClient, org: Org, store: Store) -> None:
    with store.write() as db:
        grant_credits(
            db,
            amount_nano=10**9,
            user_email="sol@solo.io",
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )
    s = get(client, org.sol, SUMMARY).json()
    assert (
        s["total_issued_neo_credits"],
        s["total_neo_credits_post_reset"],
        s["total_available_neo_credits"],
    ) == (1.0, 0.05, 0.95)
    with store.write() as db:
        reset_credits(db, user_email="sol@solo.io")
    s = get(client, org.sol, SUMMARY).json()
    assert (s["total_neo_credits_post_reset"], s["total_available_neo_credits"]) == (0.0, 1.0)
    assert s["last_credit_reset"] is not None
    with store.write() as db:
        db.execute(update(CreditGrant).values(expires_at=datetime(2020, 1, 1, tzinfo=UTC)))
    s = get(client, org.sol, SUMMARY).json()
    assert (
        s["total_issued_neo_credits"],
        s["neo_credits_is_expired"],
        s["neo_credits_expires_at"],
    ) == (0.0, True, None)


def test_running_streams_count_against_the_balance(client: TestClient, org: Org) -> None:
    running = StreamEvents("T-R")
    running.started(0, model="gpt-4o")
    running.llm(1, model="gpt-4o", provider="openai", input_tokens=40_000, output_tokens=0)
    post(client, org.sol, running.events)  # $0.10, not finished
    s = get(client, org.sol, SUMMARY).json()
    assert s["total_neo_credits"] == 0.05  # finished streams only
    assert s["total_neo_credits_post_reset"] == 0.06  # running included
    assert get(client, org.sol, STREAMS).json()["total"] == 1


def test_kept_scope_totals_equal_a_count_of_the_rows(
    client: TestClient, org: Org, store: Store
) -> None:
    """The unfiltered lists' `total` comes from kept counters: they must equal the rows."""
    from sqlalchemy import func, select

    from taskmeter.store.tables import ScopeTotal, Stream, Task

    with store.read() as db:
        kept = {t.scope: (t.finished_streams, t.tasks) for t in db.scalars(select(ScopeTotal))}
        streams = dict(
            db.execute(
                select(Stream.scope, func.count())
                .where(Stream.status.is_not(None), Stream.scope.is_not(None))
                .group_by(Stream.scope)
            ).all()
        )
        tasks = dict(db.execute(select(Task.scope, func.count()).group_by(Task.scope)).all())
    assert kept == {s: (streams.get(s, 0), tasks.get(s, 0)) for s in set(streams) | set(tasks)}
    for person in (org.boss, org.sol):
        for path in ("streams", "tasks"):
            body = client.get(f"/api/v1/usage/{path}", headers=person.headers).json()
            filtered = client.get(
                f"/api/v1/usage/{path}", params={"from": "2000-01-01"}, headers=person.headers
            ).json()
            assert body["total"] == filtered["total"] > 0
