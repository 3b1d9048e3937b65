"""Provider cost reports, read into one shape: USD per UTC day, model and project.

    FILE ─ _documents (one JSON page, a JSON array of pages, or JSON lines of pages)
         ─ _provider_of (OpenAI `organization.costs` page | Anthropic `cost_report`)
         ─ _openai_rows | _anthropic_rows ─▶ CostReport(provider, days, rows)

The formats, as their publishers document them:

- OpenAI `GET /v1/organization/costs` (API reference, "Costs object"): a page
  ``{"object": "page", "data": [bucket], "has_more", "next_page"}``; a bucket
  ``{"object": "bucket", "start_time", "end_time", "results": [result]}`` with Unix seconds;
  a result ``{"object": "organization.costs.result", "amount": {"value": number,
  "currency": "usd"}, "line_item", "project_id", …}``. `line_item` and `project_id` are null
  unless the report was grouped by them. The openai-openapi schema names the bucket's list
  `result`; the API and its examples send `results`: both are read.
- Anthropic Admin API `GET /v1/organizations/cost_report`: ``{"data": [bucket], "has_more",
  "next_page"}``; a bucket ``{"starting_at", "ending_at", "results": [result]}`` in RFC 3339;
  a result ``{"amount": "123.45", "currency": "USD", "model", "workspace_id", "cost_type",
  "token_type", "description", "service_tier", "context_window", …}``, where `amount` is in
  the currency's lowest unit (cents) as a decimal string: "123.45" is $1.23.

Amounts are kept as Decimal from the JSON text on (never a float). OpenAI's line items carry
no model field: a line item "MODEL, KIND" (e.g. "gpt-4o-2024-08-06, input") is read as MODEL;
a line item without a comma is taken whole as the model name (lower-cased); a null line item
(a report not grouped by line item) is the day's total over all models (`model` None).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = ["CostReport", "CostRow", "ReportError", "load_report", "parse_report"]

DAY = timedelta(days=1)


class ReportError(ValueError):
    """The file is not a provider cost report this module reads; the message says why."""


@dataclass(frozen=True)
class CostRow:
    """One provider figure: USD on a UTC day, for a model (None: every model) and project."""

    day: date
    model: str | None
    project: str | None
    usd: Decimal


@dataclass
class CostReport:
    provider: str  # "openai" | "anthropic", as taskmeter's calls name the provider
    # Every day a bucket covers, with or without results (an empty bucket is a day of $0).
    days: set[date] = field(default_factory=set)
    rows: list[CostRow] = field(default_factory=list)

    @property
    def by_model(self) -> bool:
        """Whether the report breaks days down by model (else rows are day totals)."""
        return any(r.model is not None for r in self.rows)


def load_report(path: Path) -> CostReport:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReportError(f"{path}: is a directory, not a report file") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not a text file (a cost report is JSON)") from None
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror or exc}") from None
    try:
        return parse_report(text)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def parse_report(text: str) -> CostReport:
    pages = _documents(text)
    if not pages:
        raise ReportError("no report pages in the file")
    providers = {_provider_of(page, index) for index, page in enumerate(pages)}
    if len(providers) > 1:
        raise ReportError("the file mixes OpenAI and Anthropic pages; reconcile one provider")
    report = CostReport(providers.pop())
    read = _openai_rows if report.provider == "openai" else _anthropic_rows
    for index, page in enumerate(pages):
        for bucket_index, bucket in enumerate(page["data"]):
            where = f"page {index + 1}, bucket {bucket_index + 1}"
            if not isinstance(bucket, dict):
                raise ReportError(f"{where}: a bucket must be an object")
            read(bucket, where, report)
    return report


def _loads(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _documents(text: str) -> list[Any]:
    """The file's pages: one page, an array of pages, or one page a line (JSON lines)."""
    stripped = text.strip()
    if not stripped:
        raise ReportError("the file is empty")
    try:
        document = _loads(stripped)
    except json.JSONDecodeError as whole:
        lines = [line for line in stripped.splitlines() if line.strip()]
        if len(lines) < 2:
            reason = f"not valid JSON (truncated?): {whole.msg} at char {whole.pos}"
            raise ReportError(reason) from None
        pages = []
        for number, line in enumerate(lines, 1):
            try:
                pages.append(_loads(line))
            except json.JSONDecodeError as exc:
                raise ReportError(
                    f"not valid JSON or JSON lines (truncated?): line {number}: {exc.msg}"
                ) from None
        return pages
    return document if isinstance(document, list) else [document]


def _provider_of(page: Any, index: int) -> str:
    where = f"page {index + 1}"
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ReportError(
            f"{where}: not a cost report page (expected an object with a `data` list of "
            "buckets: OpenAI /v1/organization/costs or Anthropic /v1/organizations/cost_report)"
        )
    buckets = [b for b in page["data"] if isinstance(b, dict)]
    if any("start_time" in b for b in buckets) or page.get("object") == "page":
        for bucket in buckets:
            for result in _openai_results(bucket, where):
                kind = result.get("object") if isinstance(result, dict) else None
                if kind != "organization.costs.result":
                    raise ReportError(
                        f"{where}: results of kind {kind!r}, not organization.costs.result "
                        "(a usage report, not a costs report? export /v1/organization/costs)"
                    )
        return "openai"
    if any("starting_at" in b for b in buckets) or not buckets:
        if not buckets and "has_more" not in page:
            raise ReportError(f"{where}: not a cost report page (no buckets, no `has_more`)")
        for bucket in buckets:
            results = bucket.get("results")
            if not isinstance(results, list) or not all(
                isinstance(r, dict) and "amount" in r for r in results
            ):
                raise ReportError(
                    f"{where}: a bucket's `results` must list cost items with an `amount` "
                    "(a usage report, not a cost report? export /v1/organizations/cost_report)"
                )
        return "anthropic"
    raise ReportError(
        f"{where}: buckets have neither `start_time` (OpenAI) nor `starting_at` (Anthropic)"
    )


def _openai_results(bucket: dict[str, Any], where: str) -> list[Any]:
    results = bucket.get("results", bucket.get("result"))
    if not isinstance(results, list):
        raise ReportError(f"{where}: a bucket needs a `results` list")
    return results


def _utc_day(start: datetime, end: datetime | None, where: str) -> date:
    if (start.hour, start.minute, start.second, start.microsecond) != (0, 0, 0, 0):
        raise ReportError(f"{where}: a bucket must start at 00:00 UTC (bucket_width=1d)")
    if end is not None and end - start != DAY:
        raise ReportError(f"{where}: buckets must be one day wide (bucket_width=1d)")
    return start.date()


def _unix(value: Any, name: str, where: str) -> datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReportError(f"{where}: `{name}` must be Unix seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ReportError(f"{where}: `{name}` {value} is out of range") from None


def _rfc3339(value: Any, name: str, where: str) -> datetime:
    if not isinstance(value, str):
        raise ReportError(f"{where}: `{name}` must be an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{where}: `{name}` {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ReportError(f"{where}: `{name}` {value!r} has no UTC offset")
    return moment.astimezone(UTC)


def _decimal(value: Any, what: str, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ReportError(f"{where}: {what} must be a number")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ReportError(f"{where}: {what} {value!r} is not a number") from None
    if not amount.is_finite():
        raise ReportError(f"{where}: {what} {value!r} is not a finite number")
    return amount


def _usd(currency: Any, where: str) -> None:
    if not isinstance(currency, str) or currency.lower() != "usd":
        raise ReportError(f"{where}: currency {currency!r}; only USD reports are reconciled")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def openai_model(line_item: str | None) -> str | None:
    """The model an OpenAI cost line item names ("gpt-4o-2024-08-06, input" → "gpt-4o-…")."""
    if line_item is None:
        return None
    return line_item.split(",", 1)[0].strip().lower() or None


def _openai_rows(bucket: dict[str, Any], where: str, report: CostReport) -> None:
    start = _unix(bucket.get("start_time"), "start_time", where)
    end = bucket.get("end_time")
    day = _utc_day(start, None if end is None else _unix(end, "end_time", where), where)
    report.days.add(day)
    for number, result in enumerate(_openai_results(bucket, where), 1):
        at = f"{where}, result {number}"
        amount = result.get("amount")
        if not isinstance(amount, dict):
            raise ReportError(f"{at}: `amount` must be an object {{value, currency}}")
        _usd(amount.get("currency"), at)
        usd = _decimal(amount.get("value"), "amount.value", at)
        model = openai_model(_text(result.get("line_item")))
        report.rows.append(CostRow(day, model, _text(result.get("project_id")), usd))


def _anthropic_rows(bucket: dict[str, Any], where: str, report: CostReport) -> None:
    start = _rfc3339(bucket.get("starting_at"), "starting_at", where)
    end = bucket.get("ending_at")
    day = _utc_day(start, None if end is None else _rfc3339(end, "ending_at", where), where)
    report.days.add(day)
    for number, result in enumerate(bucket["results"], 1):
        at = f"{where}, result {number}"
        _usd(result.get("currency", "USD"), at)
        cents = _decimal(result["amount"], "amount", at)
        model = _text(result.get("model"))
        cost_type = _text(result.get("cost_type"))
        if model is None and cost_type is not None and cost_type != "tokens":
            # A non-token cost (web search, code execution) names no model: its own row.
            model = f"({cost_type})"
        report.rows.append(
            CostRow(day, model.lower() if model else None, _text(result.get("workspace_id")),
                    cents / 100)
        )  # fmt: skip


def projects(rows: Iterable[CostRow]) -> list[str]:
    return sorted({r.project for r in rows if r.project is not None})
