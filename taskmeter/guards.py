"""Limits applied before any route runs.

uvicorn's httptools parser buffers request headers of any size (a 20 MB header is read whole),
so the size of what a client may send in headers is bounded here: beyond it, 431 with an
ErrorResponse, before authentication, parsing or the store is touched. A reverse proxy in
front should bound headers too (nginx's default is 8 KiB a line); this is the last line.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from taskmeter.errors import error_body

__all__ = ["MAX_HEADER_BYTES", "MAX_HEADER_LINE_BYTES", "HeaderSizeLimit"]

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINE_BYTES = 16 * 1024


class HeaderSizeLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _oversized(scope["headers"], scope.get("query_string", b""))
            if problem is not None:
                answer = JSONResponse(
                    error_body(431, problem), status_code=431, headers={"connection": "close"}
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _oversized(headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
    total = len(query)
    for name, value in headers:
        line = len(name) + len(value)
        if line > MAX_HEADER_LINE_BYTES:
            return f"a header line may be at most {MAX_HEADER_LINE_BYTES} bytes"
        total += line
    if total > MAX_HEADER_BYTES:
        return f"request headers and query may be at most {MAX_HEADER_BYTES} bytes in all"
    return None
