"""JSON in and out with orjson: the stored task rows and the list pages are the largest values
the service handles (a task row carries its whole tool-call history), and the standard
library spent most of a large page's time encoding it (measured in bench/RESULTS.md).

Compatible with what the standard library produced here: UTF-8, no spaces, non-string keys
turned into strings, the same shortest float repr.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

__all__ = ["JSONBody", "JSONBodyRoute", "dump_bytes", "dumps", "loads"]

_OPTIONS = orjson.OPT_NON_STR_KEYS

loads = orjson.loads


def dump_bytes(value: Any) -> bytes:
    """A JSON document as UTF-8 bytes (what psycopg sends for a jsonb value)."""
    return orjson.dumps(value, option=_OPTIONS)


def dumps(value: Any) -> str:
    """A JSON document as text (what SQLAlchemy stores in a SQLite JSON column)."""
    return orjson.dumps(value, option=_OPTIONS).decode()


class JSONBody(JSONResponse):
    """A JSON response encoded by orjson (FastAPI's own `ORJSONResponse` is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)


class JSONBodyRoute(APIRoute):
    """A route whose body is JSON whatever Content-Type it was sent with, as the events endpoint
    reads it: `curl -d` labels its body application/x-www-form-urlencoded, and FastAPI would
    then refuse a valid JSON body as "not a dictionary"."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
            return await handler(Request(scope, request.receive))

        return route
