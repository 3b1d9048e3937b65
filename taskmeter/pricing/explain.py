"""`explain_price`: which price applies to a model's calls at an instant, and why.

model, provider, at ─ the prices file's entry (its dated prices, the one in force at `at`)
                    ─ else genai-prices' (provider, model) and its price period
                    ─ else unpriced
─▶ {applies: the PriceSource calls would record, why: one sentence, schedule: the file's
    prices for the model}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskmeter.pricing.prices import GENAI_PRICES_VERSION, PriceBook
from taskmeter.pricing.provenance import PriceSource

__all__ = ["explain_price"]


def _source(source: PriceSource | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {**source.as_row(), "id": source.id}


def explain_price(
    book: PriceBook, model: str, provider: str | None, at: datetime
) -> dict[str, Any]:
    provider = provider.lower() if provider else None
    out: dict[str, Any] = {"model": model, "provider": provider, "at": at, "schedule": []}
    entry = book.override_for(model, provider)
    file_name = str(book.prices_file) if book.prices_file else None
    if entry is not None:
        out["schedule"] = [
            {"effective_from": start, "rates": _source(rates.source)["rates"]}  # type: ignore[index]
            for start, rates in entry.periods
        ]
        rates = entry.at(at)
        if rates is not None:
            start = rates.source.effective_from if rates.source else None
            since = f" effective from {start.isoformat()}" if start else " (undated)"
            out["applies"] = _source(rates.source)
            out["why"] = (
                f"the prices file {file_name} (sha256 {book.file_sha256}) prices {model!r}"
                f"{since}; the file comes before genai-prices"
            )
            return out
        first = entry.starts[0]
        out["why_not_file"] = f"the prices file prices {model!r} only from {first.isoformat()}"
    # Tier 0 (the smallest call): genai-prices' tiered models charge more past a threshold.
    rates = book.rates_for(model, provider, 0, at)
    if rates is None:
        out["applies"] = None
        out["why"] = (
            f"no price: {model!r} is in neither the prices file nor genai-prices "
            f"{GENAI_PRICES_VERSION}; its calls cost 0 and are counted unpriced"
        )
        return out
    source = rates.source
    assert source is not None
    out["applies"] = _source(source)
    named = "" if entry is not None or file_name is None else ", not in the prices file"
    out["why"] = (
        f"genai-prices {GENAI_PRICES_VERSION} prices {source.provider}/{source.model}"
        f"{named} (rates of its first tier: calls past a tier threshold pay that tier's)"
    )
    return out
