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

    [[models."my-finetune".prices]]   # optional: a price from a date on (by the call's time)
    effective_from = 2026-06-01       # a date (00:00 UTC) or an instant
    input_mtok = 1.2
    output_mtok = 5

A model's flat rates apply before its first `effective_from` (a model with only dated prices
is not priced by the file before the first one). Every rate found carries its `PriceSource`
(provenance.py): the file's sha256 or genai-prices' version, and the per-million rates.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import threading
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage, data_snapshot
from genai_prices.types import TieredPrices

from taskmeter.pricing.provenance import PriceSource, SourceLedger

__all__ = [
    "GENAI_PRICES_VERSION",
    "CallTokens",
    "PriceBook",
    "PricesFileError",
    "Rates",
    "usd_to_nano_credits",
]

log = logging.getLogger("taskmeter.pricing")
MILLION = Decimal(1_000_000)
GENAI_PRICES_VERSION = importlib.metadata.version("genai-prices")


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
    # Where these rates came from; its id is what a priced call records.
    source: PriceSource | None = field(default=None, compare=False)

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


_RATE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


@dataclass(frozen=True)
class Override:
    """A model's prices in the file: flat rates (from the start of time) and dated ones."""

    provider: str | None
    # (effective_from or None for the flat rates, rates), sorted by time, None first.
    periods: tuple[tuple[datetime | None, Rates], ...]

    def at(self, when: datetime) -> Rates | None:
        periods = self.periods
        if len(periods) == 1 and periods[0][0] is None:
            return periods[0][1]
        chosen: Rates | None = None
        for start, rates in periods:
            if start is None or start <= when:
                chosen = rates
            else:
                break
        return chosen

    @property
    def starts(self) -> list[datetime]:
        return [start for start, _ in self.periods if start is not None]


def _instant(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time(), tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _instant(datetime.fromisoformat(value.strip().replace("Z", "+00:00")), where)
        except ValueError:
            pass
    raise PricesFileError(f"{where} must be a date or an instant (e.g. 2026-06-01)")


def _rates(entry: dict[str, Any], where: str, source: dict[str, Any]) -> Rates:
    if "input_mtok" not in entry or "output_mtok" not in entry:
        raise PricesFileError(f"{where} needs input_mtok and output_mtok")
    per_million = [
        _decimal(entry.get(key, entry["input_mtok"]), f"{where}.{key}") for key in _RATE_KEYS
    ]
    provenance = PriceSource(
        kind="file", rates=PriceSource.per_million([r / MILLION for r in per_million]), **source
    )
    per_token = [r / MILLION for r in per_million]
    return Rates(per_token[0], per_token[1], per_token[2], per_token[3], source=provenance)


def load_overrides(path: Path) -> dict[str, Override]:
    return parse_overrides(path, _read(path)[0])


def _read(path: Path) -> tuple[str, str]:
    """The file's text and its sha256 (the `ref` its prices are recorded under)."""
    try:
        raw = path.read_bytes()
        return raw.decode(), hashlib.sha256(raw).hexdigest()
    except (OSError, UnicodeDecodeError) as exc:
        raise PricesFileError(f"{path}: {exc}") from exc


def parse_overrides(path: Path, text: str, sha256: str | None = None) -> dict[str, Override]:
    sha256 = sha256 or hashlib.sha256(text.encode()).hexdigest()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PricesFileError(f"{path}: {exc}") from exc
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise PricesFileError(f"{path}: [models] must be a table of model names")
    overrides: dict[str, Override] = {}
    for name, entry in models.items():
        where = f"{path}: models.{name!r}"
        if not isinstance(entry, dict):
            raise PricesFileError(f"{where} needs input_mtok and output_mtok")
        unknown = set(entry) - {*_RATE_KEYS, "provider", "prices"}
        if unknown:
            raise PricesFileError(f"{where} has unknown keys {sorted(unknown)}")
        provider = entry.get("provider")
        if provider is not None and not isinstance(provider, str):
            raise PricesFileError(f"{where}.provider must be a string")
        provider = provider.lower() if provider else None
        if len(name) > 200 or len(provider or "") > 200:
            # Calls name models and providers in at most 200 characters (and so do sources).
            raise PricesFileError(f"{where}: model and provider names are at most 200 characters")
        source = {"ref": sha256, "model": name.lower(), "provider": provider}
        periods: list[tuple[datetime | None, Rates]] = []
        dated = entry.get("prices", [])
        if not isinstance(dated, list) or not all(isinstance(d, dict) for d in dated):
            raise PricesFileError(f"{where}.prices must be an array of tables ([[…prices]])")
        if not dated or set(entry) & set(_RATE_KEYS):
            periods.append((None, _rates(entry, where, {**source, "effective_from": None})))
        for n, period in enumerate(dated):
            at = f"{where}.prices[{n}]"
            unknown = set(period) - {*_RATE_KEYS, "effective_from"}
            if unknown or "effective_from" not in period:
                raise PricesFileError(f"{at} needs effective_from; unknown keys {sorted(unknown)}")
            start = _instant(period["effective_from"], f"{at}.effective_from")
            periods.append((start, _rates(period, at, {**source, "effective_from": start})))
        starts = [start for start, _ in periods if start is not None]
        if len(set(starts)) != len(starts):
            raise PricesFileError(f"{where} has two prices with one effective_from")
        periods.sort(key=lambda p: (p[0] is not None, p[0] or datetime.min.replace(tzinfo=UTC)))
        overrides[name.lower()] = Override(provider, tuple(periods))
    return overrides


def usd_to_nano_credits(usd: Decimal, credit_usd: Decimal) -> int:
    """USD → integer nano-credits, rounded half-even (per call, so sums never depend on order)."""
    return int((usd * 1_000_000_000 / credit_usd).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class PriceBook:
    """Prices calls; one per process, shared by every request (thread-safe).

    `sources` collects the provenance of every rate this book has built, for the writer to
    record (`SourceLedger`); a call's source is found with its rates, at no extra cost.
    """

    def __init__(self, prices_file: Path | None = None) -> None:
        self.prices_file = prices_file
        self.file_sha256: str | None = None
        self.overrides: dict[str, Override] = {}
        if prices_file:
            text, self.file_sha256 = _read(prices_file)
            self.overrides = parse_overrides(prices_file, text, self.file_sha256)
        self.sources = SourceLedger()
        for override in self.overrides.values():
            for _, rates in override.periods:
                assert rates.source is not None
                self.sources.seen(rates.source)
        self._snapshot = data_snapshot.get_snapshot()
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str | None], Any] = {}
        self._rates: dict[tuple[int, int, int], Rates] = {}
        self._thresholds: dict[int, list[int]] = {}
        self._stated: dict[tuple[str | None, str | None], PriceSource] = {}
        self.unpriced: dict[str, int] = {}

    def override_for(self, model: str, provider: str | None) -> Override | None:
        entry = self.overrides.get(model.lower())
        if entry is None:
            return None
        if entry.provider is not None and provider is not None and entry.provider != provider:
            return None
        return entry

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
            per_token = (
                base / probe,
                (price(input_tokens=probe, output_tokens=probe) - base) / probe,
                price(input_tokens=probe, cache_read_tokens=probe) / probe,
                price(input_tokens=probe, cache_write_tokens=probe) / probe,
            )
            source = PriceSource(
                kind="genai-prices",
                ref=GENAI_PRICES_VERSION,
                model=info.id,
                provider=provider.id,
                rates=PriceSource.per_million(per_token),
                effective_from=_period_start(info, model_price),
            )
            rates = Rates(*per_token, source=source)
            self.sources.seen(source)
            with self._lock:
                self._rates[key] = rates
        return rates

    def rates_for(
        self, model: str | None, provider: str | None, input_tokens: int, when: datetime
    ) -> Rates | None:
        """The rates a call of `model` with `input_tokens` at `when` is priced at, or None."""
        if not model:
            self._count_unpriced("(no model)")
            return None
        provider = provider.lower() if provider else None
        entry = self.override_for(model, provider)
        if entry is not None:
            rates = entry.at(when)
            if rates is not None:
                return rates
        found = self._lookup(model, provider)
        if found is None:
            self._count_unpriced(model)
            return None
        genai_provider, info = found
        return self._tier_rates(genai_provider, info, when, input_tokens)

    def price_usd(
        self, model: str | None, provider: str | None, tokens: CallTokens, when: datetime
    ) -> Decimal | None:
        """The call's USD cost, or None when no price is known for its model."""
        rates = self.rates_for(model, provider, tokens.input_tokens, when)
        return None if rates is None else rates.cost(tokens)

    def stated_source(self, model: str | None, provider: str | None) -> PriceSource:
        """The provenance of a cost the call stated itself (one per model and provider)."""
        key = (model, provider)
        source = self._stated.get(key)
        if source is None:
            source = PriceSource("stated", None, model, provider.lower() if provider else None,
                                 None, None)  # fmt: skip
            self.sources.seen(source)
            with self._lock:
                self._stated[key] = source
        return source

    def has_price(self, model: str, provider: str | None = None) -> bool:
        """Whether calls of `model` would be priced now (override or genai-prices)."""
        provider = provider.lower() if provider else None
        return (
            self.override_for(model, provider) is not None
            or self._lookup(model, provider) is not None
        )

    def genai_model(self, model: str, provider: str | None) -> Any:
        """genai-prices' (provider, model info) for this model, or None (for `prices show`)."""
        return self._lookup(model, provider.lower() if provider else None)

    def _count_unpriced(self, model: str) -> None:
        with self._lock:
            first = model not in self.unpriced
            self.unpriced[model] = self.unpriced.get(model, 0) + 1
        if first:
            log.warning("no price for model %r: its calls cost 0 and are counted unpriced", model)


def _period_start(info: Any, model_price: Any) -> datetime | None:
    """When genai-prices' price period holding `model_price` began, where it says."""
    prices = getattr(info, "prices", None)
    if not isinstance(prices, list):
        return None
    for conditional in prices:
        if getattr(conditional, "prices", None) is model_price:
            start = getattr(getattr(conditional, "constraint", None), "start_date", None)
            if isinstance(start, datetime):
                return start if start.tzinfo else start.replace(tzinfo=UTC)
            if isinstance(start, date):
                return datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    return None
