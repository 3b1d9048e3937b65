"""Hostile input against a real `serve` process: each answered with a clear 4xx ErrorResponse,
never a 500, and the process does not grow while it keeps answering (both stores).

Every query parameter of every read endpoint, from our own OpenAPI document, is sent SQL
metacharacters, unicode, NUL and oversized values; bodies are deeply nested, oversized, gzip
bombs and malformed protobuf; headers are huge.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.factories import Factory
from tests.processes import serve, stop
from tests.spec import assert_error_response

NASTY = [
    "' OR '1'='1",
    "1; DROP TABLE streams; --",
    '"); select pg_sleep(5); --',
    "%",
    "_",
    "\\",
    "ünïcödé 🤖 ‮",
    "\x00",
    "a" * 5000,
    "-1",
    "1e309",
    "9" * 40,
    "2026-02-30T25:61:00Z",
]
ROUNDS = 4
NESTED = b'{"events": [' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"]}"
BOMB = gzip.compress(b"\x00" * (64 * 1024 * 1024))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _hostile_round(client: httpx.Client, key: str, params: dict[str, list[str]]) -> int:
    """Sends one round of hostile requests; returns how many were sent."""
    sent = 0

    def check(answer: httpx.Response, allowed: set[int]) -> None:
        nonlocal sent
        sent += 1
        assert answer.status_code in allowed, (answer.request.url, answer.text[:300])
        if answer.status_code >= 400:
            assert_error_response(answer.json())

    auth = {"X-Api-Key": key}
    for path, names in params.items():
        for name in names:
            for value in NASTY:
                check(client.get(path, params={name: value}, headers=auth), {200, 400})
    for value in NASTY:
        check(
            client.get(f"/api/v1/usage/tasks/{quote(value, safe='')}", headers=auth),
            {200, 400, 404},
        )
    check(client.get("/api/v1/user", headers={"X-Api-Key": "k" * 1_000_000}), {431})
    check(client.get("/api/v1/user", headers={f"x-{n}": "v" * 8000 for n in range(20)}), {431})
    long_query = {"search": "s" * 60_000}  # with a 9 KB header, over 64 KiB in all
    check(
        client.get("/api/v1/usage/streams", params=long_query, headers={"x-pad": "p" * 9000}), {431}
    )
    json_body = {**auth, "content-type": "application/json"}
    check(client.post("/api/v1/usage/events", content=NESTED, headers=json_body), {400})
    check(client.post("/api/v1/usage/events", content=b"[" * 6_000_000, headers=json_body), {413})
    check(
        client.post("/api/v1/usage/events", content=b"\xff\xfe{not json", headers=json_body),
        {400},
    )
    protobuf = {**auth, "content-type": "application/x-protobuf"}
    check(
        client.post("/v1/traces", content=BOMB, headers={**protobuf, "content-encoding": "gzip"}),
        {413},
    )
    check(client.post("/v1/traces", content=b"\x0a\xff\xff\xff\xff\x0f", headers=protobuf), {400})
    check(client.post("/v1/traces", content=NESTED, headers=json_body), {400})
    return sent


def _string_parameters(openapi: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path, operations in openapi["paths"].items():
        if path.startswith("/api/v1/usage/") and "{" not in path and "get" in operations:
            names = [
                p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query"
            ]
            if names:  # GET /api/v1/usage/caps takes none
                found[path] = names
    # streams, tasks, summary (and the export, where it is mounted)
    assert len(found) >= 3 and "/api/v1/usage/summary" in found
    return found


def test_hostile_input_gets_clear_errors_and_memory_stays_flat(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    boss = factory.person("boss@acme.io", team="acme", role="admin")
    process, base = serve(
        database_url,
        tmp_path,
        {
            "TASKMETER_AUTH_FAILURES_PER_MINUTE": "1000000",
            "TASKMETER_AUTH_FAILURES_PER_KEY_PER_MINUTE": "1000000",
        },
    )
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            params = _string_parameters(client.get("/api/openapi.json").json())
            sent = _hostile_round(client, boss.key, params)  # warm-up: caches, pools, arenas
            warm = _rss_kib(process.pid)
            for _ in range(ROUNDS):
                sent += _hostile_round(client, boss.key, params)
            after = _rss_kib(process.pid)
            assert client.get("/readyz").status_code == 200
            answer = client.get("/api/v1/usage/summary", headers=boss.headers)
            assert answer.status_code == 200 and json.loads(answer.text)["total_tasks"] == 0
    finally:
        stop(process)
    print(
        f"\nhostile input: {sent} requests in {ROUNDS + 1} rounds; serve RSS {warm // 1024} MiB "
        f"after the first round, {after // 1024} MiB after the last"
    )
    assert after - warm < 24 * 1024, f"serve grew from {warm} KiB to {after} KiB"
