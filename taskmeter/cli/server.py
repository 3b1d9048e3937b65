"""`taskmeter serve` and `taskmeter db upgrade`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from taskmeter.cli.common import open_store, settings_from
from taskmeter.workers import LOG_FORMAT

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
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Processes serving requests (else TASKMETER_WORKERS)."),
    ] = None,
) -> None:
    """Serve the API and dashboard (migrates the store on start)."""
    import uvicorn

    if database_url:
        ctx.obj = {**(ctx.obj or {}), "database_url": database_url}
    settings = settings_from(ctx)
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    processes = workers or settings.workers
    if processes == 1:
        from taskmeter.app import create_app

        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            proxy_headers=False,
        )
        return
    # Each worker is a fresh process that reads its settings from the environment, like a
    # replica, and listens on its own socket (taskmeter/workers.py says why). The store is
    # migrated once here, so the workers do not race to do it; then this process becomes the
    # supervisor, which needs none of the CLI's imports (measured idle with 2 workers: the
    # supervisor 14 MiB resident, its multiprocessing resource tracker 13, each worker 106
    # while workers migrated too).
    with open_store(ctx):
        pass
    for name, value in (ctx.obj or {}).items():
        if value is not None:
            os.environ[f"TASKMETER_{name.upper()}"] = str(value)
    # Migrated just above: a worker that migrated again would only load alembic (10 MiB a
    # worker) to find nothing to do.
    os.environ["TASKMETER_MIGRATE_ON_START"] = "false"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(  # noqa: S606 - a fixed argv: this interpreter running the supervisor
        sys.executable,
        [
            sys.executable,
            "-m",
            "taskmeter.workers",
            str(processes),
            host,
            str(port),
            log_level,
        ],
    )


def projector(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Apply the ingest log (TASKMETER_INGEST_LOG) to the store until stopped (SIGTERM or ^C).

    `serve` runs one in each process by default (TASKMETER_PROJECTOR); run more here to
    project on other machines: they share the log's durable consumer.
    """
    import asyncio
    import signal

    from taskmeter.cli.common import fail
    from taskmeter.ingest.service import Ingestor
    from taskmeter.pricing.prices import PriceBook

    settings = settings_from(ctx)
    if not settings.ingest_log:
        fail("set TASKMETER_INGEST_LOG=nats://… to name the ingest log")
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    from taskmeter.heap import settle_heap
    from taskmeter.log.projector import Projector
    from taskmeter.log.publisher import IngestLog

    async def run(store: object) -> None:
        assert settings.ingest_log is not None
        ingest_log = IngestLog(
            settings.ingest_log,
            stream=settings.ingest_log_stream,
            replicas=settings.ingest_log_replicas,
        )
        await ingest_log.connect()
        ingestor = Ingestor(
            store,  # type: ignore[arg-type]
            PriceBook(settings.prices_file),
            credit_usd=settings.credit_usd,
            default_rate=settings.neo_cost_rate,
            credits_low_percent=settings.credits_low_percent,
        )
        worker = Projector(ingest_log, ingestor)
        # The collector's settings `serve` runs with (taskmeter/heap.py): a merged
        # transaction allocates tens of thousands of objects a batch.
        settle_heap()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        print("projecting the ingest log", file=sys.stderr)
        try:
            await worker.run()
        finally:
            await ingest_log.close()

    with open_store(ctx) as store:
        asyncio.run(run(store))
