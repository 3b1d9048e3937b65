"""A FOCUS 1.2 cost and usage dataset of the scope's charges (format=focus, docs/exports.md).

One row per UTC day × user × model × BYOK of the finished streams that match the filters,
from the streams walked oldest first (rows.stream_chunks): a day's groups are emitted when the
walk passes the day, so memory holds one day's groups.

Money: the platform bills in Neo credits, bought at `TASKMETER_CREDIT_USD` USD each. FOCUS
wants a national BillingCurrency, so the cost columns are USD (credits × credit price, exact),
the priced unit is the credit (PricingQuantity credits, ListUnitPrice the credit price), and
FOCUS 1.2's virtual-currency columns carry the credits themselves (PricingCurrency
"Neo Credits", PricingCurrencyEffectiveCost = credits charged).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from taskmeter.export.columns import Column, Kind
from taskmeter.export.rows import Record, stream_chunks
from taskmeter.identity.principal import Scope
from taskmeter.store import Store
from taskmeter.usage.params import UsageFilters

__all__ = ["FOCUS_COLUMNS", "FocusAccount", "focus_records"]

PLATFORM = "Neo"
PRICING_CURRENCY = "Neo Credits"


def _f(name: str, kind: Kind = "string", *, null: bool = True, unit: str = "") -> Column:
    return Column(name, kind, null, unit, "")


# The FOCUS 1.2 columns in the specification's (alphabetical) order, then our x_ columns.
FOCUS_COLUMNS: tuple[Column, ...] = (
    _f("AvailabilityZone"),
    _f("BilledCost", "decimal", null=False, unit="USD"),
    _f("BillingAccountId", null=False),
    _f("BillingAccountName"),
    _f("BillingAccountType"),
    _f("BillingCurrency", null=False),
    _f("BillingPeriodEnd", "time", null=False),
    _f("BillingPeriodStart", "time", null=False),
    _f("CapacityReservationId"),
    _f("CapacityReservationStatus"),
    _f("ChargeCategory", null=False),
    _f("ChargeClass"),
    _f("ChargeDescription"),
    _f("ChargeFrequency"),
    _f("ChargePeriodEnd", "time", null=False),
    _f("ChargePeriodStart", "time", null=False),
    _f("CommitmentDiscountCategory"),
    _f("CommitmentDiscountId"),
    _f("CommitmentDiscountName"),
    _f("CommitmentDiscountQuantity", "decimal"),
    _f("CommitmentDiscountStatus"),
    _f("CommitmentDiscountType"),
    _f("CommitmentDiscountUnit"),
    _f("ConsumedQuantity", "decimal", unit="tokens"),
    _f("ConsumedUnit"),
    _f("ContractedCost", "decimal", null=False, unit="USD"),
    _f("ContractedUnitPrice", "decimal", unit="USD per credit"),
    _f("EffectiveCost", "decimal", null=False, unit="USD"),
    _f("InvoiceId"),
    _f("InvoiceIssuerName", null=False),
    _f("ListCost", "decimal", null=False, unit="USD"),
    _f("ListUnitPrice", "decimal", unit="USD per credit"),
    _f("PricingCategory"),
    _f("PricingCurrency"),
    _f("PricingCurrencyContractedUnitPrice", "decimal", unit="credits per credit"),
    _f("PricingCurrencyEffectiveCost", "decimal", unit="credits"),
    _f("PricingCurrencyListUnitPrice", "decimal", unit="credits per credit"),
    _f("PricingQuantity", "decimal", unit="credits"),
    _f("PricingUnit"),
    _f("ProviderName", null=False),
    _f("PublisherName", null=False),
    _f("RegionId"),
    _f("RegionName"),
    _f("ResourceId"),
    _f("ResourceName"),
    _f("ResourceType"),
    _f("ServiceCategory", null=False),
    _f("ServiceName", null=False),
    _f("ServiceSubcategory"),
    _f("SkuId"),
    _f("SkuMeter"),
    _f("SkuPriceDetails", "json"),
    _f("SkuPriceId"),
    _f("SubAccountId"),
    _f("SubAccountName"),
    _f("SubAccountType"),
    _f("Tags", "json"),
    _f("x_Model", null=False),
    _f("x_IsByok", "boolean", null=False),
    _f("x_Streams", "integer", null=False, unit="streams"),
    _f("x_LlmCalls", "integer", null=False, unit="calls"),
    _f("x_InputTokens", "integer", null=False, unit="tokens"),
    _f("x_OutputTokens", "integer", null=False, unit="tokens"),
    _f("x_LlmCost", "decimal", unit="credits"),
)


@dataclass(frozen=True)
class FocusAccount:
    """Who pays (SEMANTICS.md "account"): the team for its admins, else the solo user."""

    id: str
    name: str
    type: str  # "Team" | "User"
    credit_usd: Decimal


@dataclass
class _Group:
    streams: int = 0
    neo_nano: int = 0
    byok_base_nano: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _credits(nano: int) -> Decimal:
    return Decimal(nano).scaleb(-9)


def _day_start(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _month(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    following = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
    return start, following


def _row(account: FocusAccount, day: datetime, key: tuple[str, str, bool], g: _Group) -> Record:
    email, model, byok = key
    credits = _credits(g.neo_nano)
    usd = credits * account.credit_usd
    period_start, period_end = _month(day.date())
    sku, meter = ("neo-byok-fee", "BYOK platform fee") if byok else ("neo-llm-usage", "LLM usage")
    description = f"{model}: {'platform fee on BYOK usage' if byok else 'LLM usage'}"
    return (
        None, usd, account.id, account.name, account.type, "USD", period_end, period_start,
        None, None, "Usage", None, description, "Usage-Based", day + timedelta(days=1), day,
        None, None, None, None, None, None, None,
        Decimal(g.input_tokens + g.output_tokens), "Tokens", usd, account.credit_usd, usd,
        None, PLATFORM, usd, account.credit_usd, "Standard", PRICING_CURRENCY, Decimal(1),
        credits, Decimal(1), credits, "Credits", PLATFORM, PLATFORM, None, None,
        None, None, None, "AI and Machine Learning", f"{PLATFORM} Agents", "Generative AI",
        sku, meter, None, f"{sku}-{account.credit_usd}-usd", email, email, "User",
        {"neo/model": model, "neo/byok": "true" if byok else "false"},
        model, byok, g.streams, g.llm_calls, g.input_tokens, g.output_tokens,
        _credits(g.byok_base_nano) if byok else None,
    )  # fmt: skip


def focus_records(
    store: Store, scope: Scope, f: UsageFilters, account: FocusAccount, *, chunk: int = 1000
) -> Iterator[list[Record]]:
    """FOCUS rows, a UTC day's at a time (sorted by user, model, BYOK), days ascending."""
    day: datetime | None = None
    groups: dict[tuple[str, str, bool], _Group] = {}

    def emitted() -> list[Record]:
        assert day is not None
        return [_row(account, day, key, groups[key]) for key in sorted(groups)]

    for streams in stream_chunks(store, scope, f, chunk=chunk):
        out: list[Record] = []
        for s in streams:
            start = _day_start(s.created_at)
            if start != day:
                if day is not None:
                    out.extend(emitted())
                day, groups = start, {}
            key = (s.email or "", s.model or "unknown", bool(s.is_byok))
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group()
            g.streams += 1
            g.neo_nano += s.neo_credits_nano
            if s.is_byok:
                g.byok_base_nano += s.base_nano
            g.llm_calls += s.llm_calls
            g.input_tokens += s.input_tokens
            g.output_tokens += s.output_tokens
        if out:
            yield out
    if day is not None:
        yield emitted()
