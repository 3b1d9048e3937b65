"""OTLP benchmark, side by side with Arize Phoenix: the same GenAI agent traces exported over
OTLP/HTTP to `taskmeter serve` and to `phoenix serve` (its default SQLite store), on loopback.

    python -m venv /tmp/phoenix && /tmp/phoenix/bin/pip install arize-phoenix
    python bench/otlp_vs_phoenix.py --store postgresql --traces 20000 \\
        --phoenix /tmp/phoenix/bin/phoenix

Each trace is one agent run: a root `invoke_agent` span, 3 `chat` spans with token usage, 5
`execute_tool` spans and a sub-agent `invoke_agent` span (10 spans). Exports carry 50 traces
(500 spans) each, protobuf, sent by --concurrency connections. The clock runs from the first
export until every trace is queryable: in taskmeter, when the tasks endpoint counts all of
them; in Phoenix, when its database holds every span (Phoenix writes spans asynchronously
after answering the export). Prints spans/s for each and the ratio. Phoenix runs in its own
virtual environment (its dependencies pin versions of their own).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from common import (
    MODELS,
    TASKMETER,
    TOOLS,
    connections_by_process,
    create_pg_database,
    free_port,
    start_serve,
    stop_serve,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

SPANS_PER_TRACE = 10
TRACES_PER_EXPORT = 50
USER = "otlp@bench.example"


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def agent_trace(rng: random.Random, n: int, start_ns: int) -> list[Span]:
    trace_id = rng.getrandbits(128).to_bytes(16, "big")
    ids = iter(rng.getrandbits(64).to_bytes(8, "big") for _ in range(SPANS_PER_TRACE))
    root_id = next(ids)
    model, provider = rng.choice(MODELS)
    ms = 1_000_000
    end = start_ns + 60_000 * ms
    spans = [
        Span(
            trace_id=trace_id,
            span_id=root_id,
            name="invoke_agent scanner",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start_ns,
            end_time_unix_nano=end,
            attributes=[
                _kv("gen_ai.operation.name", "invoke_agent"),
                _kv("gen_ai.agent.name", "scanner"),
                _kv("taskmeter.task_id", f"otlp-task-{n}"),
            ],
        )
    ]

    def child(name: str, at_ms: int, took_ms: int, attributes: list[KeyValue]) -> Span:
        return Span(
            trace_id=trace_id,
            span_id=next(ids),
            parent_span_id=root_id,
            name=name,
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start_ns + at_ms * ms,
            end_time_unix_nano=start_ns + (at_ms + took_ms) * ms,
            attributes=attributes,
        )

    for i in range(3):
        spans.append(
            child(
                f"chat {model}",
                1000 + i * 15_000,
                rng.randint(500, 9000),
                [
                    _kv("gen_ai.operation.name", "chat"),
                    _kv("gen_ai.request.model", model),
                    _kv("gen_ai.response.model", model),
                    _kv("gen_ai.provider.name", provider),
                    _kv("gen_ai.usage.input_tokens", rng.randint(500, 40_000)),
                    _kv("gen_ai.usage.output_tokens", rng.randint(50, 3000)),
                ],
            )
        )
    for i in range(5):
        tool = rng.choice(TOOLS)
        spans.append(
            child(
                f"execute_tool {tool}",
                12_000 + i * 8000,
                rng.randint(20, 7000),
                [_kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", tool)],
            )
        )
    spans.append(
        child(
            "invoke_agent recon",
            50_000,
            5000,
            [_kv("gen_ai.operation.name", "invoke_agent"), _kv("gen_ai.agent.name", "recon")],
        )
    )
    return spans


def exports(traces: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    start = int(time.time() * 1e9) - 86_400 * 10**9
    resource = Resource(attributes=[_kv("service.name", "scanner"), _kv("user.email", USER)])
    out = []
    for first in range(0, traces, TRACES_PER_EXPORT):
        spans = [
            span
            for n in range(first, min(traces, first + TRACES_PER_EXPORT))
            for span in agent_trace(rng, n, start + n * 10**9)
        ]
        request = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
        )
        out.append(request.SerializeToString())
    return out


def send_all(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    todo = iter(bodies)

    def worker() -> None:
        with httpx.Client(headers={**headers, "content-type": "application/x-protobuf"}) as c:
            while True:
                with lock:
                    body = next(todo, None)
                if body is None:
                    return
                for _ in range(100):  # honour 429/503 backpressure like an OTLP exporter
                    answer = c.post(url, content=body, timeout=120)
                    if answer.status_code not in (429, 503):
                        break
                    time.sleep(float(answer.headers.get("retry-after", "1")))
                with lock:
                    statuses.append(answer.status_code)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the traces to become queryable")
        time.sleep(0.05)


def run_taskmeter(
    store: str, bodies: list[bytes], traces: int, concurrency: int, workers: int
) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="taskmeter-otlp-"))
    cleanup = None
    if store == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        url, cleanup = create_pg_database()
    env = {**os.environ, "TASKMETER_DATABASE_URL": url}
    subprocess.run([TASKMETER, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([TASKMETER, "users", "create", USER], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [TASKMETER, "keys", "create", "--service", "otlp"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    person = subprocess.run(
        [TASKMETER, "keys", "create", USER], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    server, base = start_serve(url, workdir, TASKMETER_WORKERS=str(workers))
    try:
        began = time.monotonic()
        split: list[int] = []
        probe = threading.Timer(2.0, lambda: split.extend(connections_by_process(base)))
        probe.start()
        statuses = send_all(f"{base}/v1/traces", {"X-Api-Key": key}, bodies, concurrency)
        probe.cancel()
        assert all(s == 200 for s in statuses), set(statuses)
        print(f"connections per serving process: {' + '.join(map(str, split)) or 'none seen'}")
        with httpx.Client(base_url=base, headers={"X-Api-Key": person}) as c:

            def all_there() -> bool:
                answer = c.get("/api/v1/usage/tasks", params={"limit": 1})
                return bool(answer.json()["total"] == traces)

            until(all_there, 600)
        return time.monotonic() - began
    finally:
        stop_serve(server)
        if cleanup:
            cleanup()


def run_phoenix(phoenix: str, bodies: list[bytes], traces: int, concurrency: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="phoenix-"))
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (workdir / "phoenix.log").open("wb")
    server = subprocess.Popen([phoenix, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"phoenix did not start; see {workdir / 'phoenix.log'}")
            time.sleep(0.2)
        database = next(workdir.glob("*.db"))
        began = time.monotonic()
        statuses = send_all(f"{base}/v1/traces", {}, bodies, concurrency)
        assert all(s == 200 for s in statuses), set(statuses)

        def all_there() -> bool:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
                (count,) = conn.execute("SELECT count(*) FROM spans").fetchone()
            return bool(count == traces * SPANS_PER_TRACE)

        until(all_there, 3600)
        return time.monotonic() - began
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--phoenix-traces", type=int, help="default: --traces")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="connections (with --workers 2, four often left one worker with one or none)",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--phoenix", default="phoenix", help="the phoenix executable")
    args = parser.parse_args()
    spans = args.traces * SPANS_PER_TRACE
    bodies = exports(args.traces, seed=7)
    print(
        f"{args.traces:,} traces, {spans:,} spans in {len(bodies)} exports "
        f"of {TRACES_PER_EXPORT} traces, concurrency {args.concurrency}, workers {args.workers}"
    )
    ours = run_taskmeter(args.store, bodies, args.traces, args.concurrency, args.workers)
    print(f"taskmeter ({args.store}): {ours:.1f} s, {spans / ours:,.0f} spans/s to queryable")
    phoenix_traces = args.phoenix_traces or args.traces
    phoenix_bodies = exports(phoenix_traces, seed=7)
    theirs = run_phoenix(args.phoenix, phoenix_bodies, phoenix_traces, args.concurrency)
    phoenix_spans = phoenix_traces * SPANS_PER_TRACE
    print(
        f"phoenix (sqlite): {theirs:.1f} s for {phoenix_spans:,} spans, "
        f"{phoenix_spans / theirs:,.0f} spans/s to queryable"
    )
    print(f"ratio: {(spans / ours) / (phoenix_spans / theirs):,.1f}x")


if __name__ == "__main__":
    main()
