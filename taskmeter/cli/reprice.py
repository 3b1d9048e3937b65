"""`taskmeter reprice [filters] [--dry-run]` and `taskmeter reprice log`: re-pricing stored
calls under the current price rules, and the log of runs (taskmeter/finance/reprice.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import typer

from taskmeter.cli.common import JsonOption, fail, open_store, print_json, print_table
from taskmeter.cli.common import settings_from as _settings
from taskmeter.finance.reprice import RepriceError, RepriceFilter, list_runs
from taskmeter.finance.reprice import reprice as run_reprice
from taskmeter.finance.reprice_plan import Plan
from taskmeter.pricing.credits import NANO
from taskmeter.pricing.prices import PriceBook, PricesFileError
from taskmeter.timeutil import parse_instant

reprice = typer.Typer(
    help="Re-price recorded calls under the current price rules (see `reprice log`).",
    invoke_without_command=True,
)


def credits_text(nano: int, signed: bool = False) -> str:
    """Nano-credits as an exact decimal (9 places)."""
    value = f"{Decimal(nano) / NANO:.9f}"
    return f"+{value}" if signed and nano >= 0 else value


def _instant(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date or RFC 3339 time")


def print_plan(planned: Plan, resumed: bool) -> None:
    counts = planned.counts()
    head = "resuming the unfinished run of this rule; " if resumed else ""
    print(
        f"{head}{counts['calls_seen']} calls in range; {counts['calls_changed']} change "
        f"({counts['calls_cost_changed']} in cost, the others in price source only), in "
        f"{counts['streams_changed']} streams and {counts['tasks_changed']} tasks; "
        f"{counts['newly_priced']} unpriced calls gain a price, "
        f"{counts['newly_unpriced']} lose theirs"
    )
    delta = counts["base_after_nano"] - counts["base_before_nano"]
    charged = counts["charged_after_nano"] - counts["charged_before_nano"]
    print(
        f"calls in range: {credits_text(counts['base_before_nano'])} → "
        f"{credits_text(counts['base_after_nano'])} credits ({credits_text(delta, True)}); "
        f"charged to accounts {credits_text(charged, True)} (BYOK streams: × their rate)"
    )
    for title, name in (("model", "by_model"), ("user", "by_user"), ("month", "by_month")):
        rows = counts[name]
        if rows:
            print_table(
                f"credit difference by {title}",
                [title, "calls", "Δ credits"],
                [[r["key"], r["calls"], credits_text(r["delta_nano"], True)] for r in rows],
            )


@reprice.callback()
def reprice_calls(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Only calls of this model.")] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only calls naming this provider.")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Calls at or after (RFC 3339 or date).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Calls before (RFC 3339 or date).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's streams.")] = None,
    team: Annotated[str | None, typer.Option("--team", help="Only this team's streams.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    include_stated: Annotated[
        bool,
        typer.Option("--include-stated", help="Re-price calls that stated cost_usd too."),
    ] = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who to log as (else the OS user).")
    ] = None,
    group_streams: Annotated[
        int, typer.Option("--group-streams", min=1, help="Streams per transaction.")
    ] = 200,
    as_json: bool = JsonOption,
) -> None:
    """Recompute the calls in range from the current price rules: the plan is shown first;
    without --dry-run it is applied in bounded transactions, resumably, and logged."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ctx)
    rules = RepriceFilter(
        model=model,
        provider=provider,
        start=_instant(start, "--from"),
        end=_instant(end, "--to"),
        user_email=user,
        team_name=team,
        include_stated=include_stated,
    )
    try:
        book = PriceBook(settings.prices_file)
    except PricesFileError as exc:
        fail(f"prices file: {exc}")
    with open_store(ctx) as store:
        try:
            outcome = run_reprice(
                store,
                book,
                rules,
                credit_usd=settings.credit_usd,
                default_rate=settings.neo_cost_rate,
                dry_run=dry_run,
                actor=actor,
                group_streams=group_streams,
                on_plan=None if as_json else print_plan,
            )
        except RepriceError as exc:
            fail(str(exc))
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "run_id": outcome.run_id,
                "resumed": outcome.resumed,
                "transactions": outcome.transactions,
                **outcome.plan.counts(),
            }
        )
    elif dry_run:
        print("dry run: nothing changed")
    else:
        print(
            f"applied: run {outcome.run_id}, {outcome.transactions} transactions "
            f"(see `taskmeter reprice log`)"
        )


def _rule_text(rule: dict[str, Any]) -> str:
    shown = {k: v for k, v in rule.items() if v not in (None, False) and k != "prices_file"}
    if shown.get("prices_file_sha256"):
        shown["prices_file_sha256"] = str(shown["prices_file_sha256"])[:12]
    return " ".join(f"{k}={v}" for k, v in shown.items())


@reprice.command("log")
def reprice_log(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List re-pricing runs: who, when, the rule, before/after totals, state."""
    with open_store(ctx) as store, store.read() as db:
        runs = list_runs(db)
    if as_json:
        print_json(runs)
        return
    if not runs:
        print("no re-pricing runs")
        return
    for r in runs:
        error = f" ({r['error']})" if r["error"] else ""
        finished = f", finished {_when(r['finished_at'])}" if r["finished_at"] else ""
        print(f"run {r['id']}: {r['state']}{error}, by {r['actor']}, "
              f"started {_when(r['started_at'])}{finished}")  # fmt: skip
        print(f"  rule: {_rule_text(r['rule'])}")
        charged = r["charged_after_nano"] - r["charged_before_nano"]
        print(
            f"  calls {r['calls_done']}/{r['calls_changed']} re-priced of {r['calls_seen']} in "
            f"range, streams {r['streams_done']}/{r['streams_changed']}, tasks "
            f"{r['tasks_changed']}, {r['transactions']} transactions; credits of the calls "
            f"{credits_text(r['base_before_nano'])} → {credits_text(r['base_after_nano'])}, "
            f"charged {credits_text(charged, True)}"
        )


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
