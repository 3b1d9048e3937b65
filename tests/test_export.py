"""`GET /api/v1/usage/export` and `taskmeter usage export` on both stores: every level and
format agrees with the list endpoints (same filters, same scope rules), FOCUS sums to the
summary to the exact decimal, Parquet round-trips through pyarrow, bad input is a 400.

The organisation is tests/usage_org.py (1 credit = $10).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from taskmeter.cli import app
from taskmeter.export.columns import LEVELS
from taskmeter.export.focus import FOCUS_COLUMNS
from taskmeter.export.rows import stream_records, task_records
from taskmeter.pricing.credits import NANO, credits_from_nano
from taskmeter.store import Store
from taskmeter.usage.params import UsageFilters, Window
from tests.events import StreamEvents
from tests.factories import Factory, Person
from tests.spec import assert_error_response
from tests.usage_org import Org, build_org, post

EXPORT = "/api/v1/usage/export"
DOCS = (Path(__file__).resolve().parent.parent / "docs" / "exports.md").read_text()
FILTERS: list[dict[str, str]] = [
    {},
    {"task_id": "T-A"},
    {"model": "gpt-4o"},
    {"status": "error"},
    {"is_byok": "true"},
    {"email": "eve@acme.io"},
    {"from": "2026-03-28T12:00:00Z", "to": "2026-03-29"},
]
# Columns the list endpoints' TaskUsage has under the same name (credits compared apart).
SHARED = [
    c.name
    for c in LEVELS["streams"]
    if c.name not in ("stream_id", "project", "neo_credits", "llm_cost", "neo_cost")
]
MONEY = ("neo_credits", "llm_cost", "neo_cost")


@pytest.fixture
def org(client: TestClient, factory: Factory) -> Org:
    return build_org(client, factory)


def export(client: TestClient, person: Person | None, **params: Any) -> httpx.Response:
    return client.get(EXPORT, params=params, headers=person.headers if person else {})


def parse(answer: httpx.Response, fmt: str) -> list[dict[str, Any]]:
    """Rows as dicts of text (CSV), JSON values (JSONL) or Python values (Parquet)."""
    assert answer.status_code == 200, answer.text
    if fmt in ("csv", "focus"):
        return list(csv.DictReader(io.StringIO(answer.text)))
    if fmt == "jsonl":
        return [json.loads(line) for line in answer.text.splitlines()]
    return pq.read_table(io.BytesIO(answer.content)).to_pylist()  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    """A list endpoint's value as the export's CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _same(exported: Any, listed: Any, fmt: str, name: str) -> bool:
    if fmt == "csv":
        return exported == _text(listed)
    if fmt == "parquet" and name.endswith("_at"):
        return exported.isoformat().replace("+00:00", "Z") == listed  # type: ignore[no-any-return]
    return exported == listed  # type: ignore[no-any-return]


def _credits(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value)) if not isinstance(value, Decimal) else value


def listed(client: TestClient, person: Person, level: str, **params: str) -> list[dict[str, Any]]:
    answer = client.get(
        f"/api/v1/usage/{level}", params={**params, "limit": 200}, headers=person.headers
    )
    assert answer.status_code == 200, answer.text
    return list(reversed(answer.json()["data"]))  # the export is oldest first


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("level", ["streams", "tasks"])
def test_each_level_and_format_equals_the_list_endpoint(
    client: TestClient, org: Org, fmt: str, level: str
) -> None:
    key = "stream_id" if level == "streams" else "task_id"
    names = [n for n in SHARED if n in {c.name for c in LEVELS[level]}]
    for person in (org.boss, org.sol, org.olga):
        for params in FILTERS if person is org.boss else [{}]:
            rows = parse(export(client, person, format=fmt, level=level, **params), fmt)
            expected = listed(client, person, level, **params)
            assert [r[key] for r in rows] == [e[key] for e in expected], (person, params)
            for row, want in zip(rows, expected, strict=True):
                assert list(row) == [c.name for c in LEVELS[level]]
                for name in names:
                    assert _same(row[name], want.get(name), fmt, name), (name, row, want)
                for name in MONEY:
                    exact = _credits(row[name])
                    # exact to 9 places; the list endpoint rounds to 6
                    assert (exact is None) == (want[name] is None), name
                    if exact is not None:
                        assert exact == exact.quantize(Decimal("1e-9"))
                        assert credits_from_nano(int(exact * NANO)) == want[name]
            if level == "tasks":
                assert all(int(r["stream_count"]) >= 1 for r in rows)


def test_credits_are_exact_decimal_strings_and_times_utc_z(client: TestClient, org: Org) -> None:
    rows = parse(export(client, org.boss, format="jsonl"), "jsonl")
    s6 = next(r for r in rows if r["stream_id"].endswith("06"))
    # $0.015 at $10 a credit; the list endpoint says 0.0015
    assert s6["neo_credits"] == "0.001500000" and s6["llm_cost"] is None
    assert s6["created_at"] == "2026-03-29T22:30:00Z"
    s3 = next(r for r in rows if r["stream_id"].endswith("03"))
    assert (s3["llm_cost"], s3["neo_cost"], s3["neo_credits"]) == (
        "0.350000000",
        "0.035000000",
        "0.035000000",
    )
    assert s3["is_byok"] is True and s3["email"] == "eve@acme.io"


def test_calls_level_adds_up_to_its_streams(client: TestClient, org: Org) -> None:
    streams = {r["stream_id"]: r for r in parse(export(client, org.boss, format="jsonl"), "jsonl")}
    for fmt in ("csv", "jsonl", "parquet"):
        calls = parse(export(client, org.boss, format=fmt, level="calls"), fmt)
        assert list(calls[0]) == [c.name for c in LEVELS["calls"]]
        assert {c["stream_id"] for c in calls} == set(streams)
        for stream_id, stream in streams.items():
            mine = [c for c in calls if c["stream_id"] == stream_id]
            assert len(mine) == stream["llm_calls"]
            base = stream["llm_cost"] if stream["is_byok"] else stream["neo_credits"]
            assert sum(Decimal(str(c["credits"])) for c in mine) == Decimal(base)
            assert sum(int(c["input_tokens"]) for c in mine) == stream["input_tokens"]
    one = parse(export(client, org.boss, format="jsonl", level="calls", task_id="T-B"), "jsonl")
    assert [(c["model"], c["provider"], c["priced"], c["email"]) for c in one] == [
        ("gpt-4o", "openai", True, "eve@acme.io")
    ]
    solo = parse(export(client, org.sol, format="jsonl", level="calls"), "jsonl")
    assert [(c["task_id"], c["credits"], c["email"]) for c in solo] == [
        ("T-S", "0.050000000", None)
    ]


def test_scope_rules_are_the_list_endpoints(client: TestClient, org: Org) -> None:
    for fmt in ("csv", "focus", "parquet"):
        for person in (org.eve, org.vic):
            answer = export(client, person, format=fmt)
            assert answer.status_code == 403
            assert_error_response(answer.json(), code="forbidden")
        assert export(client, None, format=fmt).status_code == 401
        bad = client.get(
            EXPORT, params={"format": fmt}, headers={"X-Api-Key": "neo_sk_" + "x" * 32}
        )
        assert bad.status_code == 401
    for level in ("streams", "tasks", "calls"):
        answer = export(client, org.sol, format="jsonl", level=level, email="sol@solo.io")
        assert answer.status_code == 403
        assert_error_response(answer.json(), code="forbidden")
    tasks = {
        person.email: {r["task_id"] for r in parse(export(client, person, level="calls"), "csv")}
        for person in (org.boss, org.olga, org.sol)
    }
    assert tasks == {
        "boss@acme.io": {"T-A", "T-B", "T-C"},
        "olga@other.io": {"T-O"},
        "sol@solo.io": {"T-S"},
    }
    # another scope's rows are simply not there (no 404 for a filter, like the list endpoints)
    assert parse(export(client, org.boss, task_id="T-O"), "csv") == []
    assert parse(export(client, org.boss, email="olga@other.io", level="calls"), "csv") == []
    solo = parse(export(client, org.sol, format="jsonl"), "jsonl")
    assert [r["email"] for r in solo] == [None]
    assert {
        r["SubAccountName"] for r in parse(export(client, org.sol, format="focus"), "focus")
    } == {"sol@solo.io"}


def test_focus_columns_and_totals_match_the_summary(client: TestClient, org: Org) -> None:
    for window in ({}, {"from": "2026-03-28T11:00:00Z", "to": "2026-03-29T12:00:00Z"}):
        for person in (org.boss, org.olga, org.sol):
            answer = export(client, person, format="focus", **window)
            assert answer.headers["content-type"].startswith("text/csv")
            rows = parse(answer, "focus")
            header = answer.text.splitlines()[0]
            assert header == ",".join(c.name for c in FOCUS_COLUMNS)
            billed = sum(Decimal(r["BilledCost"]) for r in rows)
            charged = sum(Decimal(r["PricingCurrencyEffectiveCost"]) for r in rows)
            streams = parse(export(client, person, format="csv", **window), "csv")
            exact = sum(Decimal(r["neo_credits"]) for r in streams)
            assert charged == exact and billed == exact * 10  # exactly, every decimal
            summary = client.get("/api/v1/usage/summary", params=window, headers=person.headers)
            assert credits_from_nano(int(exact * NANO)) == summary.json()["total_neo_credits"]
            assert sum(int(r["x_Streams"]) for r in rows) == len(streams)
            for r in rows:
                assert Decimal(r["ListCost"]) == Decimal(r["ListUnitPrice"]) * Decimal(
                    r["PricingQuantity"]
                )
                assert r["EffectiveCost"] == r["BilledCost"] == r["ContractedCost"]
                assert (r["BillingCurrency"], r["PricingCurrency"]) == ("USD", "Neo Credits")
                assert (r["ChargeCategory"], r["ChargeClass"], r["ChargeFrequency"]) == (
                    "Usage",
                    "",
                    "Usage-Based",
                )
                assert r["ChargePeriodStart"].endswith("T00:00:00Z")
                assert json.loads(r["Tags"])["neo/model"] == r["x_Model"]
    rows = parse(export(client, org.boss, format="focus"), "focus")
    assert [
        (
            r["ChargePeriodStart"][:10],
            r["SubAccountId"],
            r["x_Model"],
            r["x_IsByok"],
            r["BilledCost"],
        )
        for r in rows
    ] == [
        ("2026-03-28", "boss@acme.io", "gpt-4o-mini", "false", "0.210000000"),
        ("2026-03-28", "eve@acme.io", "gpt-4o", "false", "0.350000000"),
        ("2026-03-28", "eve@acme.io", "gpt-4o", "true", "0.350000000"),
        ("2026-03-29", "eve@acme.io", "gpt-4o-mini", "false", "0.015000000"),
    ]
    byok = rows[2]
    assert (byok["BillingAccountId"], byok["BillingAccountName"], byok["BillingAccountType"]) == (
        "t1",
        "acme",
        "Team",
    )
    assert byok["x_LlmCost"] == "0.350000000" and byok["SkuId"] == "neo-byok-fee"
    assert (byok["BillingPeriodStart"], byok["BillingPeriodEnd"]) == (
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    )
    for column in FOCUS_COLUMNS:
        assert f"`{column.name}`" in DOCS, f"{column.name} is not in docs/exports.md"


def test_parquet_round_trips_with_types(client: TestClient, org: Org) -> None:
    answer = export(client, org.boss, format="parquet", level="tasks")
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(answer.content))
    types = {field.name: str(field.type) for field in table.schema}
    assert types["neo_credits"] == "decimal128(38, 9)"
    assert types["created_at"] == "timestamp[us, tz=UTC]"
    assert types["is_byok"] == "bool" and types["step_count"] == "int64"
    rows = table.to_pylist()
    assert [r["task_id"] for r in rows] == ["T-A", "T-B", "T-C"]
    assert rows[0]["neo_credits"] == Decimal("0.056000000")  # $0.35 + $0.21
    assert rows[1]["llm_cost"] == Decimal("0.35") and rows[0]["llm_cost"] is None


def test_without_pyarrow_parquet_is_a_clear_501(
    client: TestClient, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    answer = export(client, org.boss, format="parquet")
    assert answer.status_code == 501
    assert_error_response(answer.json(), code="parquet_unavailable")
    assert "pyarrow" in answer.json()["message"]
    assert export(client, org.boss, format="csv").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"format": "xml"},
        {"format": ""},
        {"level": "events"},
        {"level": ""},
        {"stream_id": "not-a-uuid"},
        {"status": "running"},
        {"is_byok": "yes"},
        {"from": "yesterday"},
    ],
)
def test_bad_input_is_a_400(client: TestClient, org: Org, params: dict[str, str]) -> None:
    answer = export(client, org.boss, **params)
    assert answer.status_code == 400, answer.text
    assert_error_response(answer.json(), code="invalid_request")


def test_headers_name_the_file(client: TestClient, org: Org) -> None:
    for fmt, level, media, ext in (
        ("csv", "streams", "text/csv; charset=utf-8", "csv"),
        ("jsonl", "tasks", "application/x-ndjson", "jsonl"),
        ("parquet", "calls", "application/vnd.apache.parquet", "parquet"),
        ("focus", "streams", "text/csv; charset=utf-8", "csv"),
    ):
        answer = export(client, org.boss, format=fmt, level=level)
        assert answer.headers["content-type"] == media
        disposition = answer.headers["content-disposition"]
        name = "focus" if fmt == "focus" else level
        assert disposition.startswith(f'attachment; filename="taskmeter-{name}-')
        assert disposition.endswith(f'.{ext}"')
    empty = export(client, org.boss, format="csv", task_id="none")
    assert empty.text.splitlines() == [",".join(c.name for c in LEVELS["streams"])]


def test_keyset_chunks_neither_repeat_nor_skip(
    client: TestClient, factory: Factory, store: Store
) -> None:
    """Streams sharing a created_at straddle chunk boundaries: chunk sizes 1..n give one answer."""
    boss = factory.person("boss@acme.io", team="acme", role="admin")
    events = []
    for n in range(7):
        s = StreamEvents(f"T-{n % 3}", f"00000000-0000-4000-8000-0000000000{n:02d}")
        s.started(0, time="2026-03-28T10:00:00Z" if n < 5 else "2026-03-28T11:00:00Z")
        s.llm(
            0,
            time="2026-03-28T11:30:00Z",
            model="gpt-4o",
            input_tokens=1000 * (n + 1),
            output_tokens=0,
            duration_ms=1,
        )
        s.finished(0, time="2026-03-28T12:00:00Z")
        events += s.events
    post(client, boss, events)
    scope = _scope_of(store, boss)
    f = UsageFilters(window=Window())
    whole = [r for chunk in stream_records(store, scope, f, chunk=100) for r in chunk]
    assert len(whole) == 7
    tasks = [r for chunk in task_records(store, scope, f, chunk=100) for r in chunk]
    for size in (1, 2, 3):
        assert [r for c in stream_records(store, scope, f, chunk=size) for r in c] == whole
        assert [r for c in task_records(store, scope, f, chunk=size) for r in c] == tasks


def _scope_of(store: Store, person: Person) -> Any:
    from taskmeter.identity.principal import authenticate, read_scope

    return read_scope(authenticate(store, None, api_key=person.key, authorization=None))  # type: ignore[arg-type]


def test_cli_writes_the_file(live_server: str, factory: Factory, tmp_path: Path) -> None:
    with httpx.Client(base_url=live_server) as http:
        org = build_org(http, factory)  # type: ignore[arg-type]
    runner = CliRunner(env={"TASKMETER_URL": live_server, "TASKMETER_API_KEY": org.boss.key})
    target = tmp_path / "tasks.csv"
    done = runner.invoke(
        app,
        [
            "usage",
            "export",
            "--format",
            "csv",
            "--level",
            "tasks",
            "--model",
            "gpt-4o-mini",
            "-o",
            str(target),
        ],
    )
    assert done.exit_code == 0, done.stderr
    assert "wrote" in done.stdout and not (tmp_path / "tasks.csv.part").exists()
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["task_id"] for r in rows] == ["T-A", "T-C"]
    parquet = tmp_path / "streams.parquet"
    done = runner.invoke(
        app, ["usage", "export", "--format", "parquet", "--byok", "-o", str(parquet)]
    )
    assert done.exit_code == 0, done.stderr
    assert [r["stream_id"][-2:] for r in pq.read_table(parquet).to_pylist()] == ["03"]
    focus = tmp_path / "focus.csv"
    assert (
        runner.invoke(app, ["usage", "export", "--format", "focus", "-o", str(focus)]).exit_code
        == 0
    )
    assert len(list(csv.DictReader(io.StringIO(focus.read_text())))) == 4
    bad = runner.invoke(app, ["usage", "export", "--format", "xml", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: invalid_request: ")
    assert not (tmp_path / "x").exists()
    member = CliRunner(env={"TASKMETER_URL": live_server, "TASKMETER_API_KEY": org.eve.key})
    refused = member.invoke(app, ["usage", "export", "-o", str(tmp_path / "y")])
    assert refused.exit_code == 1 and "forbidden" in refused.stderr


def test_every_column_is_documented() -> None:
    for level, columns in LEVELS.items():
        for column in columns:
            assert f"`{column.name}`" in DOCS, f"{level}.{column.name} is not in docs/exports.md"
