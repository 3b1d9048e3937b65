"""`price_call`: the USD cost of one model call, exact, from genai-prices or operator overrides.

Order of precedence (SEMANTICS.md): a cost the call states itself; else the operator's
override table (`TASKMETER_PRICES_FILE`); else genai-prices' price database. A model found in
neither costs 0 and is *unpriced*: logged once per model and reported by `prices check`.

genai-prices' full calculation costs ~120-400 µs a call, too slow for ingestion. Within one
price tier a price is linear in token counts, so we ask genai-prices for the per-token rates
once per (model, provider, price period, tier) and apply them (~3 µs a call).
`tests/test_pricing.py` checks, over random calls that cross tier thresholds, that the result
equals genai-prices' own `calc_price` to the last digit.

Override file (TOML), prices in USD per million tokens:

    [models."my-finetune"]
    input_mtok = 1.5
    output_mtok = 6
    cache_read_mtok = 0.15        # optional
    cache_write_mtok = 1.875      # optional
    provider = "openai"           # optional: only when the call names this provider
"""

from __future__ import annotations

import logging
import threading
import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage, data_snapshot
from genai_prices.types import TieredPrices

__all__ = ["CallTokens", "PriceBook", "PricesFileError", "usd_to_nano_credits"]

log = logging.getLogger("taskmeter.pricing")
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class CallTokens:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class Rates:
    """USD per token of each kind; `input` applies to uncached input only."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal

    def cost(self, tokens: CallTokens) -> Decimal:
        uncached = tokens.input_tokens - tokens.cache_read_tokens - tokens.cache_write_tokens
        return (
            uncached * self.input
            + tokens.cache_read_tokens * self.cache_read
            + tokens.cache_write_tokens * self.cache_write
            + tokens.output_tokens * self.output
        )


class PricesFileError(ValueError):
    pass


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PricesFileError(f"{where} must be a number")
    number = Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise PricesFileError(f"{where} must be a number ≥ 0")
    return number


@dataclass(frozen=True)
class Override:
    rates: Rates
    provider: str | None


def load_overrides(path: Path) -> dict[str, Override]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PricesFileError(f"{path}: {exc}") from exc
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise PricesFileError(f"{path}: [models] must be a table of model names")
    overrides: dict[str, Override] = {}
    for name, entry in models.items():
        where = f"{path}: models.{name!r}"
        if not isinstance(entry, dict) or "input_mtok" not in entry or "output_mtok" not in entry:
            raise PricesFileError(f"{where} needs input_mtok and output_mtok")
        unknown = set(entry) - {
            "input_mtok",
            "output_mtok",
            "cache_read_mtok",
            "cache_write_mtok",
            "provider",
        }
        if unknown:
            raise PricesFileError(f"{where} has unknown keys {sorted(unknown)}")
        input_rate = _decimal(entry["input_mtok"], f"{where}.input_mtok") / MILLION
        rates = Rates(
            input=input_rate,
            output=_decimal(entry["output_mtok"], f"{where}.output_mtok") / MILLION,
            cache_read=_decimal(entry.get("cache_read_mtok", entry["input_mtok"]), where) / MILLION,
            cache_write=_decimal(entry.get("cache_write_mtok", entry["input_mtok"]), where)
            / MILLION,
        )
        provider = entry.get("provider")
        overrides[name.lower()] = Override(rates, provider.lower() if provider else None)
    return overrides


def usd_to_nano_credits(usd: Decimal, credit_usd: Decimal) -> int:
    """USD → integer nano-credits, rounded half-even (per call, so sums never depend on order)."""
    return int((usd * 1_000_000_000 / credit_usd).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class PriceBook:
    """Prices calls; one per process, shared by every request (thread-safe)."""

    def __init__(self, prices_file: Path | None = None) -> None:
        self.overrides = load_overrides(prices_file) if prices_file else {}
        self._snapshot = data_snapshot.get_snapshot()
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str | None], Any] = {}
        self._rates: dict[tuple[int, int, int], Rates] = {}
        self._thresholds: dict[int, list[int]] = {}
        self.unpriced: dict[str, int] = {}

    def _override(self, model: str, provider: str | None) -> Rates | None:
        entry = self.overrides.get(model.lower())
        if entry is None:
            return None
        if entry.provider is not None and provider is not None and entry.provider != provider:
            return None
        return entry.rates

    def _lookup(self, model: str, provider: str | None) -> Any:
        """(provider, model info) from genai-prices, or None; cached, misses included."""
        key = (model, provider)
        if key not in self._found:
            found: Any = None
            for provider_id in (provider, None) if provider else (None,):
                try:
                    found = self._snapshot.find_provider_model(model, None, provider_id, None)
                    break
                except LookupError:
                    continue
            with self._lock:
                self._found[key] = found
        return self._found[key]

    def _tier_rates(self, provider: Any, info: Any, when: datetime, input_tokens: int) -> Rates:
        """Per-token rates for a call of `input_tokens`, asked of genai-prices once per tier.

        genai-prices prices tiers as cliffs: the request's total input picks one tier for all
        its tokens, so within a tier the price is linear and fixed rates reproduce it exactly.
        """
        model_price = info.get_prices(when)
        thresholds = self._thresholds.get(id(model_price))
        if thresholds is None:
            thresholds = sorted(
                {
                    tier.start
                    for value in model_price.__dict__.values()
                    if isinstance(value, TieredPrices)
                    for tier in value.tiers
                }
            )
            with self._lock:
                # Keyed by identity: the snapshot's price objects live as long as this book.
                self._thresholds[id(model_price)] = thresholds
        tier = sum(1 for start in thresholds if input_tokens > start)
        key = (id(info), id(model_price), tier)
        rates = self._rates.get(key)
        if rates is None:
            # A token count inside this tier to measure the rates at.
            if tier:
                probe = thresholds[tier - 1] + 1
            else:
                probe = max(1, thresholds[0]) if thresholds else 1_000_000

            def price(**usage: int) -> Decimal:
                total = info.calc_price(Usage(**usage), provider, genai_request_timestamp=when)
                return Decimal(total.total_price)

            base = price(input_tokens=probe)
            rates = Rates(
                input=base / probe,
                output=(price(input_tokens=probe, output_tokens=probe) - base) / probe,
                cache_read=price(input_tokens=probe, cache_read_tokens=probe) / probe,
                cache_write=price(input_tokens=probe, cache_write_tokens=probe) / probe,
            )
            with self._lock:
                self._rates[key] = rates
        return rates

    def price_usd(
        self, model: str | None, provider: str | None, tokens: CallTokens, when: datetime
    ) -> Decimal | None:
        """The call's USD cost, or None when no price is known for its model."""
        if not model:
            self._count_unpriced("(no model)")
            return None
        provider = provider.lower() if provider else None
        rates = self._override(model, provider)
        if rates is not None:
            return rates.cost(tokens)
        found = self._lookup(model, provider)
        if found is None:
            self._count_unpriced(model)
            return None
        genai_provider, info = found
        return self._tier_rates(genai_provider, info, when, tokens.input_tokens).cost(tokens)

    def has_price(self, model: str, provider: str | None = None) -> bool:
        """Whether calls of `model` would be priced now (override or genai-prices)."""
        provider = provider.lower() if provider else None
        return (
            self._override(model, provider) is not None or self._lookup(model, provider) is not None
        )

    def _count_unpriced(self, model: str) -> None:
        with self._lock:
            first = model not in self.unpriced
            self.unpriced[model] = self.unpriced.get(model, 0) + 1
        if first:
            log.warning("no price for model %r: its calls cost 0 and are counted unpriced", model)
