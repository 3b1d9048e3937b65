"""The published seeds (../shared/spec/seeds), loaded as OpenAPI documents for checks."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SEEDS = Path(os.environ.get("TASKMETER_SPEC_DIR", REPO.parent / "shared" / "spec")) / "seeds"


@functools.cache
def seed(name: str) -> dict[str, Any]:
    text = (SEEDS / name).read_text()
    match = re.search(r"````yaml[^\n]*\n(.*?)````", text, re.S)
    assert match, f"no OpenAPI block in {name}"
    document: dict[str, Any] = yaml.safe_load(match.group(1))
    return document


def seed_schema(name: str) -> dict[str, Any]:
    """A component schema from the seeds, with `nullable: true` read as allowing null."""
    schemas = seed("list-stream-usages.openapi.md")["components"]["schemas"]
    return _nullable_to_31(schemas[name], schemas)


def _nullable_to_31(node: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _nullable_to_31(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
        out = {k: _nullable_to_31(v, schemas) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_31(v, schemas) for v in node]
    return node


def assert_error_response(body: Any, *, code: str | None = None) -> None:
    """The body is the seeds' ErrorResponse, and carries nothing internal."""
    import jsonschema_rs

    jsonschema_rs.validate(seed_schema("ErrorResponse"), body)
    assert set(body) <= {"error", "code", "kind", "message", "error_id"}
    text = str(body)
    for leak in ("Traceback", "SELECT ", "INSERT ", "sqlalchemy", 'File "', "psycopg"):
        assert leak not in text, f"error body leaks {leak!r}: {body}"
    if code is not None:
        assert body["code"] == code, body


def validate_usage_response(path: str, status: int, body: Any) -> None:
    """Check a read-API answer against the seed schemas (TaskUsage rows, ErrorResponse)."""
    import jsonschema_rs

    if status >= 400:
        assert_error_response(body)
    elif path.rstrip("/").endswith(("/usage/streams", "/usage/tasks")):
        jsonschema_rs.validate(seed_schema("TaskUsageListResponse"), body)
    elif "/usage/tasks/" in path:
        jsonschema_rs.validate(seed_schema("TaskUsage"), body)
