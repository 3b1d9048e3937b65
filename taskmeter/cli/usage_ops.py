"""`taskmeter sweep`, `taskmeter prices check|show`: operating the usage pipeline."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import func, select

from taskmeter.cli.common import (
    JsonOption,
    fail,
    open_store,
    print_json,
    print_table,
    settings_from,
)
from taskmeter.ingest.sweeper import sweep as run_sweep
from taskmeter.pricing.explain import explain_price
from taskmeter.pricing.prices import PriceBook, PricesFileError
from taskmeter.store.tables import UsageEvent
from taskmeter.timeutil import parse_instant, utc_now

prices = typer.Typer(help="Check model prices.", no_args_is_help=True)


def sweep(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Close streams idle longer than TASKMETER_STREAM_TIMEOUT_S as aborted."""
    settings = settings_from(ctx)
    with open_store(ctx) as store:
        report = run_sweep(store, settings.stream_timeout_s)
    if as_json:
        print_json({"closed": report.closed, "ownerless": report.ownerless})
    else:
        print(
            f"closed {report.closed} idle streams as aborted; "
            f"{report.ownerless} idle streams never started (kept, not shown)"
        )


@prices.command("check")
def prices_check(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List the models of recorded calls that had no price (they cost 0)."""
    settings = settings_from(ctx)
    try:
        book = PriceBook(settings.prices_file)
    except PricesFileError as exc:
        fail(f"prices file: {exc}")
    with open_store(ctx) as store, store.read() as db:
        rows = db.execute(
            select(UsageEvent.model, func.count(), func.min(UsageEvent.time))
            .where(UsageEvent.type == "llm.call", UsageEvent.cost_nano.is_(None))
            .group_by(UsageEvent.model)
            .order_by(func.count().desc(), UsageEvent.model)
        ).all()
    out = []
    for model, calls, first in rows:
        priced_now = model is not None and book.has_price(model)
        out.append(
            {"model": model, "unpriced_calls": calls, "first_seen": first, "priced_now": priced_now}
        )
    if as_json:
        print_json(out)
    elif not out:
        print("every recorded call was priced")
    else:
        print_table(
            "unpriced models (their calls cost 0)",
            ["model", "unpriced calls", "first seen", "has a price now"],
            [
                [r["model"] or "(none)", r["unpriced_calls"], r["first_seen"], r["priced_now"]]
                for r in out
            ],
        )


@prices.command("show")
def prices_show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model, as calls name it.")],
    provider: Annotated[
        str | None, typer.Option("--provider", help="The provider calls name.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="A call's time (RFC 3339 or date; else now).")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Which price applies to MODEL's calls at a time, and why."""
    settings = settings_from(ctx)
    try:
        when = parse_instant(at) if at else utc_now()
    except ValueError:
        fail(f"--at {at!r} is not a date or RFC 3339 time")
    try:
        book = PriceBook(settings.prices_file)
    except PricesFileError as exc:
        fail(f"prices file: {exc}")
    out = explain_price(book, model, provider, when)
    if as_json:
        print_json(out)
        return
    print(out["why"])
    if out.get("why_not_file"):
        print(f"({out['why_not_file']})")
    applies = out["applies"]
    if applies is not None:
        rates = ", ".join(f"{k} {v}" for k, v in applies["rates"].items())
        print(f"rates (USD per million tokens): {rates}")
        print(f"recorded on calls as price source {applies['id']} ({applies['kind']})")
    if out["schedule"]:
        print_table(
            f"prices file entries for {model}",
            ["effective from", "input", "output", "cache read", "cache write"],
            [[p["effective_from"] or "(always)", *p["rates"].values()] for p in out["schedule"]],
        )
