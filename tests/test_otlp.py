"""POST /v1/traces with real OpenTelemetry clients, on both stores.

The OpenTelemetry SDK's own OTLPSpanExporter (protobuf over HTTP) and a pydantic-ai agent
instrumented with its OpenTelemetry instrumentation send to a live `serve`; the read API then
shows the run as a task. Re-exporting the same spans changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import gzip
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from taskmeter.ingest import endpoints
from taskmeter.store import Store
from tests.factories import Factory, Person
from tests.spec import assert_error_response

NS = 1_000_000_000
T0 = 1_777_622_400 * NS  # 2026-05-01T08:00:00Z


def record_agent_run(
    task_id: str, *, fail: bool = False, user: str | None = None
) -> list[ReadableSpan]:
    """A GenAI agent trace as instrumented agents emit it, with fixed times."""
    memory = InMemorySpanExporter()
    attributes: dict[str, Any] = {"taskmeter.task_id": task_id, "service.name": "scanner"}
    if user:
        attributes["user.email"] = user
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    root = tracer.start_span(
        "invoke_agent scanner",
        start_time=T0,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "scanner",
            "gen_ai.aggregated_usage.input_tokens": 999_999,
        },
    )
    from opentelemetry import trace

    with trace.use_span(root, end_on_exit=False):
        for i, (inp, out, cached) in enumerate([(12_000, 800, 8_000), (20_000, 1_000, 0)]):
            span = tracer.start_span(
                "chat gpt-4o",
                start_time=T0 + (1 + 10 * i) * NS,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": inp,
                    "gen_ai.usage.output_tokens": out,
                    "gen_ai.usage.cache_read.input_tokens": cached,
                },
            )
            span.end(end_time=T0 + (3 + 10 * i) * NS)
        for i, tool in enumerate(["nuclei", "httpx", "nuclei"]):
            span = tracer.start_span(
                f"execute_tool {tool}",
                start_time=T0 + (4 + i) * NS,
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool},
            )
            span.end(end_time=T0 + (4 + i) * NS + 500_000_000)
        sub = tracer.start_span(
            "invoke_agent reporter",
            start_time=T0 + 25 * NS,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "reporter"},
        )
        sub.end(end_time=T0 + 26 * NS)
    if fail:
        root.set_status(Status(StatusCode.ERROR, "agent crashed"))
    root.end(end_time=T0 + 30 * NS)
    provider.shutdown()
    return list(memory.get_finished_spans())


def exporter(base: str, person: Person | str) -> OTLPSpanExporter:
    key = person if isinstance(person, str) else person.key
    return OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers={"X-Api-Key": key}, timeout=30)


def task(base: str, person: Person, task_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/api/v1/usage/tasks/{task_id}", headers=person.headers)
    assert answer.status_code == 200, answer.text
    row: dict[str, Any] = answer.json()
    return row


def test_the_sdk_exporter_records_a_task(live_server: str, factory: Factory) -> None:
    ada = factory.person("ada@example.com")
    spans = record_agent_run("otel-task-1")
    assert exporter(live_server, ada).export(spans) == SpanExportResult.SUCCESS
    row = task(live_server, ada, "otel-task-1")
    assert (row["status"], row["model"], row["stream_count"]) == ("completed", "gpt-4o", 1)
    assert (row["llm_calls"], row["step_count"], row["tool_calls"]) == (2, 2, 3)
    assert row["tool_breakdown"] == {
        "httpx": {"calls": 1, "total_duration_ms": 500},
        "nuclei": {"calls": 2, "total_duration_ms": 1000},
    }
    assert (row["agent_triggers"], row["agent_breakdown"]) == (1, {"reporter": 1})
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (
        32_000,
        1_800,
        8_000,
    )  # aggregated usage on the agent span is not counted again
    assert (row["llm_time_ms"], row["avg_step_latency_ms"], row["total_execution_ms"]) == (
        4000,
        2000,
        30_000,
    )
    # gpt-4o: (4k × 2.5 + 8k × 1.25 + 800 × 10) + (20k × 2.5 + 1k × 10), per MTok = $0.088
    assert row["neo_credits"] == 0.0088
    assert row["created_at"] == "2026-05-01T08:00:00Z"

    before = row
    assert exporter(live_server, ada).export(spans) == SpanExportResult.SUCCESS  # re-export
    assert exporter(live_server, ada).export(list(reversed(spans))[:3]) == SpanExportResult.SUCCESS
    assert task(live_server, ada, "otel-task-1") == before


def test_spans_in_any_order_and_batch(live_server: str, factory: Factory) -> None:
    ada = factory.person("ada@example.com")
    for task_id, batches in (("one-batch", 1), ("scattered", 4)):
        spans = record_agent_run(task_id, fail=True)
        ordered = list(reversed(spans))
        for i in range(batches):
            chunk = ordered[i::batches]
            assert exporter(live_server, ada).export(chunk) == SpanExportResult.SUCCESS
    one, scattered = task(live_server, ada, "one-batch"), task(live_server, ada, "scattered")
    assert (one["status"], one["error_message"]) == ("error", "agent crashed")
    scattered["task_id"] = "one-batch"
    assert one == scattered


def _otlp_json(spans: list[ReadableSpan]) -> bytes:
    """OTLP/JSON as the spec writes it: camelCase, ids in hex."""
    document = json_format.MessageToDict(encode_spans(spans))

    def hexify(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    base64.b64decode(v).hex()
                    if k in ("traceId", "spanId", "parentSpanId")
                    else hexify(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [hexify(v) for v in node]
        return node

    return json.dumps(hexify(document)).encode()


def test_json_and_gzip_encodings(live_server: str, factory: Factory) -> None:
    ada = factory.person("ada@example.com")
    headers = {**ada.headers, "content-type": "application/json"}
    body = _otlp_json(record_agent_run("json-task"))
    answer = httpx.post(f"{live_server}/v1/traces", content=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {}
    gz = httpx.post(
        f"{live_server}/v1/traces",
        content=gzip.compress(encode_spans(record_agent_run("gzip-task")).SerializeToString()),
        headers={
            **ada.headers,
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
        },
    )
    assert gz.status_code == 200 and gz.headers["content-type"] == "application/x-protobuf"
    assert task(live_server, ada, "json-task")["tool_calls"] == 3
    assert task(live_server, ada, "gzip-task")["llm_calls"] == 2


def test_an_export_is_decoded_and_mapped_off_the_event_loop(
    live_server: str, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding and mapping an export take milliseconds of CPU: they run beside the event
    loop, which meanwhile answers other requests (here, while the mapping is held open)."""
    ada = factory.person("ada@example.com")
    mapping, answered = threading.Event(), threading.Event()
    real = endpoints.spans_to_events

    def held_mapping(export: Any) -> Any:
        mapping.set()
        assert answered.wait(10), "no request was answered while an export was mapped"
        return real(export)

    monkeypatch.setattr(endpoints, "spans_to_events", held_mapping)
    body = encode_spans(record_agent_run("held-task")).SerializeToString()
    with ThreadPoolExecutor(1) as pool:
        export = pool.submit(
            httpx.post,
            f"{live_server}/v1/traces",
            content=body,
            headers={**ada.headers, "content-type": "application/x-protobuf"},
            timeout=30,
        )
        assert mapping.wait(10)
        assert httpx.get(f"{live_server}/healthz", timeout=5).status_code == 200
        answered.set()
        assert export.result().status_code == 200
    assert task(live_server, ada, "held-task")["tool_calls"] == 3


def test_partial_success_names_rejected_spans(live_server: str, factory: Factory) -> None:
    factory.person("ada@example.com")
    key = factory.service_key()
    body = _otlp_json(record_agent_run("no-owner"))  # a service key, no user.email: refused
    answer = httpx.post(
        f"{live_server}/v1/traces",
        content=body,
        headers={"X-Api-Key": key, "content-type": "application/json"},
    )
    assert answer.status_code == 200
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "user_required" in partial["errorMessage"]
    owned = _otlp_json(record_agent_run("owned", user="ada@example.com"))
    answer = httpx.post(
        f"{live_server}/v1/traces",
        content=owned,
        headers={"X-Api-Key": key, "content-type": "application/json"},
    )
    assert answer.json() == {}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"\x0a\xff\xff\xff", {"content-type": "application/x-protobuf"}, 400),
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'["an array"]', {"content-type": "application/json"}, 400),
        (b"null", {"content-type": "application/json"}, 400),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            {"content-type": "application/json"},
            400,
        ),
        (b"hello", {"content-type": "text/plain"}, 400),
        (b"not gzip", {"content-type": "application/x-protobuf", "content-encoding": "gzip"}, 400),
        (
            gzip.compress(b"\x00" * (40 * 1024 * 1024)),
            {"content-type": "application/x-protobuf", "content-encoding": "gzip"},
            413,
        ),
        (b"x", {"content-type": "application/x-protobuf", "content-encoding": "br"}, 400),
    ],
)
def test_bad_exports_get_clear_errors(
    live_server: str, factory: Factory, body: bytes, headers: dict[str, str], status: int
) -> None:
    ada = factory.person("ada@example.com")
    answer = httpx.post(
        f"{live_server}/v1/traces", content=body, headers={**ada.headers, **headers}
    )
    assert answer.status_code == status, answer.text
    assert_error_response(answer.json())


def test_traces_need_a_credential(live_server: str) -> None:
    answer = httpx.post(
        f"{live_server}/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
    )
    assert answer.status_code == 401


@pytest.fixture
def instrumented_agents() -> Iterator[TracerProvider]:
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings

    provider = TracerProvider()
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    yield provider
    Agent.instrument_all(False)


def test_a_pydantic_ai_agent_run_becomes_a_task(
    live_server: str, factory: Factory, store: Store, instrumented_agents: TracerProvider
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    ada = factory.person("ada@example.com")
    otlp = exporter(live_server, ada)
    memory = InMemorySpanExporter()
    instrumented_agents.add_span_processor(SimpleSpanProcessor(otlp))
    instrumented_agents.add_span_processor(SimpleSpanProcessor(memory))
    agent = Agent(TestModel(), name="scanner")

    @agent.tool_plain
    def nuclei(target: str) -> str:
        """Scan a target for known vulnerabilities."""
        return "no findings"

    # asyncio.run closes its loop; run_sync leaves one for the garbage collector.
    asyncio.run(agent.run("scan example.com"))
    instrumented_agents.force_flush()
    tasks = httpx.get(f"{live_server}/api/v1/usage/tasks", headers=ada.headers).json()
    assert tasks["total"] == 1
    row = tasks["data"][0]
    assert (row["model"], row["status"], row["llm_calls"], row["step_count"]) == (
        "test",
        "completed",
        2,
        2,
    )
    assert row["tool_breakdown"] == {
        "nuclei": {"calls": 1, "total_duration_ms": row["tool_time_ms"]}
    }
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["neo_credits"] == 0.0  # the test model has no price: unpriced, costs 0

    # Re-exporting the same spans changes nothing.
    assert otlp.export(list(memory.get_finished_spans())) == SpanExportResult.SUCCESS
    time.sleep(0.1)
    again = httpx.get(f"{live_server}/api/v1/usage/tasks", headers=ada.headers).json()
    assert again == tasks
    gc.collect()  # any resource the run leaked is reported here, not in a later test


def test_overload_answers_429_with_retry_after() -> None:
    from taskmeter.errors import RateLimited
    from taskmeter.ingest.admission import WriteAdmission

    admission = WriteAdmission(1)
    with admission.admit(), pytest.raises(RateLimited) as busy, admission.admit():
        pass
    assert busy.value.retry_after == 1
    with admission.admit():  # the slot is free again once the first write is done
        pass


def test_an_unreachable_store_answers_503_with_retry_after() -> None:
    from fastapi.testclient import TestClient

    from taskmeter.app import create_app
    from taskmeter.config import Settings

    app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no migration
    body = encode_spans(record_agent_run("down")).SerializeToString()
    answer = client.post(
        "/v1/traces",
        content=body,
        headers={"X-Api-Key": "neo_sk_" + "a" * 32, "content-type": "application/x-protobuf"},
    )
    client.close()
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert_error_response(answer.json(), code="unavailable")


def test_attributes_the_mapping_does_not_read_change_nothing() -> None:
    """Prompt and completion contents and any other attribute are skipped unread: the same
    spans map to the same events with or without them."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    from taskmeter.ingest.otlp import READ_ATTRIBUTES, _attributes, spans_to_events

    plain = encode_spans(record_agent_run("T-content", user="ada@example.com"))
    padded = type(plain)()
    padded.CopyFrom(plain)
    for resource_spans in padded.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.attributes.extend(
                    [
                        KeyValue(
                            key="gen_ai.input.messages", value=AnyValue(string_value="x" * 50_000)
                        ),
                        KeyValue(
                            key="gen_ai.usage.input_tokens.extra", value=AnyValue(int_value=7)
                        ),
                        KeyValue(key="custom.flag", value=AnyValue(bool_value=True)),
                    ]
                )
    assert spans_to_events(padded) == spans_to_events(plain)
    assert len(spans_to_events(plain).events) == 10
    # Skipped, not copied out and ignored later.
    first = padded.resource_spans[0].scope_spans[0].spans[0]
    assert set(_attributes(first.attributes)) <= READ_ATTRIBUTES


def test_every_attribute_the_mapping_names_is_read() -> None:
    """The mapping copies out only READ_ATTRIBUTES: every attribute name it uses is there."""
    import inspect
    import re

    from taskmeter.ingest import otlp

    named = set(
        re.findall(r'"((?:gen_ai|taskmeter|user|enduser)\.[a-z_.]+)"', inspect.getsource(otlp))
    )
    assert named == otlp.READ_ATTRIBUTES


def test_attributes_of_an_unexpected_kind_map_as_their_values_say() -> None:
    """Each attribute is read as the kind it should hold, and its actual kind asked only when
    that reads empty: a value of another kind, an empty one or none at all still maps by what
    it holds (a count only from an integer, a name from any scalar's text)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    from taskmeter.ingest.otlp import spans_to_events

    def kv(key: str, **value: Any) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(**value))

    trace_id, root = bytes(range(16)), b"\x01" * 8
    start = 1_764_806_400 * 10**9

    def span(span_id: bytes, name: str, *attributes: KeyValue, parent: bytes = b"") -> Span:
        return Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name=name,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 2_000_000_000,
            attributes=attributes,
        )

    export = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            span(
                                root,
                                "invoke_agent run",
                                kv("taskmeter.task_id", int_value=42),
                                kv("user.email", string_value=""),
                                kv("enduser.id", string_value="ada@example.com"),
                                kv("taskmeter.is_byok", string_value="true"),
                            ),
                            span(
                                b"\x02" * 8,
                                "chat",
                                kv("gen_ai.operation.name", string_value="chat"),
                                kv("gen_ai.usage.input_tokens", string_value="12"),
                                kv("gen_ai.usage.output_tokens", int_value=0),
                                kv("gen_ai.usage.cache_read.input_tokens", bool_value=True),
                                kv("gen_ai.response.model", int_value=7),
                                kv("gen_ai.provider.name", string_value=""),
                                kv("gen_ai.system", string_value="openai"),
                                parent=root,
                            ),
                            span(
                                b"\x03" * 8,
                                "execute_tool search",
                                kv("gen_ai.operation.name", string_value="execute_tool"),
                                kv("gen_ai.tool.name"),
                                parent=root,
                            ),
                            span(
                                b"\x04" * 8,
                                "execute_tool other",
                                kv("gen_ai.operation.name", string_value="execute_tool"),
                                kv("gen_ai.tool.name", double_value=1.5),
                                parent=root,
                            ),
                            span(
                                b"\x05" * 8,
                                "invoke_agent helper",
                                kv("gen_ai.operation.name", string_value="invoke_agent"),
                                kv("taskmeter.is_byok", bool_value=False),
                                kv("gen_ai.agent.name", bool_value=False),
                                parent=root,
                            ),
                        ]
                    )
                ]
            )
        ]
    )
    events = {
        e["id"].rpartition(".")[2] + ":" + e["id"][:2]: e for e in spans_to_events(export).events
    }
    started = events["start:01"]
    assert started["task_id"] == "42"
    assert started["user"] == "ada@example.com"  # an empty email is no email
    assert "is_byok" not in started  # a flag only from a boolean
    call = events["llm:02"]
    assert (call["input_tokens"], call["output_tokens"], call["cache_read_tokens"]) == (0, 0, 0)
    assert (call["model"], call["provider"]) == ("7", "openai")
    assert events["tool:03"]["tool_name"] == "search"  # no value: the span's name
    assert events["tool:04"]["tool_name"] == "1.5"
    assert events["agent:05"]["agent_name"] == "helper"  # a false value: the span's name
