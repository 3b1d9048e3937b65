"""OpenTelemetry intake: OTLP/HTTP trace exports → the ingestion API's events (INTERFACE.md).

    root span (no parent)               → stream.started at its start, stream.finished at its end
    gen_ai.operation.name = chat | text_completion | generate_content
                                        → llm.call + step.completed (latency = span duration)
    gen_ai.operation.name = execute_tool → tool.call
    gen_ai.operation.name = invoke_agent (below the root) → agent.triggered

Event ids derive from span ids (a re-exported span is a duplicate) and the stream id is the
trace id, so spans may arrive in any order and any export batch. The events then take the
same path as `POST /api/v1/usage/events`: validation, pricing, idempotent storage.
"""

from __future__ import annotations

import base64
import json
import operator
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from taskmeter.errors import BadRequest, PayloadTooLarge

__all__ = [
    "MAX_DECODED_BYTES",
    "MappedEvents",
    "decode_request",
    "encode_response",
    "spans_to_events",
]

# What one export may expand to once gunzipped: far above any real batch, far below harm.
MAX_DECODED_BYTES = 32 * 1024 * 1024
LLM_OPERATIONS = {"chat", "text_completion", "generate_content"}
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_DECODED_BYTES + 1)
    except zlib.error:
        raise BadRequest("the body is not valid gzip") from None
    if len(out) > MAX_DECODED_BYTES or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body may be at most {MAX_DECODED_BYTES} bytes")
    return out


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise BadRequest(f"{key} {value[:40]!r} is not hex") from None
            out[key] = _hex_ids_to_base64(value)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode_request(
    body: bytes, content_type: str, content_encoding: str | None
) -> tuple[ExportTraceServiceRequest, str]:
    """The export request and its encoding ("protobuf" or "json")."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body)
    elif encoding not in ("identity", ""):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported (use gzip or none)")
    media = content_type.split(";")[0].strip().lower()
    request = ExportTraceServiceRequest()
    if media == "application/x-protobuf":
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError):
            raise BadRequest("the body is not a valid OTLP protobuf export") from None
        return request, "protobuf"
    if media == "application/json":
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise BadRequest("an OTLP/JSON export is a JSON object")
            json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, RecursionError, TypeError):
            raise BadRequest("the body is not a valid OTLP/JSON export") from None
        return request, "json"
    raise BadRequest("Content-Type must be application/x-protobuf or application/json")


def encode_response(rejected_spans: int, message: str, encoding: str) -> tuple[bytes, str]:
    response = ExportTraceServiceResponse()
    if rejected_spans:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = message
    if encoding == "json":
        return json_format.MessageToJson(response).encode(), "application/json"
    return response.SerializeToString(), "application/x-protobuf"


_SCALARS = frozenset({"string_value", "bool_value", "int_value", "double_value"})


# Every attribute the mapping below reads. The others (prompt and completion contents among
# them, often kilobytes a span) are never copied out of the decoded message.
READ_ATTRIBUTES = frozenset(
    {
        "enduser.id",
        "gen_ai.agent.name",
        "gen_ai.conversation.id",
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.system",
        "gen_ai.tool.name",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "taskmeter.is_byok",
        "taskmeter.project",
        "taskmeter.task_id",
        "taskmeter.task_title",
        "user.email",
    }
)


# What each read attribute holds when it is well formed. That kind is read first: a set value
# reads as itself and an unset one as empty, zero or false, so only then is the value asked
# which kind it holds (`WhichOneof` was a fifth of reading a span's attributes).
_EXPECTED_KIND = dict.fromkeys(READ_ATTRIBUTES, "string_value") | {
    "gen_ai.usage.cache_creation.input_tokens": "int_value",
    "gen_ai.usage.cache_read.input_tokens": "int_value",
    "gen_ai.usage.input_tokens": "int_value",
    "gen_ai.usage.output_tokens": "int_value",
    "taskmeter.is_byok": "bool_value",
}


def _attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    """The attributes the mapping reads, scalar values only (others read as None)."""
    attributes: dict[str, Any] = {}
    for item in items:
        key = item.key
        kind = _EXPECTED_KIND.get(key)
        if kind is not None:
            value = item.value
            read = getattr(value, kind)
            if not read:
                kind = value.WhichOneof("value")
                read = getattr(value, kind) if kind in _SCALARS else None
            attributes[key] = read
    return attributes


# Bound once: looked up on the class at each call, it cost 1,100 instructions a span (callgrind).
_FROM_TIMESTAMP = datetime.fromtimestamp


def _time(nanos: int) -> datetime:
    # A datetime, not its RFC 3339 text: the events' validation takes either, and parsing
    # the text back was a tenth of an export's mapping and validation. The zone is passed
    # by position: as a keyword it made the call 70 % slower.
    return _FROM_TIMESTAMP(nanos / 1e9, UTC)


def _count(attributes: dict[str, Any], name: str) -> int:
    value = attributes.get(name)
    return value if type(value) is int else 0  # not a bool, nor a string of digits


def _first(attributes: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = attributes.get(name)
        if value not in (None, ""):
            return value
    return None


@dataclass(slots=True)
class _TraceSpan:
    """What the mapping reads of a span, read out of the decoded message once: every field
    access on a protobuf message builds a Python object, and the mapping had read most
    fields several times (mapping an export took longer than storing its events)."""

    start: int
    end: int
    span_id: bytes
    is_root: bool
    attributes: dict[str, Any]
    resource: dict[str, Any]
    span: Span  # for what few spans need: the root's status, a name without its attribute


@dataclass(frozen=True)
class MappedEvents:
    events: list[dict[str, Any]]
    span_of_event: list[str]  # the span id (hex) each event came from


def spans_to_events(request: ExportTraceServiceRequest) -> MappedEvents:
    traces: dict[bytes, list[_TraceSpan]] = defaultdict(list)
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                traces[span.trace_id].append(
                    _TraceSpan(
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        span.span_id,
                        not span.parent_span_id,
                        _attributes(span.attributes),
                        resource,
                        span,
                    )
                )
    events: list[dict[str, Any]] = []
    origins: list[str] = []
    for trace_id, spans in traces.items():
        _trace_events(trace_id, spans, events, origins)
    return MappedEvents(events, origins)


_IN_TIME_ORDER = operator.attrgetter("start", "span_id")


def _trace_task_and_owner(spans: list[_TraceSpan], trace_id: bytes) -> tuple[str, str | None]:
    """The trace's task id and owner: the first span (in time order) that names either, else
    the resource; a trace naming no task is a task of its own."""
    every = [s.attributes for s in spans]
    every.append(spans[0].resource)
    task_id = conversation = owner = None
    for attributes in every:
        if task_id is None and attributes.get("taskmeter.task_id"):
            task_id = str(attributes["taskmeter.task_id"])
        if conversation is None and attributes.get("gen_ai.conversation.id"):
            conversation = str(attributes["gen_ai.conversation.id"])
        if owner is None:
            named = _first(attributes, "user.email", "enduser.id")
            if named:
                owner = str(named)
    return task_id or conversation or trace_id.hex(), owner


def _trace_events(
    trace_id: bytes, spans: list[_TraceSpan], events: list[dict[str, Any]], origins: list[str]
) -> None:
    """Append the events of one trace's spans (and the span each came from)."""
    spans.sort(key=_IN_TIME_ORDER)
    task_id, owner = _trace_task_and_owner(spans, trace_id)
    try:
        stream_id = str(uuid.UUID(bytes=trace_id))
    except ValueError:
        stream_id = trace_id.hex()  # not 16 bytes: the event is rejected as invalid

    def event(kind: str, event_id: str, nanos: int, span_hex: str, fields: dict[str, Any]) -> None:
        # Set one by one: `dict.update` with keywords built a second dict an event.
        fields["id"] = event_id
        fields["type"] = kind
        fields["time"] = _time(nanos)
        fields["stream_id"] = stream_id
        fields["task_id"] = task_id
        events.append(fields)
        origins.append(span_hex)

    for item in spans:
        a = item.attributes
        span_hex = item.span_id.hex()
        ms = max(0, (item.end - item.start) // 1_000_000)
        operation = a.get("gen_ai.operation.name")
        if item.is_root:
            started: dict[str, Any] = {}
            if owner:
                started["user"] = owner
            if a.get("taskmeter.task_title"):
                started["task_title"] = str(a["taskmeter.task_title"])
            if isinstance(a.get("taskmeter.is_byok"), bool):
                started["is_byok"] = a["taskmeter.is_byok"]
            if a.get("taskmeter.project"):
                started["project"] = str(a["taskmeter.project"])
            event("stream.started", f"{span_hex}.start", item.start, span_hex, started)
            status = item.span.status
            failed = status.code == Status.STATUS_CODE_ERROR
            finished: dict[str, Any] = {"status": "error" if failed else "completed"}
            if failed:
                finished["error_message"] = status.message or "span ended with an error"
            event("stream.finished", f"{span_hex}.finish", item.end, span_hex, finished)
        elif operation == "invoke_agent":
            name = _first(a, "gen_ai.agent.name") or item.span.name.removeprefix("invoke_agent ")
            agent = {"agent_name": str(name)}
            event("agent.triggered", f"{span_hex}.agent", item.start, span_hex, agent)
        if operation in LLM_OPERATIONS:
            call: dict[str, Any] = {
                "input_tokens": _count(a, "gen_ai.usage.input_tokens"),
                "output_tokens": _count(a, "gen_ai.usage.output_tokens"),
                "cache_read_tokens": _count(a, "gen_ai.usage.cache_read.input_tokens"),
                "cache_write_tokens": _count(a, "gen_ai.usage.cache_creation.input_tokens"),
                "duration_ms": ms,
            }
            model = _first(a, "gen_ai.response.model", "gen_ai.request.model")
            provider = _first(a, "gen_ai.provider.name", "gen_ai.system")
            if model:
                call["model"] = str(model)
            if provider:
                call["provider"] = str(provider)
            event("llm.call", f"{span_hex}.llm", item.start, span_hex, call)
            step = {"latency_ms": ms}
            event("step.completed", f"{span_hex}.step", item.end, span_hex, step)
        elif operation == "execute_tool":
            name = _first(a, "gen_ai.tool.name") or item.span.name.removeprefix("execute_tool ")
            tool = {"tool_name": str(name), "duration_ms": ms}
            event("tool.call", f"{span_hex}.tool", item.start, span_hex, tool)
