"""One error model: every 4xx and 5xx body is the spec's ErrorResponse.

    ApiError                      raised by endpoints and dependencies
      ├── BadRequest              400 invalid_request
      ├── Unauthorized            401 unauthorized
      ├── PaymentRequired         402 a domain code (insufficient_neo_credits, …_cap_reached)
      ├── Forbidden               403 forbidden
      ├── NotFound                404 not_exists
      ├── PayloadTooLarge         413 payload_too_large
      ├── RateLimited             429 rate_limited (with Retry-After)
      └── Unavailable             503 unavailable (with Retry-After)

Framework errors (unknown route, wrong method, request validation) and unexpected exceptions
are turned into the same shape here; a 5xx carries an `error_id` that is logged with the
stack trace, and its body never carries either.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = [
    "ERROR_RESPONSE_SCHEMA",
    "ApiError",
    "BadRequest",
    "ErrorResponse",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PaymentRequired",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "error_body",
    "install_error_handlers",
    "store_fault",
]

log = logging.getLogger("taskmeter.errors")

# status -> (error, code, kind)
STATUS_SHAPES: dict[int, tuple[str, str, str]] = {
    400: ("Bad request", "invalid_request", "invalid request"),
    401: ("Unauthorized", "unauthorized", "unauthorized request"),
    402: ("Payment required", "payment_required", "payment required"),
    403: ("Forbidden", "forbidden", "forbidden request"),
    404: ("Not found", "not_exists", "not found"),
    405: ("Method not allowed", "invalid_request", "invalid request"),
    413: ("Payload too large", "payload_too_large", "payload too large"),
    415: ("Unsupported media type", "invalid_request", "invalid request"),
    429: ("Too many requests", "rate_limited", "rate limited"),
    431: ("Request header fields too large", "invalid_request", "invalid request"),
    500: ("Internal server error", "internal", "internal error"),
    501: ("Not implemented", "not_implemented", "not implemented"),
    503: ("Service unavailable", "unavailable", "service unavailable"),
}


# Published as the seeds define it (every field a plain string, only `error` required).
ERROR_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "code": {
            "type": "string",
            "description": "Stable machine-readable error code: "
            "invalid_request, unauthorized, forbidden, not_exists, payload_too_large, "
            "rate_limited, unavailable, internal, or a domain code.",
        },
        "error": {"type": "string", "example": "Bad request"},
        "error_id": {
            "type": "string",
            "description": "Correlation id for a specific error instance (every 5xx).",
        },
        "kind": {
            "type": "string",
            "example": "forbidden request",
            "description": "Coarse error category.",
        },
        "message": {
            "type": "string",
            "description": "Human-readable detail (the kind prefixed to the error).",
        },
    },
}


class ErrorResponse(BaseModel):
    """The error body of every endpoint (seed schema `ErrorResponse`)."""

    error: str
    code: str | None = None
    kind: str | None = None
    message: str | None = None
    error_id: str | None = None


def error_body(status: int, detail: str, *, code: str | None = None) -> dict[str, Any]:
    error, default_code, kind = STATUS_SHAPES.get(status, STATUS_SHAPES[500])
    body: dict[str, Any] = {
        "error": error,
        "code": code or default_code,
        "kind": kind,
        "message": f"{kind}: {detail}",
    }
    if status >= 500:
        body["error_id"] = uuid.uuid4().hex
    return body


class ApiError(Exception):
    status = 500

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.retry_after = retry_after
        # Fields added to the ErrorResponse (e.g. which cap refused, with its figures).
        self.extra = extra


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class PaymentRequired(ApiError):
    status = 402


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class PayloadTooLarge(ApiError):
    status = 413


class RateLimited(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


def _response(
    status: int, detail: str, *, code: str | None = None, retry_after: int | None = None
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(status, detail, code=code), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


UNAVAILABLE = "the store is unavailable; retry shortly"

# SQLite reports both "the file is busy or unwritable" and "your SQL is wrong" as
# OperationalError; only the former is the store being unavailable. (A locked and a read-only
# database are told apart in `store_fault`.)
_SQLITE_UNAVAILABLE = ("unable to open", "disk i/o", "database or disk is full")


def store_fault(exc: BaseException) -> str | None:
    """What a client may be told about a store that cannot serve, or None if `exc` is a bug.

    The words are ours: the driver's message (paths, SQL) never reaches a client.
    """
    if not isinstance(exc, OperationalError):
        return None
    if exc.connection_invalidated:
        return UNAVAILABLE
    message = str(exc.orig).lower()
    if type(exc.orig).__module__.startswith("sqlite3"):
        if "locked" in message:
            return "the database is locked by another writer; retry shortly"
        if "readonly" in message:
            return "the database is read-only; an operator must make it writable"
        if any(marker in message for marker in _SQLITE_UNAVAILABLE):
            return UNAVAILABLE
        return None
    return UNAVAILABLE  # psycopg raises OperationalError for connection-level failures only


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path. Starlette's 405 names only the
    first route whose path matched (GET /api/v1/usage/caps, not PUT beside it)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.detail)
        if exc.extra:
            body = {**error_body(exc.status, exc.detail, code=exc.code), **exc.extra}
            return JSONResponse(body, status_code=exc.status)
        return _response(exc.status, exc.detail, code=exc.code, retry_after=exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail = f"no such route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        else:
            detail = str(exc.detail)
        response = _response(exc.status_code, detail)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value  # e.g. Allow on a 405
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response

    # Registered for OperationalError as well as Exception: Starlette re-raises whatever reaches
    # the catch-all handler after answering, and uvicorn then drops the keep-alive connection,
    # so a client's next request on it would fail. A store fault is answered and done with.
    @app.exception_handler(OperationalError)
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        fault = store_fault(exc)
        if fault is not None:
            # Transient: clients (and OTLP exporters) retry a 503 that says when.
            log.error(
                "store unavailable during %s %s: %s",
                request.method,
                request.url.path,
                getattr(exc, "orig", exc),
            )
            return _response(503, fault, retry_after=2)
        body = error_body(500, "an unexpected error occurred; quote error_id when reporting it")
        log.error(
            "unhandled error %s on %s %s",
            body["error_id"],
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return JSONResponse(body, status_code=500)
