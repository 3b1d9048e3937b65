"""The ASGI application: `create_app(settings)` wires routers, errors, the store and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from taskmeter import __version__
from taskmeter.config import Settings
from taskmeter.dashboard.routes import install_dashboard
from taskmeter.deps import StoreDep
from taskmeter.errors import (
    ERROR_RESPONSE_SCHEMA,
    ErrorResponse,
    error_body,
    install_error_handlers,
)
from taskmeter.export import OPERATIONS as EXPORT_OPERATIONS
from taskmeter.export import router as export_router
from taskmeter.governance.endpoints import router as governance_router
from taskmeter.guards import HeaderSizeLimit
from taskmeter.heap import settle_heap
from taskmeter.identity.endpoints import router as identity_router
from taskmeter.identity.jwt import JwtVerifier
from taskmeter.identity.limits import FailedAuthLimiter
from taskmeter.ingest.admission import WriteAdmission
from taskmeter.ingest.endpoints import router as ingest_router
from taskmeter.ingest.service import Ingestor
from taskmeter.ingest.sweeper import run_sweeper
from taskmeter.observability.metrics import ProcessMetrics, RequestTimer, render
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.usage.endpoints import COMPONENTS as USAGE_COMPONENTS
from taskmeter.usage.endpoints import OPERATIONS as USAGE_OPERATIONS
from taskmeter.usage.endpoints import router as usage_router
from taskmeter.webhooks.worker import WebhookWorker

__all__ = ["create_app"]

log = logging.getLogger("taskmeter")

ERROR_SCHEMA_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI 3.1 with our error model: 400 ErrorResponse where FastAPI would say 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title="taskmeter",
        version=__version__,
        description="Usage metering and cost accounting for AI agent platforms "
        "(the Usage API of the Neo agent platform, plus ingestion).",
        routes=app.routes,
    )
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "Bad request",
                        "content": {"application/json": {"schema": ERROR_SCHEMA_REF}},
                    },
                )
    for (path, method), documented in {**USAGE_OPERATIONS, **EXPORT_OPERATIONS}.items():
        schema["paths"][path][method].update(documented)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(USAGE_COMPONENTS)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorResponse"] = ERROR_RESPONSE_SCHEMA
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    settings = settings or Settings()
    store = store or Store.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            # Imported here: alembic is 10 MiB of a process that does not migrate.
            from taskmeter.store.migrate import upgrade

            await run_in_threadpool(upgrade, store.write_engine)
        settle_heap()
        tasks = [
            asyncio.create_task(
                run_sweeper(store, settings.stream_timeout_s, settings.sweep_interval_s)
            )
        ]
        if settings.webhooks:
            tasks.append(asyncio.create_task(WebhookWorker(store, settings).run()))
        projector = None
        if settings.ingest_log:
            # Imported here: nats is an optional extra (taskmeter[log]).
            from taskmeter.log.projector import Projector
            from taskmeter.log.publisher import IngestLog

            ingest_log = IngestLog(
                settings.ingest_log,
                stream=settings.ingest_log_stream,
                replicas=settings.ingest_log_replicas,
            )
            await ingest_log.connect()
            app.state.ingest_log = ingest_log
            if settings.projector:
                projector = Projector(
                    ingest_log, app.state.ingestor, run_blocking=run_in_threadpool
                )
                app.state.projector = projector
                tasks.append(asyncio.create_task(projector.run()))
        try:
            yield
        finally:
            if projector is not None:
                projector.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if app.state.ingest_log is not None:
                await app.state.ingest_log.close()
                app.state.ingest_log = None

    app = FastAPI(
        title="taskmeter",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        # A 307 to the slashless path would surprise API clients; no route means 404.
        redirect_slashes=False,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.verifier = JwtVerifier(settings)
    app.state.admission = WriteAdmission(settings.max_inflight_writes)
    app.state.ingest_log = None  # set in the lifespan when TASKMETER_INGEST_LOG is
    app.state.projector = None
    app.state.principal_cache = {}
    app.state.auth_limiter = FailedAuthLimiter(
        settings.auth_failures_per_minute, settings.auth_failures_per_key_per_minute
    )
    app.state.ingestor = Ingestor(
        store,
        PriceBook(settings.prices_file),
        credit_usd=settings.credit_usd,
        default_rate=settings.neo_cost_rate,
        credits_low_percent=settings.credits_low_percent,
    )
    app.state.metrics = ProcessMetrics()
    install_error_handlers(app)
    app.add_middleware(HeaderSizeLimit)
    # Outermost: the time includes the other middleware and error handling.
    app.add_middleware(RequestTimer, metrics=app.state.metrics)

    @app.get("/healthz", tags=["System"], operation_id="healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["System"],
        operation_id="readyz",
        summary="The store is reachable",
        responses={503: {"model": ErrorResponse, "description": "Store unreachable"}},
    )
    async def readyz(store: StoreDep) -> Any:
        try:
            await run_in_threadpool(store.ping)
            store_up = True
        except Exception as exc:
            log.warning("readiness check: the store is unreachable: %s", exc)
            store_up = False
        ingest_log = app.state.ingest_log
        if ingest_log is None:
            if not store_up:
                return _unready("the store is unreachable")
            return _with_replica({"status": "ready"})
        # With the log, ingestion needs only the log: a store outage is reported, not fatal.
        try:
            lag = await ingest_log.lag()
        except Exception as exc:
            log.warning("readiness check: the ingest log is unreachable: %s", exc)
            return _unready("the ingest log is unreachable")
        body = {
            "status": "ready",
            "store": "ok" if store_up else "unavailable",
            "log": {"lag_messages": lag.messages, "lag_seconds": round(lag.seconds, 3)},
        }
        if settings.max_lag_s is not None and lag.seconds > settings.max_lag_s:
            return _unready(
                f"projection is {lag.seconds:.1f} s behind (TASKMETER_MAX_LAG_S "
                f"{settings.max_lag_s:g})"
            )
        return _with_replica(body)

    def _with_replica(body: dict[str, Any]) -> dict[str, Any]:
        if store.replica is not None:  # down or lagging: reported, still ready (primary reads)
            body["read_replica"] = store.replica.status()
        return body

    def _unready(detail: str) -> JSONResponse:
        return JSONResponse(error_body(503, detail), status_code=503, headers={"Retry-After": "2"})

    @app.get(
        "/metrics",
        tags=["System"],
        operation_id="metrics",
        summary="Prometheus metrics (text format)",
        responses={200: {"content": {"text/plain": {}}, "description": "Metrics"}},
    )
    async def metrics(store: StoreDep) -> PlainTextResponse:
        unpriced = dict(app.state.ingestor.prices.unpriced)
        text = await run_in_threadpool(
            render, store, app.state.metrics, unpriced, settings.credit_usd
        )
        extra = await _log_metrics()
        if store.replica is not None:
            extra += store.replica.metrics()
        if extra:
            text += "\n".join(extra) + "\n"
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _log_metrics() -> list[str]:
        ingest_log = app.state.ingest_log
        if ingest_log is None:
            return []
        try:
            lag = await ingest_log.lag()
        except Exception:
            return []
        lines = [
            "# HELP taskmeter_ingest_log_lag_messages Logged batches not yet applied to the store.",
            "# TYPE taskmeter_ingest_log_lag_messages gauge",
            f"taskmeter_ingest_log_lag_messages {lag.messages}",
            "# HELP taskmeter_ingest_log_lag_seconds Age of the oldest batch not yet applied.",
            "# TYPE taskmeter_ingest_log_lag_seconds gauge",
            f"taskmeter_ingest_log_lag_seconds {lag.seconds:.3f}",
        ]
        projector = app.state.projector
        if projector is not None:
            stats = projector.stats
            lines += [
                "# HELP taskmeter_projector_messages_total Log messages this process applied.",
                "# TYPE taskmeter_projector_messages_total counter",
                f"taskmeter_projector_messages_total {stats.messages}",
                "# HELP taskmeter_projector_rejected_total Events rejected when applied, by code.",
                "# TYPE taskmeter_projector_rejected_total counter",
                *(
                    f'taskmeter_projector_rejected_total{{code="{code}"}} {n}'
                    for code, n in sorted(stats.rejected.items())
                ),
            ]
        return lines

    app.include_router(identity_router)
    app.include_router(ingest_router)
    app.include_router(usage_router)
    app.include_router(export_router)
    app.include_router(governance_router)
    install_dashboard(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
