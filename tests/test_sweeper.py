"""The sweeper closes idle streams as aborted; a real finish arriving later wins."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from taskmeter.cli import app as cli_app
from taskmeter.ingest.sweeper import sweep
from taskmeter.store import Store
from taskmeter.timeutil import utc_now
from tests.events import StreamEvents
from tests.factories import Factory
from tests.test_ingest import post, task_row


def test_idle_streams_are_aborted_then_a_real_finish_wins(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person()
    s = StreamEvents("idle")
    post(client, ada.key, [s.started(0, model="m"), s.step(30), s.tool(40, "nmap", 500)])
    orphan = StreamEvents("orphan")
    post(client, factory.service_key(), [orphan.step(1)])  # never started: no owner

    assert sweep(store, 1800).closed == 0  # not idle yet
    report = sweep(store, 1800, now=utc_now() + timedelta(hours=1))
    assert (report.closed, report.ownerless) == (1, 1)
    row = task_row(store, "idle")
    assert (row["status"], row["error_message"]) == ("aborted", "stream timed out")
    assert row["total_execution_ms"] == 40_000  # runs to its last event
    assert sweep(store, 1800, now=utc_now() + timedelta(hours=2)).closed == 0

    post(client, ada.key, [s.finished(90, "error", error_message="boom")])
    row = task_row(store, "idle")
    assert (row["status"], row["error_message"], row["total_execution_ms"]) == (
        "error",
        "boom",
        90_000,
    )


def test_sweep_command(cli: CliRunner) -> None:
    result = cli.invoke(cli_app, ["sweep", "--json"])
    assert result.exit_code == 0, result.stderr
    assert '"closed": 0' in result.stdout
