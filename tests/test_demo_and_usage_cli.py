"""`taskmeter demo` (through the real ingest path, safe to re-run) and `taskmeter usage …`."""

from __future__ import annotations

import json
from collections import defaultdict

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from taskmeter.cli import app
from taskmeter.store import Store
from taskmeter.store.tables import Stream, Task, UsageEvent
from tests.timeline_checks import assert_stream_fits, assert_task_fits, unix_ms


def test_demo_builds_an_org_and_reruns_add_nothing(cli: CliRunner, store: Store) -> None:
    first = cli.invoke(app, ["demo", "--tasks", "40", "--json"])
    assert first.exit_code == 0, first.stderr
    made = json.loads(first.stdout)
    assert set(made["keys"]) == {
        "admin@acme.example",
        "maria@acme.example",
        "kenji@acme.example",
        "viewer@acme.example",
        "solo@indie.example",
    }
    with store.read() as db:
        counts = [
            db.scalar(select(func.count()).select_from(t)) for t in (UsageEvent, Stream, Task)
        ]
        statuses = set(db.scalars(select(Stream.status)).all())
        scopes = set(db.scalars(select(Stream.scope)).all())
        byok = db.scalar(select(func.count()).select_from(Stream).where(Stream.is_byok))
    assert counts[0] == made["events"] and counts[1] == made["streams"]
    assert "completed" in statuses and len(statuses) >= 2
    assert "t1" in scopes and any(s and s.startswith("u") for s in scopes)
    assert byok and byok > 0
    assert made["caps"] == [
        "team Acme Security: 6 credits a month",
        "project External pentest: 8 credits in total",
    ]
    again = cli.invoke(app, ["demo", "--tasks", "40", "--json"])
    assert again.exit_code == 0, again.stderr
    with store.read() as db:
        assert [
            db.scalar(select(func.count()).select_from(t)) for t in (UsageEvent, Stream, Task)
        ] == counts


def test_demo_calls_fit_inside_their_streams(
    cli: CliRunner, store: Store, client: TestClient
) -> None:
    """Every demo stream's events lie in its started–finished window and its calls fit in its
    execution (tests/timeline_checks.py says exactly how); the API serves tasks that agree."""
    made = json.loads(cli.invoke(app, ["demo", "--tasks", "60", "--json"]).stdout)
    calls: dict[str, list[tuple[int, int]]] = defaultdict(list)
    times: dict[str, list[int]] = defaultdict(list)
    with store.read() as db:
        for event in db.scalars(select(UsageEvent)):
            stream = str(event.stream_id)
            times[stream].append(unix_ms(event.time))
            if event.type in ("llm.call", "tool.call"):
                calls[stream].append((unix_ms(event.time), event.payload["duration_ms"]))
        streams = list(db.scalars(select(Stream)))
    assert len(streams) == made["streams"]
    bursts = 0
    for row in streams:
        assert row.created_at is not None and row.finished_at is not None
        start, end = unix_ms(row.created_at), unix_ms(row.finished_at)
        stream = str(row.stream_id)
        assert min(times[stream]) == start and max(times[stream]) == end, stream
        assert_stream_fits(start, end, calls[stream], stream)
        bursts += row.tool_time_ms > end - start
    assert bursts > 0  # tool time outlasts a stream only through its parallel bursts
    admin = {"X-Api-Key": made["keys"]["admin@acme.example"]}
    solo = {"X-Api-Key": made["keys"]["solo@indie.example"]}
    served = bursting = 0
    for headers in (admin, solo):
        page = client.get("/api/v1/usage/tasks", params={"limit": 100}, headers=headers)
        assert page.status_code == 200, page.text
        for row in page.json()["data"]:
            task = client.get(f"/api/v1/usage/tasks/{row['task_id']}", headers=headers).json()
            bursting += assert_task_fits(task)
            served += 1
    assert served == made["tasks"] and 0 < bursting < served


def test_usage_commands_read_a_live_server(live_server: str, database_url: str) -> None:
    runner = CliRunner(env={"TASKMETER_DATABASE_URL": database_url})
    keys = json.loads(runner.invoke(app, ["demo", "--tasks", "25", "--json"]).stdout)["keys"]
    admin = keys["admin@acme.example"]
    reader = CliRunner(env={"TASKMETER_URL": live_server, "TASKMETER_API_KEY": admin})
    tasks = reader.invoke(app, ["usage", "tasks", "--json", "--sort", "cost", "--limit", "3"])
    assert tasks.exit_code == 0, tasks.stderr
    page = json.loads(tasks.stdout)
    assert len(page["data"]) == 3 and page["total"] >= 3
    costs = [row["neo_credits"] for row in page["data"]]
    assert costs == sorted(costs, reverse=True)
    task_id = page["data"][0]["task_id"]
    one = reader.invoke(app, ["usage", "task", task_id, "--json"])
    assert json.loads(one.stdout)["task_id"] == task_id
    assert reader.invoke(app, ["usage", "task", task_id]).exit_code == 0  # the table form
    summary = reader.invoke(app, ["usage", "summary", "--group-by", "week", "--json"])
    assert json.loads(summary.stdout)["total_tasks"] == page["total"]
    streams = reader.invoke(app, ["usage", "streams", "--task-id", task_id, "--json"])
    rows = json.loads(streams.stdout)["data"]
    assert rows and {row["task_id"] for row in rows} == {task_id}
    assert len(rows) == page["data"][0]["stream_count"]
    assert reader.invoke(app, ["usage", "streams"]).exit_code == 0  # the table form
    missing = reader.invoke(app, ["usage", "task", "no-such-task"])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: not_exists")
    viewer = CliRunner(
        env={"TASKMETER_URL": live_server, "TASKMETER_API_KEY": keys["viewer@acme.example"]}
    )
    denied = viewer.invoke(app, ["usage", "tasks"])
    assert denied.exit_code == 1 and "forbidden" in denied.stderr
    keyless = CliRunner(env={"TASKMETER_URL": live_server}).invoke(app, ["usage", "tasks"])
    assert keyless.exit_code == 1 and "API key" in keyless.stderr
