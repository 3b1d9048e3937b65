"""Our OpenAPI agrees with the published seeds for the Usage paths, and only adds to them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from taskmeter.app import create_app
from taskmeter.config import Settings
from tests.spec import seed

SEEDS = {
    ("/api/v1/usage/streams", "get"): "list-stream-usages.openapi.md",
    ("/api/v1/usage/tasks/{task_id}", "get"): "get-task-usage-by-id.openapi.md",
}


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    with TestClient(app) as client:
        document: dict[str, Any] = client.get("/api/openapi.json").json()
    return document


def _resolve(node: Any, components: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = components[node["$ref"].rsplit("/", 1)[1]]
    return node


def _types(schema: dict[str, Any]) -> set[str]:
    """A schema's types, reading the seeds' `nullable: true` as 3.1's extra "null" type."""
    declared = schema.get("type")
    types = set(declared) if isinstance(declared, list) else {declared} if declared else set()
    if schema.get("nullable"):
        types.add("null")
    return types


def _same_schema(
    seed_node: Any, our_node: Any, seed_c: dict[str, Any], our_c: dict[str, Any], where: str
) -> None:
    seed_node, our_node = _resolve(seed_node, seed_c), _resolve(our_node, our_c)
    assert _types(seed_node) == _types(our_node), f"{where}: type"
    for key in ("format", "enum", "minimum", "maximum", "default"):
        assert seed_node.get(key) == our_node.get(key), f"{where}: {key}"
    assert set(seed_node.get("required", [])) == set(our_node.get("required", [])), (
        f"{where}: required"
    )
    for name, prop in seed_node.get("properties", {}).items():
        assert name in our_node.get("properties", {}), f"{where}: missing property {name}"
        _same_schema(prop, our_node["properties"][name], seed_c, our_c, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(seed_node.get(key), dict):
            _same_schema(seed_node[key], our_node.get(key), seed_c, our_c, f"{where}.{key}")


@pytest.mark.parametrize(("path", "method"), list(SEEDS))
def test_operation_matches_its_seed(ours: dict[str, Any], path: str, method: str) -> None:
    published = seed(SEEDS[(path, method)])
    seed_op = published["paths"][path][method]
    our_op = ours["paths"][path][method]
    seed_c = published["components"]["schemas"]
    our_c = ours["components"]["schemas"]

    seed_params = {(p["name"], p["in"]): p for p in seed_op["parameters"]}
    our_params = {(p["name"], p["in"]): p for p in our_op["parameters"]}
    assert set(seed_params) <= set(our_params)
    for key, param in seed_params.items():
        assert param.get("required", False) == our_params[key].get("required", False), key
        _same_schema(param["schema"], our_params[key]["schema"], seed_c, our_c, f"param {key}")

    assert set(seed_op["responses"]) <= set(our_op["responses"]), "a seed status is missing"
    for status, response in seed_op["responses"].items():
        seed_schema = response["content"]["application/json"]["schema"]
        our_schema = our_op["responses"][status]["content"]["application/json"]["schema"]
        _same_schema(seed_schema, our_schema, seed_c, our_c, f"{path} {status}")

    assert seed_op["operationId"] == our_op["operationId"]
    schemes = {next(iter(s)) for s in our_op["security"]}
    assert {next(iter(s)) for s in seed_op["security"]} == schemes


def test_security_schemes_match(ours: dict[str, Any]) -> None:
    published = seed("list-stream-usages.openapi.md")["components"]["securitySchemes"]
    for name, scheme in published.items():
        ours_scheme = ours["components"]["securitySchemes"][name]
        for key in ("type", "scheme", "in", "name"):
            assert scheme.get(key) == ours_scheme.get(key), (name, key)


def test_extension_fields_are_documented(ours: dict[str, Any]) -> None:
    properties = ours["components"]["schemas"]["TaskUsage"]["properties"]
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "total_tokens",
        "llm_calls",
        "finished_at",
    ):
        assert name in properties and properties[name]["description"]
