"""`taskmeter reconcile FILE` on both stores, on fixtures built from the providers' formats
(tests/fixtures/provider_reports/README.md says where each shape comes from)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from taskmeter.cli import app
from taskmeter.finance.reports import ReportError, openai_model, parse_report
from taskmeter.store import Store
from taskmeter.store.tables import USAGE_EVENTS
from tests.events import StreamEvents
from tests.factories import Factory, Person

FIXTURES = Path(__file__).parent / "fixtures" / "provider_reports"


def _run(cli: CliRunner, *args: str) -> Any:
    result = cli.invoke(app, ["reconcile", *args, "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _fails(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, ["reconcile", *args])
    assert result.exit_code != 0, (args, result.stdout)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def _call(s: StreamEvents, when: str, model: str, usd: str, **fields: Any) -> None:
    s.llm(0, time=when, model=model, cost_usd=usd, **fields)


def _ingest(client: TestClient, person: Person, *streams: StreamEvents) -> None:
    events = [e for s in streams for e in s.events]
    answer = client.post("/api/v1/usage/events", json={"events": events}, headers=person.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(events)


@pytest.fixture
def usage(client: TestClient, factory: Factory) -> Person:
    """Calls on 1 and 2 May 2026 with stated prices, so every taskmeter figure is known."""
    red = factory.person("ana@example.com", team="red", role="admin")
    solo = factory.person("bo@example.com")
    paid = StreamEvents("t-paid")
    paid.started(0)
    _call(paid, "2026-05-01T09:00:00Z", "gpt-4o-2024-08-06", "1.50", provider="openai")
    _call(paid, "2026-05-01T23:59:59.999Z", "GPT-4o-2024-08-06", "0.50", provider="OpenAI")
    # No provider stated: counted on an OpenAI report by its model.
    _call(paid, "2026-05-01T10:00:00+02:00", "gpt-4o-mini-2024-07-18", "0.10")
    # Another provider's call never counts on an OpenAI report.
    _call(paid, "2026-05-01T11:00:00Z", "claude-sonnet-4-20250514", "2.00", provider="anthropic")
    # 2 May in UTC though 1 May in New York: days are UTC.
    _call(paid, "2026-05-01T21:30:00-04:00", "gpt-4o-2024-08-06", "1.00", provider="openai")
    paid.finished(0, time="2026-05-02T02:00:00Z")
    byok = StreamEvents("t-byok")
    byok.started(0, is_byok=True)
    _call(byok, "2026-05-01T12:00:00Z", "gpt-4o-2024-08-06", "0.70", provider="openai")
    byok.finished(0)
    _ingest(client, red, paid, byok)
    other = StreamEvents("t-solo")
    other.started(0)
    _call(other, "2026-05-02T08:00:00Z", "gpt-4o-2024-08-06", "0.25", provider="openai")
    other.finished(0)
    _ingest(client, solo, other)
    return red


def _line(out: Any, day: str, model: str | None) -> dict[str, Any]:
    found = [
        line
        for line in out["lines"]
        if line["day"] == day and (line["model"] == model if model else line["day_total"])
    ]
    assert len(found) == 1, (day, model, out["lines"])
    return found[0]


def test_openai_pages_by_line_item_against_the_store(cli: CliRunner, usage: Person) -> None:
    out = _run(cli, str(FIXTURES / "openai_costs_by_line_item.json"))
    assert out["provider"] == "openai"
    may1 = _line(out, "2026-05-01", "gpt-4o-2024-08-06")
    assert may1 == {
        "day": "2026-05-01",
        "model": "gpt-4o-2024-08-06",
        "day_total": False,
        "projects": ["proj_abc"],
        "provider_usd": "2",
        "taskmeter_usd": "2",
        "taskmeter_byok_usd": "0.7",
        "calls": 3,
        "difference_usd": "0",
        "ratio": "1",
        "flagged": False,
    }
    mini = _line(out, "2026-05-01", "gpt-4o-mini-2024-07-18")
    assert (mini["provider_usd"], mini["taskmeter_usd"], mini["flagged"]) == ("0.1", "0.1", False)
    assert "claude-sonnet-4-20250514" not in {line["model"] for line in out["lines"]}
    total1 = _line(out, "2026-05-01", None)
    assert (total1["provider_usd"], total1["taskmeter_usd"], total1["flagged"]) == (
        "2.1",
        "2.1",
        False,
    )
    assert total1["projects"] == ["proj_abc", "proj_xyz"]
    # 2 May: billed 0.66 + 0.44 over two pages; taskmeter priced 1.00 + 0.25.
    may2 = _line(out, "2026-05-02", "gpt-4o-2024-08-06")
    assert (may2["provider_usd"], may2["taskmeter_usd"], may2["difference_usd"]) == (
        "1.1",
        "1.25",
        "-0.15",
    )
    assert may2["ratio"] == "1.136364" and may2["flagged"] is True
    # An empty bucket is a day the provider billed nothing, and taskmeter priced nothing.
    may3 = _line(out, "2026-05-03", None)
    assert (may3["provider_usd"], may3["taskmeter_usd"], may3["ratio"]) == ("0", "0", None)
    assert out["days_flagged"] == ["2026-05-02"]


def test_tolerance_team_project_and_provider_filters(cli: CliRunner, usage: Person) -> None:
    report = str(FIXTURES / "openai_costs_by_line_item.json")
    assert _run(cli, report, "--tolerance", "15%")["days_flagged"] == []
    # The solo user's 0.25 is not the team's: the team's 2 May matches to 10 %.
    team = _run(cli, report, "--team", "red")
    assert _line(team, "2026-05-02", "gpt-4o-2024-08-06")["taskmeter_usd"] == "1"
    assert _line(team, "2026-05-02", None)["ratio"] == "0.909091"
    one = _run(cli, report, "--project", "proj_xyz")
    gpt4o = _line(one, "2026-05-01", "gpt-4o-2024-08-06")
    assert (gpt4o["provider_usd"], gpt4o["taskmeter_usd"], gpt4o["flagged"]) == ("0", "2", True)
    every = _run(cli, report, "--provider", "any")
    assert _line(every, "2026-05-01", "claude-sonnet-4-20250514")["taskmeter_usd"] == "2"


def test_openai_json_lines_of_day_totals(cli: CliRunner, usage: Person) -> None:
    out = _run(cli, str(FIXTURES / "openai_costs_daily.jsonl"))
    assert [(line["day"], line["model"], line["day_total"]) for line in out["lines"]] == [
        ("2026-05-01", "(all models)", False),
        ("2026-05-01", None, True),
        ("2026-05-02", "(all models)", False),
        ("2026-05-02", None, True),
    ]
    assert _line(out, "2026-05-01", None)["taskmeter_usd"] == "2.1"
    assert _line(out, "2026-05-01", None)["calls"] == 4  # the BYOK call included, apart
    assert _line(out, "2026-05-02", None)["taskmeter_usd"] == "1.25"


def test_anthropic_cost_report_in_cents(cli: CliRunner, usage: Person) -> None:
    out = _run(cli, str(FIXTURES / "anthropic_cost_report.json"))
    assert out["provider"] == "anthropic"
    sonnet = _line(out, "2026-05-01", "claude-sonnet-4-20250514")
    assert (sonnet["provider_usd"], sonnet["taskmeter_usd"], sonnet["flagged"]) == (
        "2",
        "2",
        False,
    )
    assert sonnet["projects"] == ["wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ"]
    search = _line(out, "2026-05-01", "(web_search)")
    assert (search["provider_usd"], search["taskmeter_usd"]) == ("0.01", "0")
    total = _line(out, "2026-05-01", None)
    assert (total["provider_usd"], total["flagged"]) == ("2.01", False)
    # The gpt-4o-mini call named no provider, and Anthropic's bill does not list its model.
    assert "gpt-4o-mini-2024-07-18" not in {line["model"] for line in out["lines"]}
    everything = _run(cli, str(FIXTURES / "anthropic_cost_report.json"), "--provider", "any")
    assert _line(everything, "2026-05-01", "gpt-4o-2024-08-06")["flagged"] is True


def test_the_table_as_printed(cli: CliRunner, usage: Person) -> None:
    result = cli.invoke(app, ["reconcile", str(FIXTURES / "openai_costs_by_line_item.json")])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "day", "model", "projects", "provider", "$", "taskmeter", "$", "byok", "$", "calls",
        "difference", "$", "ratio", "check",
    ]  # fmt: skip
    assert lines[2].split() == [
        "2026-05-01", "gpt-4o-2024-08-06", "proj_abc", "2.000000", "2.000000", "0.700000", "3",
        "0.000000", "1.0000", "ok",
    ]  # fmt: skip
    assert any(
        line.split()[:2] == ["2026-05-02", "(day", "total)"][:2] and line.endswith("MISMATCH")
        for line in lines
    )
    assert lines[-1] == "openai: 3 days, tolerance 2%; days beyond it: 2026-05-02"


def _event_count(store: Store) -> int:
    with store.read() as db:
        return int(db.scalar(select(func.count()).select_from(USAGE_EVENTS)) or 0)


def test_bad_input_is_one_line_and_changes_nothing(
    cli: CliRunner, usage: Person, store: Store, tmp_path: Path
) -> None:
    before = _event_count(store)
    text = (FIXTURES / "openai_costs_by_line_item.json").read_text()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    assert "not valid JSON" in _fails(cli, str(truncated))
    assert "no such file" in _fails(cli, str(tmp_path / "missing.json"))
    usage_report = _fails(cli, str(FIXTURES / "openai_usage_completions.json"))
    assert "organization.usage.completions.result" in usage_report
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"events": [{"id": "e1"}]}))
    assert "not a cost report page" in _fails(cli, str(other))
    assert "tolerance" in _fails(cli, str(truncated.with_name("x")), "--tolerance", "lots")
    assert "no team" in _fails(cli, str(FIXTURES / "openai_costs_daily.jsonl"), "--team", "nobody")
    assert _event_count(store) == before


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("", "empty"),
        ("[]", "no report pages"),
        ('{"data": [{"starting_at": "2026-05-01T00:00:00Z", "ending_at": '
         '"2026-05-02T00:00:00Z", "results": [{"amount": "1", "currency": "EUR"}]}]}', "USD"),
        ('{"object": "page", "data": [{"object": "bucket", "start_time": 1777593600, '
         '"end_time": 1777597200, "results": []}]}', "one day wide"),
        ('{"object": "page", "data": [{"object": "bucket", "start_time": 1777593600, '
         '"results": [{"object": "organization.costs.result", "amount": {"value": "x", '
         '"currency": "usd"}}]}]}', "not a number"),
        ('[{"object": "page", "data": [{"object": "bucket", "start_time": 1777593600, '
         '"results": []}]}, {"data": [{"starting_at": "2026-05-01T00:00:00Z", '
         '"results": []}]}]', "mixes"),
    ],
)  # fmt: skip
def test_malformed_reports_are_refused(document: str, reason: str) -> None:
    with pytest.raises(ReportError, match=reason):
        parse_report(document)


def test_amounts_stay_exact_decimals() -> None:
    values = ["0.1"] * 10 + ["0.2000000000000000111"]
    results = ", ".join(
        '{"object": "organization.costs.result", "amount": {"value": ' + v + ', "currency": "usd"}}'
        for v in values
    )
    text = (
        '{"object": "page", "data": [{"object": "bucket", "start_time": 1777593600, '
        f'"end_time": 1777680000, "results": [{results}]}}]}}'
    )
    report = parse_report(text)
    assert sum(row.usd for row in report.rows) == Decimal("1.2000000000000000111")


def test_line_items_name_models() -> None:
    assert openai_model("gpt-4o-2024-08-06, input") == "gpt-4o-2024-08-06"
    assert openai_model("GPT-4o-mini, cached input") == "gpt-4o-mini"
    assert openai_model("Image models") == "image models"
    assert openai_model(None) is None
