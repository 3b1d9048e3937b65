"""`POST /api/v1/usage/events`: the ingestion API (INTERFACE.md)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from taskmeter import jsonio
from taskmeter.deps import AUTH_RESPONSES, PrincipalDep
from taskmeter.errors import BadRequest, ErrorResponse, PayloadTooLarge, Unavailable
from taskmeter.identity.principal import Principal
from taskmeter.ingest.otlp import decode_request, encode_response, spans_to_events
from taskmeter.ingest.service import Ingestor, IngestResult

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "read_capped_body", "router"]

router = APIRouter(tags=["Usage"])

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 5 * 1024 * 1024


class RejectedEvent(BaseModel):
    index: int
    id: str | None
    code: str
    message: str


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body may be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _batch_document(body: bytes) -> Any:
    """The parsed body: orjson (a quarter of the standard library's time on a batch of 1000),
    and the standard library for what orjson refuses but it takes (NaN, Infinity, lone
    surrogates), so such a value is one event's rejection, not the whole batch's 400. orjson
    reads an integer beyond 64 bits as a float; a count field rejects either."""
    try:
        return jsonio.loads(body)
    except ValueError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None


# Events are validated one by one (a bad event is rejected in the answer while the rest of its
# batch lands), so the body schema constrains only the batch; each event's fields are below.
BATCH_SCHEMA = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "events": {
            "type": "array",
            "maxItems": MAX_BATCH_EVENTS,
            "items": {
                "description": "An event. Any JSON value is taken: one that is not a valid "
                "event is rejected on its own, with a code, while the rest of the batch lands. "
                "An event has id (1-128 chars, the idempotency key), type "
                "(stream.started | llm.call | tool.call | agent.triggered | step.completed | "
                "stream.finished), time (RFC 3339 or Unix ms), stream_id (UUID), task_id "
                "(1-256 chars), and the fields of its type (see INTERFACE.md).",
            },
        }
    },
}


@router.post(
    "/api/v1/usage/events",
    operation_id="post-v1-usage-events",
    summary="Record usage events",
    description="A batch of at most 1000 events and 5 MiB. Each event is accepted, a duplicate "
    "(its id was seen before for its stream), or rejected with a code; the rest of the batch "
    "lands either way. Accepted events are durable when the answer is sent.",
    response_model=IngestResponse,
    responses={
        **AUTH_RESPONSES,
        207: {"model": IngestResponse, "description": "Some events were rejected"},
        400: {"model": ErrorResponse, "description": "The body is not a batch"},
        413: {"model": ErrorResponse, "description": "Too many events or bytes"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_SCHEMA}},
        }
    },
)
async def post_events(request: Request, principal: PrincipalDep) -> JSONResponse:
    body = await read_capped_body(request, MAX_BATCH_BYTES)
    document = _batch_document(body)
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise BadRequest('the body must be an object {"events": [ … ]}')
    events = document["events"]
    if len(events) > MAX_BATCH_EVENTS:
        raise PayloadTooLarge(f"a batch may hold at most {MAX_BATCH_EVENTS} events")
    ingestor: Ingestor = request.app.state.ingestor
    # JSON cannot hold a raw NUL in a string, only its escape: without one, no field of any
    # event needs searching for it.
    nul_free = b"\\u0000" not in body
    ingest_log = request.app.state.ingest_log
    with request.app.state.admission.admit():
        if ingest_log is not None:
            result = await _logged(ingest_log, principal, events, nul_free=nul_free)
        else:
            result = await run_in_threadpool(ingestor.ingest, principal, events, nul_free=nul_free)
    _count(request, result)
    return JSONResponse(result.as_json(), status_code=207 if result.rejected else 200)


async def _logged(ingest_log: Any, principal: Principal, events: Any, *, nul_free: bool) -> Any:
    """Through the durable log: validated here, applied by the projectors (taskmeter.log)."""
    from taskmeter.log.intake import log_batch

    try:
        return await log_batch(ingest_log, principal, events, nul_free=nul_free)
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise Unavailable(f"the ingest log is unavailable ({type(exc).__name__})") from None
    except Exception as exc:
        if type(exc).__module__.startswith("nats"):
            raise Unavailable("the ingest log is unavailable") from None
        raise


@router.post(
    "/v1/traces",
    tags=["OpenTelemetry"],
    operation_id="post-v1-traces",
    summary="OTLP/HTTP trace intake",
    description="OpenTelemetry GenAI spans (protobuf or JSON, gzip or not) become usage events. "
    "The answer is an ExportTraceServiceResponse in the request's encoding, with "
    "partial_success when some spans could not be recorded.",
    responses={
        **AUTH_RESPONSES,
        200: {
            "description": "ExportTraceServiceResponse",
            "content": {
                "application/x-protobuf": {},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        400: {"model": ErrorResponse, "description": "Not an OTLP export"},
        413: {"model": ErrorResponse, "description": "Body too large"},
        429: {"model": ErrorResponse, "description": "Too many writes in flight"},
        503: {"model": ErrorResponse, "description": "Store unavailable"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_traces(request: Request, principal: PrincipalDep) -> Response:
    body = await read_capped_body(request, MAX_BATCH_BYTES)
    ingestor: Ingestor = request.app.state.ingestor
    ingest_log = request.app.state.ingest_log
    if ingest_log is not None:
        with request.app.state.admission.admit():
            export, encoding = await run_in_threadpool(
                decode_request,
                body,
                request.headers.get("content-type", ""),
                request.headers.get("content-encoding"),
            )
            mapped = await run_in_threadpool(spans_to_events, export)
            result = await _logged(ingest_log, principal, mapped.events, nul_free=False)
        _count(request, result)
        content, media = _export_answer(mapped, result, encoding)
        return Response(content, media_type=media)
    with request.app.state.admission.admit():
        content, media = await run_in_threadpool(
            _ingest_export,
            request,
            ingestor,
            principal,
            body,
            request.headers.get("content-type", ""),
            request.headers.get("content-encoding"),
        )
    return Response(content, media_type=media)


def _count(request: Request, result: IngestResult) -> None:
    request.app.state.metrics.count_ingest(
        result.accepted, result.duplicates, (r.code for r in result.rejected)
    )


def _ingest_export(
    request: Request,
    ingestor: Ingestor,
    principal: Principal,
    body: bytes,
    content_type: str,
    content_encoding: str | None,
) -> tuple[bytes, str]:
    """Decode an OTLP export, map its spans to events, ingest them: the answer's body and
    media type. Run off the event loop: decoding and mapping an export of 500 spans take
    milliseconds of CPU, during which the loop would answer no one."""
    export, encoding = decode_request(body, content_type, content_encoding)
    mapped = spans_to_events(export)
    result = ingestor.ingest(principal, mapped.events)
    _count(request, result)
    return _export_answer(mapped, result, encoding)


def _export_answer(mapped: Any, result: Any, encoding: Any) -> tuple[bytes, str]:
    """The ExportTraceServiceResponse for an ingested (or logged) export."""
    rejected_spans = {mapped.span_of_event[r.index] for r in result.rejected}
    message = "; ".join(
        f"span {mapped.span_of_event[r.index]}: {r.code}: {r.message}" for r in result.rejected[:5]
    )
    return encode_response(len(rejected_spans), message, encoding)
