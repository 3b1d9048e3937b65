"""`taskmeter sweep` and `taskmeter prices check`: operating the usage pipeline."""

from __future__ import annotations

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
from taskmeter.pricing.prices import PriceBook, PricesFileError
from taskmeter.store.tables import UsageEvent

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
