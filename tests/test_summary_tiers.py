"""The summary reads three rollup tiers (months, 15-minute buckets, hours) and the rows at the
window's edges. Whatever window, time zone, grouping and credit reset is asked for, its answer
must equal the naive one: a plain pass over the stream and task rows. Both stores.

The usage is ingested through the API: streams spread over fourteen months, several of them on
the exact instants where tiers meet (a month's first moment, the microsecond before it, an
hour's and a bucket's edges), some still running (they count against the credit balance only).
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store import Store
from taskmeter.store.tables import (
    OwnerMonth,
    ScopeHour,
    Stream,
    StreamRollupMonth,
    Task,
    TaskRollupMonth,
    Team,
    User,
)
from taskmeter.usage.figures import stream_execution_ms, stream_model
from taskmeter.usage.rollups import rebuild_coarse_tiers
from tests.events import StreamEvents
from tests.factories import Factory, Person

SUMMARY = "/api/v1/usage/summary"
FIRST = datetime(2025, 10, 1, tzinfo=UTC)
LAST = datetime(2026, 12, 1, tzinfo=UTC)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet")
ZONES = ("UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns", "Asia/Kathmandu")
EDGES = (
    datetime(2026, 3, 1, tzinfo=UTC),
    datetime(2026, 3, 1, tzinfo=UTC) - timedelta(microseconds=1),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2026, 6, 15, 13, 0, tzinfo=UTC),
    datetime(2026, 6, 15, 13, 15, tzinfo=UTC),
    datetime(2026, 6, 15, 12, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 10, 31, 23, 30, tzinfo=UTC),
)


_SPREAD = random.Random(7)
STARTS = [
    *EDGES,
    *(
        FIRST + timedelta(seconds=_SPREAD.uniform(0, (LAST - FIRST).total_seconds()))
        for _ in range(70)
    ),
]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def boss(client: TestClient, factory: Factory) -> Person:
    """Seeded once per store: hypothesis runs every example inside one fixture instance."""
    return seed_usage(client, factory)[0]


def seed_usage(client: TestClient, factory: Factory) -> list[Person]:
    people = [
        factory.person("boss@tiers.io", team="tiers", role="admin"),
        factory.person("ann@tiers.io", team="tiers", role="member"),
        factory.person("bo@tiers.io", team="tiers", role="member"),
    ]
    rng = random.Random(20261123)
    events_by_person: dict[int, list[dict[str, Any]]] = defaultdict(list)
    task_no = 0
    streams_left = 0
    for n, start in enumerate(STARTS):
        if streams_left == 0:  # a new task: 1-3 streams, later ones an hour or a month later
            task_no += 1
            streams_left = rng.randint(1, 3)
        streams_left -= 1
        who = rng.randrange(len(people))
        model = rng.choice(MODELS)
        s = StreamEvents(f"T-{task_no}")
        s.started(0, time=iso(start), model=model, is_byok=rng.random() < 0.15)
        s.llm(
            0,
            time=iso(start + timedelta(seconds=1)),
            model=model,
            provider="anthropic" if model.startswith("claude") else "openai",
            input_tokens=rng.randint(1, 200_000),
            output_tokens=rng.randint(1, 20_000),
            duration_ms=rng.randint(1, 9000),
        )
        for k in range(rng.randint(0, 3)):
            s.tool(
                0,
                rng.choice(("nuclei", "httpx", "nmap")),
                rng.randint(1, 5000),
                time=iso(start + timedelta(seconds=2 + k)),
            )
        for k in range(rng.randint(0, 2)):
            s.step(0, rng.randint(1, 900), time=iso(start + timedelta(seconds=6 + k)))
        if rng.random() < 0.2:
            s.agent(0, "recon", time=iso(start + timedelta(seconds=9)))
        if n % 11 != 5:  # every eleventh stream is still running
            status = rng.choice(("completed", "completed", "completed", "error", "aborted"))
            s.finished(0, status, time=iso(start + timedelta(seconds=rng.randint(10, 7200))))
        events_by_person[who].extend(s.events)
    for who, events in events_by_person.items():
        for i in range(0, len(events), 500):
            answer = client.post(
                "/api/v1/usage/events",
                json={"events": events[i : i + 500]},
                headers=people[who].headers,
            )
            assert answer.status_code == 200, answer.text
            assert not answer.json().get("rejected"), answer.text
    return people


def period_of(moment: datetime, zone: ZoneInfo, group_by: str) -> date:
    day = moment.astimezone(zone).date()
    if group_by == "week":
        return day - timedelta(days=day.weekday())
    if group_by == "month":
        return day.replace(day=1)
    return day


def naive_summary(
    store: Store,
    scope: str,
    start: datetime | None,
    end: datetime | None,
    zone: ZoneInfo,
    group_by: str | None,
    reset: datetime | None,
) -> dict[str, Any]:
    """The figures by a plain pass over every row of the scope."""

    def inside(moment: datetime) -> bool:
        return (start is None or moment >= start) and (end is None or moment < end)

    totals: dict[str, int] = defaultdict(int)
    models: dict[str, dict[str, Any]] = {}
    owners: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    statuses: dict[str, int] = defaultdict(int)
    periods: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def model_entry(name: str) -> dict[str, Any]:
        return models.setdefault(
            name,
            dict.fromkeys(
                ("tasks", "streams", "neo_credits", "tool_calls", "input_tokens", "output_tokens"),
                0,
            )
            | {"llm_cost": None},
        )

    with store.read() as db:
        emails = dict(db.execute(select(User.id, User.email)).all())
        for stream in db.scalars(select(Stream).where(Stream.scope == scope)):
            assert stream.created_at is not None
            if reset is None or stream.created_at >= reset:
                totals["post_reset"] += stream.neo_credits_nano
            if stream.status is None or stream.finished_at is None:
                continue
            if not inside(stream.created_at):
                continue
            totals["neo"] += stream.neo_credits_nano
            totals["steps"] += stream.step_count
            totals["tools"] += stream.tool_calls
            totals["agents"] += stream.agent_triggers
            totals["execution"] += stream_execution_ms(stream)
            entry = model_entry(stream_model(stream))
            entry["streams"] += 1
            entry["neo_credits"] += stream.neo_credits_nano
            entry["tool_calls"] += stream.tool_calls
            entry["input_tokens"] += stream.input_tokens
            entry["output_tokens"] += stream.output_tokens
            if stream.is_byok:
                totals["byok_streams"] += 1
                totals["byok_base"] += stream.base_nano
                totals["byok_neo"] += stream.neo_credits_nano
                entry["llm_cost"] = (entry["llm_cost"] or 0) + stream.base_nano
            assert stream.owner_user_id is not None
            owners[stream.owner_user_id][0] += stream.neo_credits_nano
            if group_by:
                periods[period_of(stream.created_at, zone, group_by).isoformat()][0] += (
                    stream.neo_credits_nano
                )
        key_columns = ("created_at", "status", "model", "owner_user_id", "is_byok")
        for values in db.execute(
            select(*(getattr(Task, name) for name in key_columns)).where(Task.scope == scope)
        ):
            figures = dict(zip(key_columns, values, strict=True))
            if not inside(figures["created_at"]):
                continue
            totals["tasks"] += 1
            statuses[figures["status"]] += 1
            model_entry(figures["model"])["tasks"] += 1
            owners[figures["owner_user_id"]][1] += 1
            if figures["is_byok"]:
                totals["byok_tasks"] += 1
            if group_by:
                periods[period_of(figures["created_at"], zone, group_by).isoformat()][1] += 1
    ranked = sorted(
        ((neo, emails[owner], tasks) for owner, (neo, tasks) in owners.items() if neo or tasks),
        key=lambda e: (-e[0], e[1]),
    )
    return {
        "total_tasks": totals["tasks"],
        "total_neo_credits": credits_from_nano(totals["neo"]),
        "by_status": dict(sorted(statuses.items())),
        "by_model": {
            name: {
                **entry,
                "neo_credits": credits_from_nano(entry["neo_credits"]),
                "llm_cost": None
                if entry["llm_cost"] is None
                else credits_from_nano(entry["llm_cost"]),
            }
            for name, entry in sorted(models.items())
        },
        "by_email": [
            {"email": email, "neo_credits": credits_from_nano(neo), "tasks": tasks}
            for neo, email, tasks in ranked
        ],
        "byok": {
            "total_llm_cost": credits_from_nano(totals["byok_base"]),
            "total_neo_cost": credits_from_nano(totals["byok_neo"]),
            "total_streams": totals["byok_streams"],
            "total_tasks": totals["byok_tasks"],
        },
        "total_steps": totals["steps"],
        "total_tool_calls": totals["tools"],
        "total_agent_triggers": totals["agents"],
        "total_execution_ms": totals["execution"],
        "total_neo_credits_post_reset": credits_from_nano(totals["post_reset"]),
        "by_period": {
            day: (credits_from_nano(neo), tasks)
            for day, (neo, tasks) in periods.items()
            if neo or tasks
        },
    }


def moments() -> st.SearchStrategy[datetime]:
    """Instants anywhere in the data, near its streams, and on or beside the edges where
    tiers meet."""
    anywhere = st.datetimes(
        min_value=datetime(2025, 9, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    )
    month_edge = st.builds(
        lambda year, month, nudge: (
            datetime(year, month, 1, tzinfo=UTC) + timedelta(microseconds=nudge)
        ),
        st.sampled_from((2025, 2026)),
        st.integers(1, 12),
        st.sampled_from((0, 0, -1, 1, 15 * 60 * 10**6, -15 * 60 * 10**6)),
    )
    quarter_hour = anywhere.map(
        lambda m: m.replace(minute=m.minute - m.minute % 15, second=0, microsecond=0)
    )
    # Within minutes of a stream: the window's edge then cuts the hour or bucket it lies in.
    near_a_stream = st.builds(
        lambda start, minutes: start + timedelta(minutes=minutes),
        st.sampled_from(STARTS),
        st.floats(-70, 70, allow_nan=False),
    )
    return st.one_of(anywhere, month_edge, quarter_hour, near_a_stream, st.sampled_from(EDGES))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.none() | moments(),
    end=st.none() | moments(),
    zone=st.sampled_from(ZONES),
    group_by=st.sampled_from((None, "day", "week", "month")),
    reset=st.none() | moments(),
)
# Windows that cut the hour, bucket and month of seeded streams (EDGES), whatever the draw.
@example(
    start=datetime(2026, 6, 15, 13, 20, tzinfo=UTC),
    end=None,
    zone="UTC",
    group_by="day",
    reset=None,
)
@example(
    start=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
    end=datetime(2026, 6, 15, 13, 10, tzinfo=UTC),
    zone="Asia/Kolkata",
    group_by="month",
    reset=datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
)
@example(
    start=datetime(2025, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    end=datetime(2026, 3, 1, tzinfo=UTC),
    zone="Europe/Berlin",
    group_by="week",
    reset=datetime(2026, 1, 1, tzinfo=UTC),
)
def test_summary_equals_a_plain_pass_over_the_rows(
    client: TestClient,
    boss: Person,
    store: Store,
    start: datetime | None,
    end: datetime | None,
    zone: str,
    group_by: str | None,
    reset: datetime | None,
) -> None:
    with store.write() as db:
        team_id = db.scalar(select(Team.id).where(Team.name == "tiers"))
        db.execute(update(Team).where(Team.id == team_id).values(credits_reset_at=reset))
    params: dict[str, str] = {"tz": zone}
    if start is not None:
        params["from"] = iso(start)
    if end is not None:
        params["to"] = iso(end)
    if group_by is not None:
        params["group_by"] = group_by
    answer = client.get(SUMMARY, params=params, headers=boss.headers)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    expected = naive_summary(store, f"t{team_id}", start, end, ZoneInfo(zone), group_by, reset)
    if start is not None and end is not None and start >= end:
        expected_periods: dict[str, Any] = {}
    else:
        expected_periods = expected["by_period"]
    for name, value in expected.items():
        if name == "by_period":
            continue
        assert got[name] == value, name
    if group_by is None:
        assert "by_period" not in got
    else:
        shown = {p["date"]: (p["neo_credits"], p["tasks"]) for p in got["by_period"]}
        assert {d: v for d, v in shown.items() if v != (0.0, 0)} == expected_periods
        assert set(expected_periods) <= set(shown)


def test_rebuilt_coarse_tiers_equal_the_ones_kept_as_deltas(boss: Person, store: Store) -> None:
    """What ingestion keeps incrementally is what a bulk loader rebuilds in one pass."""

    def coarse_rows() -> dict[str, set[tuple[Any, ...]]]:
        with store.read() as db:
            return {
                table.__tablename__: {
                    tuple(row)
                    for row in db.execute(select(*table.__table__.columns))
                    # Rows whose contributions all moved elsewhere stay behind as zeros.
                    if any(row[len(table.__table__.primary_key.columns) :])
                }
                for table in (StreamRollupMonth, TaskRollupMonth, OwnerMonth, ScopeHour)
            }

    kept = coarse_rows()
    assert all(kept.values()), "the seeded usage left a coarse tier empty"
    with store.write() as db:
        rebuild_coarse_tiers(db)
    assert coarse_rows() == kept
