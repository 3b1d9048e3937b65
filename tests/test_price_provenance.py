"""Price provenance on both stores: each priced call names its source (stated, the prices file
by sha256, genai-prices by version, with the rates), dated prices apply from their date, and
`taskmeter prices show` says which price applies and why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from taskmeter.cli.app import app
from taskmeter.pricing.prices import GENAI_PRICES_VERSION, PriceBook, PricesFileError
from taskmeter.store import Store
from taskmeter.store.tables import PRICE_SOURCES, USAGE_EVENTS
from tests.events import StreamEvents
from tests.factories import Factory
from tests.test_reprice import PRICES_V2, ingest, prices_file


def _events() -> list[dict[str, object]]:
    s = StreamEvents(stream_id="00000000-0000-4000-8000-000000000001")
    s.started(0, user="ada@example.com")
    s.llm(1, id="file-may", model="my-model", time="2026-05-31T23:59:59Z")
    s.llm(2, id="file-june", model="My-Model", time="2026-06-01T00:00:00Z")
    s.llm(3, id="genai", model="gpt-4o", provider="OpenAI", cache_read_tokens=100)
    s.llm(4, id="stated", model="gpt-4o", cost_usd="0.5")
    s.llm(5, id="unpriced", model="not-a-model")
    s.tool(6, id="tool")
    s.finished(7)
    return s.events


def test_every_priced_call_records_its_source(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    factory.person("ada@example.com")
    path = prices_file(tmp_path, "prices.toml", PRICES_V2)
    ingest(store, PriceBook(path), _events())
    with store.read() as db:
        events = {
            e.event_id: e
            for e in db.execute(select(USAGE_EVENTS.c.event_id, USAGE_EVENTS.c.price_source_id))
        }
        sources = {s.id: s for s in db.execute(select(PRICE_SOURCES))}
    assert events["unpriced"].price_source_id is None
    assert events["tool"].price_source_id is None
    may = sources[events["file-may"].price_source_id]
    june = sources[events["file-june"].price_source_id]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (may.kind, may.ref, may.model, may.effective_from) == ("file", sha, "my-model", None)
    assert may.rates == {
        "input_mtok": "1",
        "output_mtok": "2",
        "cache_read_mtok": "1",
        "cache_write_mtok": "1",
    }
    assert (june.kind, june.ref, june.effective_from.isoformat()) == (
        "file",
        sha,
        "2026-06-01T00:00:00+00:00",
    )
    assert june.rates["input_mtok"] == "3" and june.rates["output_mtok"] == "4"
    genai = sources[events["genai"].price_source_id]
    assert (genai.kind, genai.ref, genai.provider, genai.model) == (
        "genai-prices",
        GENAI_PRICES_VERSION,
        "openai",
        "gpt-4o",
    )
    assert genai.rates["input_mtok"] == "2.5" and genai.rates["cache_read_mtok"] == "1.25"
    stated = sources[events["stated"].price_source_id]
    assert (stated.kind, stated.ref, stated.rates) == ("stated", None, None)
    # Recorded once each, however many batches used them; the file's three prices with the
    # first batch, used or not (mystery's is not).
    assert len(sources) == 5


def test_a_price_change_applies_from_its_date(
    store: Store, factory: Factory, tmp_path: Path
) -> None:
    factory.person("ada@example.com")
    ingest(store, PriceBook(prices_file(tmp_path, "p.toml", PRICES_V2)), _events())
    with store.read() as db:
        cost = dict(db.execute(select(USAGE_EVENTS.c.event_id, USAGE_EVENTS.c.cost_nano)).all())
    # 1000 input + 100 output: $0.0012 at 1/2 per million, $0.0034 at 3/4 ($10 a credit).
    assert cost["file-may"] == 120_000 and cost["file-june"] == 340_000


def test_a_source_rolled_back_is_written_again(store: Store, tmp_path: Path) -> None:
    book = PriceBook(prices_file(tmp_path, "p.toml", PRICES_V2))
    with pytest.raises(RuntimeError), store.write() as db:
        book.sources.write_pending(db)
        raise RuntimeError("the batch failed")
    with store.write() as db:
        written = book.sources.write_pending(db)
    book.sources.committed(written)
    with store.read() as db:
        assert len(db.execute(select(PRICE_SOURCES)).all()) == len(written) == 3
    with store.write() as db:
        assert book.sources.write_pending(db) == ()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "[models.m]\ninput_mtok = 1\noutput_mtok = 1\n[[models.m.prices]]\n"
            "effective_from = 2026-06-01\ninput_mtok = 2\noutput_mtok = 2\n"
            "[[models.m.prices]]\neffective_from = 2026-06-01T00:00:00Z\n"
            "input_mtok = 3\noutput_mtok = 3\n",
            "two prices with one effective_from",
        ),
        (
            '[[models.m.prices]]\neffective_from = "June"\ninput_mtok = 2\noutput_mtok = 2\n',
            "must be a date or an instant",
        ),
        ("[[models.m.prices]]\ninput_mtok = 2\noutput_mtok = 2\n", "needs effective_from"),
        ("[models.m]\nprices = 3\n", "must be an array of tables"),
        (f'[models."{"m" * 201}"]\ninput_mtok = 1\noutput_mtok = 1\n', "at most 200"),
    ],
)
def test_bad_dated_prices_are_refused(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(PricesFileError, match=message):
        PriceBook(prices_file(tmp_path, "bad.toml", content))


def test_prices_show_tells_which_price_and_why(database_url: str, tmp_path: Path) -> None:
    path = prices_file(tmp_path, "p.toml", PRICES_V2)
    cli = CliRunner(
        env={"TASKMETER_DATABASE_URL": database_url, "TASKMETER_PRICES_FILE": str(path)}
    )
    may = cli.invoke(app, ["prices", "show", "my-model", "--at", "2026-05-31T23:59:59Z"])
    assert may.exit_code == 0, may.output
    assert "the prices file" in may.output and "(undated)" in may.output
    assert "input_mtok 1, output_mtok 2" in may.output
    june = cli.invoke(app, ["prices", "show", "my-model", "--at", "2026-06-01", "--json"])
    shown = json.loads(june.output)
    assert shown["applies"]["kind"] == "file"
    assert shown["applies"]["effective_from"] == "2026-06-01T00:00:00Z"
    assert shown["applies"]["ref"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p["effective_from"] for p in shown["schedule"]] == [None, "2026-06-01T00:00:00Z"]
    genai = cli.invoke(app, ["prices", "show", "gpt-4o", "--provider", "openai", "--json"])
    shown = json.loads(genai.output)
    assert shown["applies"]["kind"] == "genai-prices"
    assert shown["applies"]["ref"] == GENAI_PRICES_VERSION
    assert "not in the prices file" in shown["why"]
    none = cli.invoke(app, ["prices", "show", "not-a-model"])
    assert none.exit_code == 0 and none.output.startswith("no price:")
    bad = cli.invoke(app, ["prices", "show", "gpt-4o", "--at", "soon"])
    assert bad.exit_code == 1
    assert bad.output.strip() == "error: --at 'soon' is not a date or RFC 3339 time"


def test_a_stated_cost_with_the_longest_names_is_recorded(store: Store, factory: Factory) -> None:
    """Model and provider names as long as the ingest API accepts fit the source row."""
    factory.person("ada@example.com")
    s = StreamEvents()
    s.started(0, user="ada@example.com")
    s.llm(1, model="m" * 200, provider="p" * 200, cost_usd="0.1")
    ingest(store, PriceBook(), s.events)
    with store.read() as db:
        (source,) = db.execute(select(PRICE_SOURCES)).all()
    assert (source.kind, len(source.model), len(source.provider)) == ("stated", 200, 200)
