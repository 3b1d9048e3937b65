"""`GET /api/v1/usage/export`: the caller's usage as a streamed file (docs/exports.md).

Everything that can refuse the request (credential, scope, parameters, the first chunk's
read) happens before the first byte, so a refusal is an ErrorResponse with its status; a
store failure later can only cut the body short (the client sees an incomplete transfer).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from taskmeter.deps import PrincipalDep, ScopeDep, StoreDep
from taskmeter.errors import BadRequest
from taskmeter.export.columns import LEVELS
from taskmeter.export.encoders import MEDIA_TYPES, Encoder, encoder_for
from taskmeter.export.focus import FOCUS_COLUMNS, FocusAccount, focus_records
from taskmeter.export.rows import Record, call_records, stream_records, task_records
from taskmeter.identity.principal import Principal, Scope
from taskmeter.timeutil import utc_now
from taskmeter.usage.endpoints import admin_only_email
from taskmeter.usage.openapi import PARAMETERS, error_responses, ref
from taskmeter.usage.params import parse_filters

__all__ = ["FORMATS", "OPERATIONS", "PATH", "router"]

log = logging.getLogger("taskmeter.export")

router = APIRouter(tags=["Usage"])
PATH = "/api/v1/usage/export"
FORMATS = ("csv", "jsonl", "parquet", "focus")
_RECORDS = {"streams": stream_records, "tasks": task_records, "calls": call_records}


def _choice(request: Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    values = request.query_params.getlist(name)
    value = values[-1] if values else default
    if value not in allowed:
        raise BadRequest(f"{name}: {value!r} must be one of {', '.join(allowed)}")
    return value


def _account(principal: Principal, scope: Scope, request: Request) -> FocusAccount:
    credit_usd = request.app.state.settings.credit_usd
    if scope.is_team_admin and principal.team is not None:
        return FocusAccount(scope.key, principal.team.name, "Team", credit_usd)
    return FocusAccount(scope.key, principal.email or "", "User", credit_usd)


def _body(encoder: Encoder, chunks: Iterator[list[Record]]) -> Iterator[bytes]:
    try:
        yield encoder.start()
        for records in chunks:
            data = encoder.encode(records)
            if data:
                yield data
        yield encoder.finish()
    except Exception:
        log.exception("an export failed while streaming; its body was cut short")
        raise


@router.get(
    PATH,
    operation_id="get-v1-usage-export",
    summary="Export usage (CSV, JSON Lines, Parquet, FOCUS 1.2)",
    description="The caller's usage with the list endpoints' filters and scope rules, as a "
    "streamed file: one row per stream, task or LLM call (`level`), or with `format=focus` a "
    "FOCUS 1.2 cost and usage CSV of the charges per UTC day, user, model and BYOK (`level` "
    "does not apply). Columns, types and units: docs/exports.md. Credits are exact decimal "
    "strings, times UTC ISO 8601 with Z. Parquet needs pyarrow on the server, else 501.",
)
def export_usage(
    request: Request, principal: PrincipalDep, scope: ScopeDep, store: StoreDep
) -> StreamingResponse:
    fmt = _choice(request, "format", FORMATS, "csv")
    level = _choice(request, "level", tuple(LEVELS), "streams")
    if fmt == "focus":
        level = "streams"
    filters = parse_filters(
        request.query_params, allow_search=level == "tasks", allow_stream=level != "tasks"
    )
    admin_only_email(scope, filters)
    if fmt == "focus":
        encoder = encoder_for("csv", FOCUS_COLUMNS)
        chunks = focus_records(store, scope, filters, _account(principal, scope, request))
        name = "focus"
    else:
        encoder = encoder_for(fmt, LEVELS[level])
        chunks = _RECORDS[level](store, scope, filters)
        name = level
    # The first chunk is read here: a store that cannot serve is a 503, not an empty file.
    first = next(chunks, None)
    rest = itertools.chain([] if first is None else [first], chunks)
    filename = f"taskmeter-{name}-{utc_now().strftime('%Y%m%dT%H%M%SZ')}.{encoder.extension}"
    return StreamingResponse(
        _body(encoder, rest),
        media_type=encoder.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip


_FILTERS = [p for p in PARAMETERS["streams"] if p["name"] not in ("limit", "offset", "sort")]
_SEARCH = [p for p in PARAMETERS["tasks"] if p["name"] == "search"]
_BODY = {"type": "string", "description": "The export file (columns: docs/exports.md)"}
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    (PATH, "get"): {
        "parameters": [
            _query(
                "format",
                "csv, jsonl (JSON Lines), parquet, or focus (a FOCUS 1.2 CSV)",
                {"type": "string", "enum": list(FORMATS), "default": "csv"},
            ),
            _query(
                "level",
                "One row per stream, task or LLM call (not for format=focus)",
                {"type": "string", "enum": list(LEVELS), "default": "streams"},
            ),
            *_FILTERS,
            *[{**p, "description": p["description"] + " (level=tasks only)"} for p in _SEARCH],
        ],
        "responses": {
            "200": {
                "description": "The export, streamed (Content-Disposition names the file)",
                "headers": {
                    "Content-Disposition": {
                        "schema": {"type": "string"},
                        "description": 'attachment; filename="taskmeter-<level>-<UTC>.<ext>"',
                    }
                },
                "content": {
                    MEDIA_TYPES["csv"].split(";")[0]: {"schema": _BODY},
                    MEDIA_TYPES["jsonl"]: {"schema": _BODY},
                    MEDIA_TYPES["parquet"]: {"schema": {**_BODY, "format": "binary"}},
                },
            },
            **error_responses(400, 401, 403, 429, 500),
            "501": {
                "description": "format=parquet on a server without pyarrow "
                "(code parquet_unavailable)",
                "content": {"application/json": {"schema": ref("ErrorResponse")}},
            },
        },
    }
}
