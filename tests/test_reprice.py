"""Re-pricing on both stores: the plan, the applied change, resumption, the log, bad input,
and every figure rebuilt from the events (a store's, and a re-priced store's with its log)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from taskmeter.cli.app import app
from taskmeter.finance.reprice import RepriceError, RepriceFilter, reprice
from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.tables import (
    PRICE_SOURCES,
    REPRICE_RUNS,
    STREAM_FIGURES,
    STREAMS,
    TASKS,
    USAGE_EVENTS,
    OwnerMonth,
    ScopeHour,
    ScopeTotal,
    StreamRollup,
    StreamRollupMonth,
    TaskRollup,
    TaskRollupMonth,
)
from tests.events import StreamEvents
from tests.factories import Factory

SERVICE = Principal(via="api_key", key_id="key_test", service_name="reprice-test")
CREDIT_USD = Decimal(10)
RATE = Decimal("0.1")

PRICES_V1 = """
[models."my-model"]
input_mtok = 1
output_mtok = 2
"""
# From June on my-model costs more, and "mystery" (unpriced so far) gets a price.
PRICES_V2 = """
[models."my-model"]
input_mtok = 1
output_mtok = 2

[[models."my-model".prices]]
effective_from = 2026-06-01
input_mtok = 3
output_mtok = 4

[models."mystery"]
input_mtok = 5
output_mtok = 5
"""

ROLLUP_TABLES = (
    StreamRollup,
    StreamRollupMonth,
    TaskRollup,
    TaskRollupMonth,
    OwnerMonth,
    ScopeHour,
    ScopeTotal,
)


def prices_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def org(factory: Factory) -> None:
    factory.person("ada@example.com", team="red", role="admin")
    factory.person("bob@example.com", team="red")
    factory.person("cy@example.com")


def usage_events(streams: int = 6) -> list[dict[str, Any]]:
    """Streams of three owners, two tasks of several streams, May and June calls, a BYOK
    stream, a stated cost, an unpriced model and an open stream."""
    events: list[dict[str, Any]] = []
    users = ("ada@example.com", "bob@example.com", "cy@example.com")
    for n in range(streams):
        s = StreamEvents(task_id=f"task-{n % 3}", stream_id=f"00000000-0000-4000-8000-{n:012d}")
        s.started(0, user=users[n % 3], is_byok=n == 4, model="my-model")
        s.llm(10, model="my-model", input_tokens=1000 + n, output_tokens=200)
        s.llm(20, model="my-model", time=f"2026-06-0{1 + n % 3}T00:00:00Z", input_tokens=500)
        s.llm(30, model="gpt-4o", provider="openai", input_tokens=2000, cache_read_tokens=500)
        s.llm(40, model="mystery", input_tokens=300)
        s.llm(50, model="my-model", cost_usd="0.25")
        s.tool(60)
        if n != 5:  # one stream stays open (counted by balances, not yet in tasks)
            s.finished(70, time="2026-06-05T00:00:00Z")
        events += s.events
    return events


def ingest(store: Store, book: PriceBook, events: list[dict[str, Any]]) -> None:
    ingestor = Ingestor(store, book, credit_usd=CREDIT_USD, default_rate=RATE)
    # Several batches: the projection does not depend on the split.
    for start in range(0, len(events), 7):
        result = ingestor.ingest(SERVICE, events[start : start + 7])
        assert not result.rejected, result.rejected


def stored_events(store: Store) -> list[dict[str, Any]]:
    """The stored events as they were sent (their payload holds every other field)."""
    with store.read() as db:
        rows = db.execute(select(USAGE_EVENTS).order_by(USAGE_EVENTS.c.received_at)).all()
    return [
        {
            "id": r.event_id,
            "type": r.type,
            "time": r.time.isoformat(),
            "stream_id": str(r.stream_id),
            "task_id": r.task_id,
            **r.payload,
        }
        for r in rows
    ]


def wipe_usage(store: Store) -> None:
    """Every usage figure gone, the identity kept: a fresh store for the same people."""
    tables = [USAGE_EVENTS, STREAMS, TASKS, PRICE_SOURCES, REPRICE_RUNS]
    tables += [t.__table__ for t in ROLLUP_TABLES]  # type: ignore[misc]
    with store.write() as db:
        for table in tables:
            db.execute(table.delete())


def _values(row: Any, skip: tuple[str, ...] = ()) -> str:
    return json.dumps({k: v for k, v in row._mapping.items() if k not in skip}, default=str)


def snapshot(store: Store) -> dict[str, Any]:
    """Every figure the store serves or charges from, in a stable order."""
    out: dict[str, Any] = {}
    with store.read() as db:
        out["events"] = sorted(
            _values(r)
            for r in db.execute(
                select(
                    USAGE_EVENTS.c.stream_id,
                    USAGE_EVENTS.c.event_id,
                    USAGE_EVENTS.c.cost_nano,
                    USAGE_EVENTS.c.price_source_id,
                )
            )
        )
        out["streams"] = sorted(
            _values(r, ("last_received_at",)) for r in db.execute(select(STREAMS))
        )
        out["tasks"] = sorted(_values(r) for r in db.execute(select(TASKS)))
        for model in ROLLUP_TABLES:
            table = model.__table__
            figures = [c.name for c in table.columns if c.name in FIGURE_NAMES]
            out[table.name] = sorted(
                _values(r)
                for r in db.execute(select(table))
                # A row whose every figure went back to 0 is no figure.
                if any(r._mapping[n] for n in figures)
            )
    return out


FIGURE_NAMES = (*STREAM_FIGURES, "finished_streams", "tasks")


def run(store: Store, book: PriceBook, **options: Any) -> Any:
    rules = options.pop("rules", RepriceFilter())
    return reprice(store, book, rules, credit_usd=CREDIT_USD, default_rate=RATE, **options)


def test_rebuilt_from_events_to_the_nano_credit(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    """Must hold: a store's numbers rebuilt from its events, and a re-priced store's from its
    events plus the log (its rule: the prices file by sha256), equal to the nano-credit."""
    org(factory)
    v1 = PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1))
    ingest(store, v1, usage_events())
    original = snapshot(store)
    events = stored_events(store)
    wipe_usage(store)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), events)
    assert snapshot(store) == original

    v2_path = prices_file(tmp_path, "v2.toml", PRICES_V2)
    outcome = run(store, PriceBook(v2_path), actor="finance")
    repriced = snapshot(store)
    assert repriced != original
    with store.read() as db:
        logged = db.execute(select(REPRICE_RUNS)).one()
    assert logged.state == "done" and logged.actor == "finance"
    assert logged.rule["prices_file_sha256"] == PriceBook(v2_path).file_sha256
    assert logged.calls_done == outcome.plan.calls_changed == logged.calls_changed > 0

    # Rebuild: the same events ingested under the logged rule.
    events = stored_events(store)
    wipe_usage(store)
    ingest(store, PriceBook(Path(logged.rule["prices_file"])), events)
    rebuilt = snapshot(store)
    assert rebuilt == repriced
    with store.read() as db:
        calls = db.execute(
            select(USAGE_EVENTS.c.payload, USAGE_EVENTS.c.cost_nano).where(
                USAGE_EVENTS.c.type == "llm.call"
            )
        ).all()
    total = sum(c.cost_nano or 0 for c in calls if "cost_usd" not in c.payload)
    assert total == logged.base_after_nano


def test_plan_counts_and_what_applying_changes(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events())
    before = snapshot(store)
    with store.read() as db:
        unpriced_before = db.execute(select(STREAMS.c.unpriced_calls)).scalars().all()
    v2 = PriceBook(prices_file(tmp_path, "v2.toml", PRICES_V2))
    dry = run(store, v2, dry_run=True)
    assert snapshot(store) == before, "a dry run changes nothing"
    plan = dry.plan
    # Per stream: the June my-model call and the mystery call change in cost; the May
    # my-model call keeps its price but now comes from another file (its sha256: a new
    # source); the gpt-4o call is unchanged; the stated call is not in range.
    assert plan.calls_seen == 6 * 4
    assert plan.calls_cost_changed == 6 * 2 and plan.calls_changed == 6 * 3
    assert plan.newly_priced == 6 and plan.streams_changed == 6
    assert plan.tasks_changed == 3
    # mystery: 300 input + 100 output at $5/M = $0.002 = 200,000 nano-credits at $10 a
    # credit; June my-model: 500 × 2 + 100 × 2 more = $0.0012 → 120,000.
    assert {r["key"]: r["delta_nano"] for r in plan.counts()["by_model"]} == {
        "mystery": 6 * 200_000,
        "my-model": 6 * 120_000,
    }
    assert {r["key"] for r in plan.counts()["by_month"]} == {"2026-05", "2026-06"}
    assert {r["key"]: r["delta_nano"] for r in plan.counts()["by_user"]} == {
        "ada@example.com": 2 * 320_000,
        "bob@example.com": 2 * 320_000,
        "cy@example.com": 2 * 320_000,
    }
    delta = plan.base_after_nano - plan.base_before_nano
    assert delta == 6 * 320_000
    # The BYOK stream is charged a tenth of its change.
    assert plan.charged_after_nano - plan.charged_before_nano == 5 * 320_000 + 32_000

    applied = run(store, v2, group_streams=2)
    assert applied.transactions == 3
    with store.read() as db:
        streams = db.execute(select(STREAMS).order_by(STREAMS.c.stream_id)).all()
        after_rollups = db.execute(
            select(StreamRollup.neo_credits_nano, StreamRollup.base_nano)  # type: ignore[arg-type]
        ).all()
    assert [s.unpriced_calls for s in streams] == [u - 1 for u in unpriced_before]
    assert sum(r.base_nano for r in after_rollups) == sum(s.base_nano for s in streams)
    assert sum(r.neo_credits_nano for r in after_rollups) == sum(
        s.neo_credits_nano for s in streams
    )
    # Run again: nothing is left to change.
    again = run(store, v2, dry_run=True)
    assert again.plan.calls_changed == 0


def test_stated_costs_are_kept_unless_asked(store: Store, factory: Factory, tmp_path: Path) -> None:
    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events(3))
    v2 = PriceBook(prices_file(tmp_path, "v2.toml", PRICES_V2))
    stated = run(store, v2, dry_run=True, rules=RepriceFilter(include_stated=True)).plan
    default = run(store, v2, dry_run=True).plan
    assert stated.calls_seen == default.calls_seen + 3
    # The stated $0.25 calls (100 output, 1000 input) re-priced from the rules: cheaper.
    assert stated.base_after_nano < default.base_after_nano + 3 * 25_000_000


def test_filters_narrow_the_plan(store: Store, factory: Factory, tmp_path: Path) -> None:
    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events())
    v2 = PriceBook(prices_file(tmp_path, "v2.toml", PRICES_V2))

    def changed(**rules: Any) -> int:
        return int(run(store, v2, dry_run=True, rules=RepriceFilter(**rules)).plan.calls_changed)

    from taskmeter.timeutil import parse_instant

    assert changed(model="mystery") == 6
    assert changed(model="my-model") == 12
    assert changed(provider="openai") == 0
    assert changed(start=parse_instant("2026-06-01")) == 6
    assert changed(end=parse_instant("2026-06-01")) == 12
    assert changed(user_email="cy@example.com") == 6
    assert changed(team_name="red") == 12


def test_interrupted_run_resumes_to_the_same_numbers(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    org(factory)
    v1_path = prices_file(tmp_path, "v1.toml", PRICES_V1)
    ingest(store, PriceBook(v1_path), usage_events())
    events = stored_events(store)
    v2 = PriceBook(prices_file(tmp_path, "v2.toml", PRICES_V2))
    run(store, v2, group_streams=1)
    uninterrupted = snapshot(store)
    with store.read() as db:
        whole = db.execute(select(REPRICE_RUNS)).one()

    wipe_usage(store)
    ingest(store, PriceBook(v1_path), events)
    with pytest.raises(RuntimeError, match="injected failure after 2"):
        run(store, v2, group_streams=1, fail_after=2)
    with store.read() as db:
        failed = db.execute(select(REPRICE_RUNS)).one()
    assert failed.state == "failed" and failed.transactions == 2
    # A task's streams go in one transaction: three tasks of two streams each.
    assert failed.streams_done == 4 and failed.cursor is not None
    half = snapshot(store)
    assert half not in (uninterrupted,)
    resumed = run(store, v2, group_streams=1)
    assert resumed.resumed and resumed.transactions == 1
    assert snapshot(store) == uninterrupted
    with store.read() as db:
        done = db.execute(select(REPRICE_RUNS)).one()
    for name in ("calls_done", "streams_done", "transactions", "base_before_nano",
                 "base_after_nano", "calls_changed", "tasks_changed"):  # fmt: skip
        assert getattr(done, name) == getattr(whole, name), name
    assert done.state == "done"


def test_bad_input_is_one_line_and_changes_nothing(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events(2))
    before = snapshot(store)
    from taskmeter.timeutil import parse_instant

    with pytest.raises(RepriceError, match="unknown model 'nope'"):
        run(store, PriceBook(), rules=RepriceFilter(model="nope"))
    with pytest.raises(RepriceError, match="is after --to"):
        run(
            store,
            PriceBook(),
            rules=RepriceFilter(start=parse_instant("2026-07-01"), end=parse_instant("2026-06-01")),
        )
    with pytest.raises(RepriceError, match="no user"):
        run(store, PriceBook(), rules=RepriceFilter(user_email="nobody@example.com"))
    assert snapshot(store) == before


def test_cli_dry_run_apply_and_log(
    database_url: str, store: Store, factory: Factory, tmp_path: Path
) -> None:
    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events(3))
    v2 = prices_file(tmp_path, "v2.toml", PRICES_V2)
    cli = CliRunner(env={"TASKMETER_DATABASE_URL": database_url, "TASKMETER_PRICES_FILE": str(v2)})
    before = snapshot(store)
    dry = cli.invoke(app, ["reprice", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "12 calls in range; 9 change (6 in cost" in dry.output
    assert "dry run: nothing changed" in dry.output
    assert snapshot(store) == before
    bad = cli.invoke(app, ["reprice", "--model", "nope"])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == [
        "error: unknown model 'nope': no recorded calls and no price"
    ]
    bad = cli.invoke(app, ["reprice", "--from", "2026-07-01", "--to", "2026-06-01"])
    assert bad.exit_code == 1 and bad.output.startswith("error: --from")
    applied = cli.invoke(app, ["reprice", "--actor", "finance@example.com"])
    assert applied.exit_code == 0, applied.output
    assert "applied: run 1, 1 transactions" in applied.output
    log = cli.invoke(app, ["reprice", "log", "--json"])
    assert log.exit_code == 0, log.output
    (entry,) = json.loads(log.output)
    assert entry["actor"] == "finance@example.com" and entry["state"] == "done"
    assert entry["calls_done"] == 9 and entry["streams_done"] == 3
    assert entry["base_after_nano"] - entry["base_before_nano"] == 3 * 320_000
    table = cli.invoke(app, ["reprice", "log"])
    assert table.exit_code == 0 and "finance@example.com" in table.output


def test_concurrent_ingestion_stays_exact(store: Store, factory: Factory, tmp_path: Path) -> None:
    """Calls landing in the streams being re-priced (by a server already on the new prices)
    end exactly where a rebuild from the events under those prices puts them."""
    import threading

    org(factory)
    ingest(store, PriceBook(prices_file(tmp_path, "v1.toml", PRICES_V1)), usage_events(12))
    v2_path = prices_file(tmp_path, "v2.toml", PRICES_V2)
    ingestor = Ingestor(store, PriceBook(v2_path), credit_usd=CREDIT_USD, default_rate=RATE)
    errors: list[BaseException] = []

    def more_calls() -> None:
        try:
            for round_ in range(6):
                batch = []
                for n in range(12):
                    stream = StreamEvents(
                        task_id=f"task-{n % 3}", stream_id=f"00000000-0000-4000-8000-{n:012d}"
                    )
                    batch.append(
                        stream.llm(
                            100 + round_,
                            id=f"late-{round_}",
                            model="mystery",
                            time="2026-06-03T00:00:00Z",
                        )
                    )
                result = ingestor.ingest(SERVICE, batch)
                assert result.accepted == 12, result
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    writer = threading.Thread(target=more_calls)
    writer.start()
    run(store, PriceBook(v2_path), group_streams=1)
    writer.join()
    assert not errors, errors
    # Whatever the interleaving, a second pass finds nothing left to re-price …
    assert run(store, PriceBook(v2_path), dry_run=True).plan.calls_changed == 0
    repriced = snapshot(store)
    # … and the figures are the events' under the new prices.
    events = stored_events(store)
    wipe_usage(store)
    ingest(store, PriceBook(v2_path), events)
    assert snapshot(store) == repriced


def test_killed_run_resumes_to_the_same_numbers(
    database_url: str, store: Store, factory: Factory, tmp_path: Path
) -> None:
    """`taskmeter reprice` killed (SIGKILL) between transactions, then run again, ends where
    a rebuild from the events under the new prices (= an uninterrupted run) does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    org(factory)
    events: list[dict[str, Any]] = []
    for n in range(150):  # one task a stream: 150 transactions of one stream
        s = StreamEvents(task_id=f"kill-{n}", stream_id=f"00000000-0000-4000-9000-{n:012d}")
        s.started(0, user="ada@example.com")
        s.llm(1, model="mystery")
        s.finished(2)
        events += s.events
    ingest(store, PriceBook(), events)
    v2 = prices_file(tmp_path, "v2.toml", PRICES_V2)
    env = {**os.environ, "TASKMETER_DATABASE_URL": database_url, "TASKMETER_PRICES_FILE": str(v2)}
    command = [str(Path(sys.executable).parent / "taskmeter"), "reprice", "--group-streams", "1"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    progress = 0
    while time.monotonic() < deadline and child.poll() is None:
        with store.read() as db:
            progress = db.execute(select(REPRICE_RUNS.c.transactions)).scalar() or 0
        if progress >= 3:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    child.wait()
    with store.read() as db:
        killed = db.execute(select(REPRICE_RUNS)).one()
    if child.returncode != -signal.SIGKILL or killed.state == "done":
        pytest.skip("the run finished before it could be killed")
    assert killed.state == "running" and 3 <= killed.transactions < 150
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "resuming the unfinished run" in again.stdout
    with store.read() as db:
        done = db.execute(select(REPRICE_RUNS)).one()
    assert (done.state, done.transactions, done.streams_done, done.calls_done) == (
        "done",
        150,
        150,
        150,
    )
    repriced = snapshot(store)
    events = stored_events(store)
    wipe_usage(store)
    ingest(store, PriceBook(v2), events)
    assert snapshot(store) == repriced
