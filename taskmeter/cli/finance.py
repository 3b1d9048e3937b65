"""`taskmeter reconcile FILE`: a provider's cost report beside taskmeter's figures."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from taskmeter.cli.common import JsonOption, fail, open_store, print_json, settings_from
from taskmeter.finance.reconcile import Line, reconcile, report_range, taskmeter_costs
from taskmeter.finance.reports import ReportError, load_report
from taskmeter.store.tables import TEAMS

__all__ = ["reconcile_command"]

COLUMNS = ("day", "model", "projects", "provider $", "taskmeter $", "byok $", "calls",
           "difference $", "ratio", "check")  # fmt: skip


def _money(value: Decimal) -> str:
    # Rounded first, so a difference below a millionth prints 0.000000, not -0.000000.
    return f"{value.quantize(Decimal('0.000001')) + 0:.6f}"


def _cells(line: Line) -> tuple[str, ...]:
    ratio = line.ratio
    return (
        line.day.isoformat(),
        line.model,
        ",".join(line.projects) or "-",
        _money(line.provider_usd),
        _money(line.taskmeter_usd),
        _money(line.byok_usd),
        str(line.calls),
        _money(line.difference_usd),
        "-" if ratio is None else f"{ratio:.4f}",
        "MISMATCH" if line.flagged else "ok",
    )


def render_table(provider: str, tolerance: Decimal, lines: list[Line]) -> str:
    """The lines as fixed-width text: the same bytes on a terminal, in a pipe, in a file."""
    rows = [COLUMNS, *(_cells(line) for line in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {3, 4, 5, 6, 7, 8}

    def fmt(row: tuple[str, ...]) -> str:
        cells = (
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    out = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    for line, row in zip(lines, rows[1:], strict=True):
        out.append(fmt(row))
        if line.is_total:
            out.append("")
    flagged = sorted({line.day.isoformat() for line in lines if line.is_total and line.flagged})
    summary = f"{provider}: {len({line.day for line in lines})} days, tolerance {tolerance:f}%"
    summary += f"; days beyond it: {', '.join(flagged)}" if flagged else "; every day within it"
    return "\n".join([*out, summary])


def reconcile_command(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="A cost report export: OpenAI /v1/organization/costs or Anthropic "
            "/v1/organizations/cost_report JSON (one page, an array of pages, or JSON lines).",
            show_default=False,
        ),
    ],
    tolerance: Annotated[
        str, typer.Option("--tolerance", help="Percent of the bill a day may differ by.")
    ] = "2",
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            help="Count taskmeter's calls that state this provider or none (default: the "
            "report's provider; 'any': every call).",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            help="Only the report's rows of this OpenAI project or Anthropic workspace id.",
            show_default=False,
        ),
    ] = None,
    team: Annotated[
        str | None,
        typer.Option(
            "--team", help="Only taskmeter's calls paid by this team.", show_default=False
        ),
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Compare a provider's cost report with taskmeter's prices of the same calls, per UTC day
    and model; days differing by more than the tolerance are flagged."""
    try:
        percent = Decimal(tolerance.strip().rstrip("%"))
    except InvalidOperation:
        fail(f"--tolerance {tolerance!r} is not a number of percent")
    if not percent.is_finite() or percent < 0:
        fail(f"--tolerance {tolerance!r} must be a percent of 0 or more")
    try:
        report = load_report(file)
    except ReportError as exc:
        fail(str(exc))
    if project is not None:
        report = replace(report, rows=[r for r in report.rows if r.project == project])
    if not report.days:
        fail(f"{file}: the report has no day buckets")
    settings = settings_from(ctx)
    wanted = report.provider if provider is None else provider.strip().lower()
    start, end = report_range(report)
    with open_store(ctx) as store, store.read() as db:
        scope = None
        if team is not None:
            team_id = db.scalar(select(TEAMS.c.id).where(TEAMS.c.name == team))
            if team_id is None:
                fail(f"no team named {team!r}")
            scope = f"t{team_id}"
        costs = taskmeter_costs(
            db, start, end, provider=None if wanted == "any" else wanted, scope=scope
        )
    lines = reconcile(report, costs, credit_usd=settings.credit_usd, tolerance=percent / 100)
    if as_json:
        print_json(
            {
                "provider": report.provider,
                "tolerance_percent": f"{percent:f}",
                "days_flagged": sorted(
                    {line.day.isoformat() for line in lines if line.is_total and line.flagged}
                ),
                "lines": [line.as_json() for line in lines],
            }
        )
    else:
        print(render_table(report.provider, percent, lines))
