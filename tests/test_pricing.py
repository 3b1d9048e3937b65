"""Pricing: genai-prices' own numbers, operator overrides, stated costs, unpriced models, BYOK."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from taskmeter.app import create_app
from taskmeter.cli import app as cli_app
from taskmeter.config import Settings
from taskmeter.identity import service
from taskmeter.pricing.prices import CallTokens, PriceBook, PricesFileError, usd_to_nano_credits
from taskmeter.store import Store
from taskmeter.store.tables import Stream
from tests.events import StreamEvents
from tests.factories import Factory
from tests.test_ingest import post, task_row

WHEN = datetime(2026, 5, 1, tzinfo=UTC)
REAL_MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", None),
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),  # tiered prices: the full genai-prices path
    ("gemini-2.5-pro", "google"),
]
BOOK = PriceBook()


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(REAL_MODELS),
    input_tokens=st.integers(0, 400_000),
    output_tokens=st.integers(0, 100_000),
    cached=st.floats(0, 1),
    written=st.floats(0, 1),
)
def test_prices_equal_genai_prices_own_numbers(
    model: tuple[str, str | None],
    input_tokens: int,
    output_tokens: int,
    cached: float,
    written: float,
) -> None:
    cache_read = int(input_tokens * cached)
    cache_write = int((input_tokens - cache_read) * written)
    ours = BOOK.price_usd(
        model[0], model[1], CallTokens(input_tokens, output_tokens, cache_read, cache_write), WHEN
    )
    theirs = calc_price(
        Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        ),
        model[0],
        provider_id=model[1],
        genai_request_timestamp=WHEN,
    ).total_price
    assert ours == theirs


def _stream(s: StreamEvents, model: str, **call: Any) -> list[dict[str, Any]]:
    s.started(0, model=model)
    s.llm(1, model=model, **call)
    s.finished(2)
    return s.events


def _nano(store: Store, task_id: str) -> int:
    with store.read() as db:
        return db.scalars(select(Stream.neo_credits_nano).where(Stream.task_id == task_id)).one()


def test_three_real_models_one_with_cache_tokens(
    client: TestClient, factory: Factory, store: Store
) -> None:
    ada = factory.person()
    calls = {
        "gpt-4o": dict(
            provider="openai", input_tokens=12_000, output_tokens=800, cache_read_tokens=8_000
        ),
        "claude-3-5-sonnet-20241022": dict(
            provider="anthropic",
            input_tokens=30_000,
            output_tokens=2_000,
            cache_read_tokens=20_000,
            cache_write_tokens=5_000,
        ),
        "gemini-2.5-pro": dict(provider="google", input_tokens=5_000, output_tokens=1_000),
    }
    for model, call in calls.items():
        assert post(client, ada.key, _stream(StreamEvents(model), model, **call)).status_code == 200
        expected = calc_price(
            Usage(
                input_tokens=call["input_tokens"],
                output_tokens=call["output_tokens"],
                cache_read_tokens=call.get("cache_read_tokens", 0),
                cache_write_tokens=call.get("cache_write_tokens", 0),
            ),
            model,
            provider_id=call["provider"],
            genai_request_timestamp=datetime(2026, 5, 1, 8, 0, 1, tzinfo=UTC),
        ).total_price
        assert _nano(store, model) == usd_to_nano_credits(expected, Decimal(10))
        assert task_row(store, model)["neo_credits"] == round(float(expected) / 10, 6)
    # gpt-4o by hand: 4k uncached × $2.5 + 8k cached × $1.25 + 800 out × $10 per MTok = $0.028
    assert _nano(store, "gpt-4o") == 2_800_000


def test_stated_cost_is_kept(client: TestClient, factory: Factory, store: Store) -> None:
    ada = factory.person()
    post(client, ada.key, _stream(StreamEvents("stated"), "gpt-4o", cost_usd="0.123456789"))
    assert _nano(store, "stated") == 12_345_679  # $0.123456789 / 10 in nano-credits, half-even


def test_unknown_model_costs_zero_and_is_listed(
    client: TestClient,
    factory: Factory,
    store: Store,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from typer.testing import CliRunner

    ada = factory.person()
    for task in ("u1", "u2"):
        post(client, ada.key, _stream(StreamEvents(task), "acme-llm-9000"))
    assert _nano(store, "u1") == 0
    with store.read() as db:
        assert db.scalars(select(Stream.unpriced_calls)).all() == [1, 1]
    assert [r.message for r in caplog.records].count(
        "no price for model 'acme-llm-9000': its calls cost 0 and are counted unpriced"
    ) == 1
    result = CliRunner(env={"TASKMETER_DATABASE_URL": database_url}).invoke(
        cli_app, ["prices", "check", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert '"model": "acme-llm-9000"' in result.stdout and '"unpriced_calls": 2' in result.stdout


def test_overrides_win_over_genai_prices(
    tmp_path: Path, factory: Factory, store: Store, database_url: str
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models."gpt-4o"]\ninput_mtok = 1\noutput_mtok = 2\ncache_read_mtok = 0.5\n'
        '[models."acme-llm-9000"]\ninput_mtok = 10\noutput_mtok = 10\n'
    )
    app = create_app(Settings(database_url=database_url, prices_file=prices), store=store)
    ada = factory.person()
    with TestClient(app) as client:
        post(
            client,
            ada.key,
            _stream(
                StreamEvents("o1"),
                "gpt-4o",
                input_tokens=1_000_000,
                output_tokens=1_000_000,
                cache_read_tokens=500_000,
            ),
        )
        post(
            client,
            ada.key,
            _stream(StreamEvents("o2"), "acme-llm-9000", input_tokens=100_000, output_tokens=0),
        )
    assert _nano(store, "o1") == 275_000_000  # ($0.5 + $0.25 + $2) / 10
    assert _nano(store, "o2") == 100_000_000  # $1 / 10


@pytest.mark.parametrize(
    "text",
    [
        "[models.x]\ninput_mtok = 1\n",
        "[models.x]\ninput_mtok = -1\noutput_mtok = 1\n",
        "[models.x]\ninput_mtok = 1\noutput_mtok = 1\nfoo = 2\n",
        "not toml [",
    ],
)
def test_bad_prices_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PricesFileError):
        PriceBook(path)


def test_byok_arithmetic(client: TestClient, factory: Factory, store: Store) -> None:
    """BYOK: llm_cost = base, neo_cost = base × rate (user's, else the default 0.1)."""
    ada = factory.person("ada@example.com")
    rich = factory.person("rich@example.com")
    with store.write() as db:
        service.find_user(db, "rich@example.com").neo_cost_rate = Decimal("0.25")
    call = dict(provider="openai", input_tokens=1_000_000, output_tokens=100_000)  # $3.50
    for person, task in ((ada, "b1"), (rich, "b2")):
        s = StreamEvents(task)
        s.started(0, model="gpt-4o", is_byok=True)
        s.llm(1, model="gpt-4o", **call)
        s.finished(2)
        assert post(client, person.key, s.events).status_code == 200
    plain = StreamEvents("b3")
    post(client, ada.key, _stream(plain, "gpt-4o", **call))
    b1, b2, b3 = (task_row(store, t) for t in ("b1", "b2", "b3"))
    assert (b1["is_byok"], b1["llm_cost"], b1["neo_cost"], b1["neo_credits"]) == (
        True,
        0.35,
        0.035,
        0.035,
    )
    assert (b2["llm_cost"], b2["neo_cost"], b2["neo_credits"]) == (0.35, 0.0875, 0.0875)
    assert (b3["is_byok"], b3["llm_cost"], b3["neo_cost"], b3["neo_credits"]) == (
        False,
        None,
        None,
        0.35,
    )


def test_nano_credit_conversion_rounds_half_even() -> None:
    assert usd_to_nano_credits(Decimal("0.000000015"), Decimal(10)) == 2  # 1.5 → 2
    assert usd_to_nano_credits(Decimal("0.000000025"), Decimal(10)) == 2  # 2.5 → 2
    assert usd_to_nano_credits(Decimal("1"), Decimal("3")) == 333_333_333


def test_unpriced_calls_are_a_metric(client: TestClient, factory: Factory) -> None:
    ada = factory.person()
    for task in ("m1", "m2", "m3"):
        post(client, ada.key, _stream(StreamEvents(task), 'weird "model"'))
    post(client, ada.key, _stream(StreamEvents("m4"), "gpt-4o"))
    text = client.get("/metrics").text
    assert "# TYPE taskmeter_unpriced_calls_total counter" in text
    assert 'taskmeter_unpriced_calls_total{model="weird \\"model\\""} 3' in text
    # Priced: in the credit and token counters, not among the unpriced.
    assert 'taskmeter_unpriced_calls_total{model="gpt-4o"}' not in text
    assert 'model="gpt-4o"' in text
