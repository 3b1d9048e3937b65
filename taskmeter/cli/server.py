"""`taskmeter serve` and `taskmeter db upgrade`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from taskmeter.cli.common import open_store, settings_from

db = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)


@db.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply every pending migration to the configured store."""
    with open_store(ctx) as store:
        url = store.read_engine.url.render_as_string(hide_password=True)
    print(f"store {url} is at the latest schema")


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Store URL (else TASKMETER_DATABASE_URL).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the API and dashboard (migrates the store on start)."""
    import uvicorn

    from taskmeter.app import create_app

    if database_url:
        ctx.obj = {**(ctx.obj or {}), "database_url": database_url}
    settings = settings_from(ctx)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
    )
