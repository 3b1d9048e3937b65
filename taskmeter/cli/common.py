"""What every command shares: the store it opens, one-line errors, JSON or table output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from taskmeter.config import Settings
from taskmeter.identity.service import IdentityError
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade
from taskmeter.timeutil import iso_z

__all__ = [
    "JsonOption",
    "fail",
    "open_store",
    "print_json",
    "print_table",
    "settings_from",
    "write",
]

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")

console = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error on stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def settings_from(ctx: typer.Context) -> Settings:
    overrides = {k: v for k, v in (ctx.obj or {}).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"configuration: {first.get('loc', ('?',))[0]}: {first.get('msg')}")


@contextmanager
def open_store(ctx: typer.Context) -> Iterator[Store]:
    """The configured store, migrated to head (commands work on a fresh database)."""
    settings = settings_from(ctx)
    store = Store.from_settings(settings)
    try:
        upgrade(store.write_engine)
        yield store
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        fail(f"cannot use the store at {settings.database_url}: {reason}")
    finally:
        store.dispose()


@contextmanager
def write(ctx: typer.Context) -> Iterator[Session]:
    """One transaction on the configured store; bad input becomes a one-line error."""
    with open_store(ctx) as store:
        try:
            with store.write() as db:
                yield db
        except IdentityError as exc:
            fail(str(exc))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    return value


def print_json(value: Any) -> None:
    print(json.dumps(value, default=_jsonable, indent=2))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(_jsonable(v)) for v in row))
    console.print(table)
