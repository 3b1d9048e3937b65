"""The root Typer app: global options and the command groups."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import typer.core

from taskmeter.cli.credits import credits
from taskmeter.cli.export import export
from taskmeter.cli.finance import reconcile_command
from taskmeter.cli.governance import caps, projects
from taskmeter.cli.identity import keys, teams, users
from taskmeter.cli.reprice import reprice
from taskmeter.cli.server import db, projector, serve
from taskmeter.cli.usage import demo, usage
from taskmeter.cli.usage_ops import prices, sweep
from taskmeter.cli.webhooks import webhooks


def _show_usage_error(self: Any, file: Any = None) -> None:
    hint = f" (see '{self.ctx.command_path} --help')" if self.ctx else ""
    print(f"error: {self.format_message()}{hint}", file=file or sys.stderr)


# Operators script this CLI: a usage error is one line on stderr, like every other error.
# Typer raises the UsageError of the click it ships (vendored in recent releases).
_click = getattr(typer.core, "_click", None) or __import__("click")
_click.exceptions.UsageError.show = _show_usage_error

app = typer.Typer(
    name="taskmeter",
    help="Usage metering and cost accounting for AI agent platforms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="Store URL (else TASKMETER_DATABASE_URL).", show_default=False
        ),
    ] = None,
) -> None:
    ctx.obj = {"database_url": database_url}


app.add_typer(users, name="users")
app.add_typer(teams, name="teams")
app.add_typer(keys, name="keys")
app.add_typer(credits, name="credits")
app.add_typer(projects, name="projects")
app.add_typer(caps, name="caps")
app.add_typer(db, name="db")
app.add_typer(prices, name="prices")
app.add_typer(reprice, name="reprice")
app.add_typer(webhooks, name="webhooks")
app.command("serve")(serve)
app.command("projector")(projector)
app.command("sweep")(sweep)
app.command("demo")(demo)
app.command("reconcile")(reconcile_command)
usage.command("export")(export)
app.add_typer(usage, name="usage")
