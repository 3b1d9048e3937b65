"""The benchmarks' bulk generator (bench/generate.py) builds the store ingestion would have.

Query figures at 1M or 10M streams are worth only as much as the store they are measured on:
the generator writes task rows and rollups itself (on PostgreSQL from two processes at once),
so what the API reads back from them must equal a plain pass over the generated stream rows.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from taskmeter.app import create_app
from taskmeter.config import Settings
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.tables import Stream, Task
from taskmeter.timeline import lay_out, union_ms
from taskmeter.usage.figures import render_task_usage, stream_figures, task_figures
from tests.test_summary_tiers import naive_summary
from tests.timeline_checks import assert_stream_fits, assert_task_fits, unix_ms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import generate


def test_a_generated_store_reads_back_as_its_stream_rows_add_up(
    database_url: str, settings: Settings
) -> None:
    manifest = generate.generate(database_url, 600, chunk=100, workers=2, progress=False)
    assert manifest["streams"] == 600
    store = Store(settings.sqlalchemy_url)
    try:
        with store.read() as db:
            assert db.scalar(select(func.count()).select_from(Stream)) == 600
            assert db.scalar(select(func.count()).select_from(Task)) == manifest["tasks"]
            scopes = {
                who: db.scalar(select(Task.scope).where(Task.task_id == manifest[f"{who}_task"]))
                for who in ("admin", "solo")
            }
        until = datetime.fromisoformat(manifest["until"])
        start = until - timedelta(days=365)
        with TestClient(create_app(settings, store=store)) as client:
            for who, scope in scopes.items():
                assert scope is not None
                headers = {"X-Api-Key": manifest[f"{who}_key"]}
                answer = client.get(
                    "/api/v1/usage/summary",
                    params={"from": start.isoformat(), "to": until.isoformat(), "group_by": "day"},
                    headers=headers,
                )
                assert answer.status_code == 200, answer.text
                _assert_summary(
                    answer.json(),
                    naive_summary(store, scope, start, until, ZoneInfo("UTC"), "day", None),
                    admin=who == "admin",
                )
                task_id = manifest[f"{who}_task"]
                answer = client.get(f"/api/v1/usage/tasks/{task_id}", headers=headers)
                assert answer.status_code == 200, answer.text
                assert _without_email(answer.json()) == _task_from_streams(store, scope, task_id)
                assert_task_fits(answer.json())
        with store.read() as db:
            for row in db.scalars(select(Stream)):
                _assert_row_fits(row)
    finally:
        store.dispose()


def _assert_row_fits(row: Stream) -> None:
    """A generated stream row's calls fit in its execution (tests/timeline_checks.py): its
    tool calls from the history; its model calls, never overlapping a tool call, by their time."""
    assert row.created_at is not None and row.finished_at is not None
    start, end = unix_ms(row.created_at), unix_ms(row.finished_at)
    calls = [(at, took) for at, _, _, took in row.tool_history]
    assert_stream_fits(start, end, calls, str(row.stream_id))
    assert union_ms([(a, a + d) for a, d in calls]) + row.llm_time_ms <= end - start
    assert row.step_latency_ms <= end - start
    assert row.tool_time_ms == sum(d for _, d in calls)


def test_the_timeline_lays_calls_inside_the_stream_and_repeats_by_seed() -> None:
    bursts = 0
    for seed in range(300):
        rng = random.Random(seed)
        steps = [
            (rng.randint(200, 20_000), [rng.randint(20, 60_000) for _ in range(rng.randint(0, 9))])
            for _ in range(rng.randint(1, 20))
        ]
        layout = lay_out(random.Random(seed).random, 1_000_000, steps)
        assert layout == lay_out(random.Random(seed).random, 1_000_000, steps)
        took = [d for _, block in steps for d in block]
        models = [(at, think) for at, (think, _) in zip(layout.model_at, steps, strict=True)]
        tools = list(zip(layout.tool_at, took, strict=True))
        assert layout.tool_at == sorted(set(layout.tool_at))  # history order, no ties
        assert_stream_fits(1_000_000, layout.end_ms, models + tools, f"seed {seed}")
        bursts += sum(took) > layout.end_ms - 1_000_000
    assert bursts > 0


def test_the_generator_repeats_by_seed() -> None:
    prices = PriceBook()
    created = datetime(2026, 6, 1, tzinfo=UTC)

    def one(seed: int) -> list[object]:
        rng = random.Random(seed)
        row = generate.make_stream(
            rng, prices, (1, 1, "t1"), "T", created, generate.MODELS[0], False
        )
        return [getattr(row, c) for c in generate.STREAM_COLUMNS]

    assert one(5) == one(5) and one(5) != one(6)


def _assert_summary(got: dict[str, Any], expected: dict[str, Any], *, admin: bool) -> None:
    assert expected["total_tasks"] > 0
    if not admin:  # the per-member ranking is for team admins only
        assert "by_email" not in got
        del expected["by_email"]
    for name, value in expected.items():
        if name != "by_period":
            assert got[name] == value, name
    shown = {p["date"]: (p["neo_credits"], p["tasks"]) for p in got["by_period"]}
    assert {d: v for d, v in shown.items() if v != (0.0, 0)} == expected["by_period"]


def _task_from_streams(store: Store, scope: str, task_id: str) -> dict[str, Any]:
    """The task as the service aggregates it from its stored stream rows."""
    with store.read() as db:
        streams = list(
            db.scalars(select(Stream).where(Stream.scope == scope, Stream.task_id == task_id))
        )
        assert streams
        figures = task_figures([stream_figures(s) for s in streams])
    return _without_email(orjson.loads(render_task_usage(figures)))


def _without_email(usage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in usage.items() if k != "email"}
