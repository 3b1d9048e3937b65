"""The events of the ingestion API (INTERFACE.md), validated one by one.

`parse_event(raw)` gives an `Event` or a `Rejection` with a stable code:

    invalid_event     not an object, or a required field missing or malformed
    unknown_type      `type` is none of the six
    negative_count    a count or duration below zero
    task_mismatch     the task id contradicts the stream's earlier events
    forbidden_stream  the stream belongs to another user
    user_required     stream.started without `user`, sent with a service key
    unknown_user      `user` names no user

Unknown extra fields are ignored, so newer clients keep working against older servers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from taskmeter.timeutil import parse_instant

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "STATUSES",
    "Event",
    "Rejection",
    "parse_event",
]

STATUSES = ("completed", "error", "failed", "aborted", "blocked")
EVENT_TYPES = (
    "stream.started",
    "llm.call",
    "tool.call",
    "agent.triggered",
    "step.completed",
    "stream.finished",
)
# Far beyond any real call, far below where sums could overflow 64-bit columns.
MAX_COUNT = 10**12
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


# A batch names a handful of streams, each in many events: each stream id, as written, is
# validated into its UUID once, and its events share that object (immutable). Building a
# `uuid.UUID` is Python code, ~1 µs an event, a quarter of an event's validation. Kept
# until a few thousand ids are known, then forgotten at once.
_STREAM_IDS: dict[str, uuid.UUID] = {}
_STREAM_IDS_KEPT = 4096


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    id: Annotated[str, Field(min_length=1, max_length=128)]
    time: datetime
    stream_id: uuid.UUID
    task_id: Annotated[str, Field(min_length=1, max_length=256)]

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> datetime:
        if isinstance(value, datetime) and value.tzinfo is not None:
            # Handed over decoded by the OTLP intake (JSON never holds one).
            moment = value
        # A tuple, not `str | int | float`: isinstance is slower with a union.
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("time must be an RFC 3339 string or Unix milliseconds")
        else:
            try:
                moment = parse_instant(value)
            except (ValueError, OverflowError, OSError) as exc:
                raise ValueError("time must be an RFC 3339 string or Unix milliseconds") from exc
        if not EARLIEST <= moment < LATEST:
            raise ValueError("time must fall between 2000 and 2100")
        return moment

    @field_validator("stream_id", mode="wrap")
    @classmethod
    def _stream_id(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> uuid.UUID:
        if not isinstance(value, str):
            raise ValueError("stream_id must be a UUID string")
        known = _STREAM_IDS.get(value)
        if known is None:
            known = handler(value)
            if len(_STREAM_IDS) >= _STREAM_IDS_KEPT:
                _STREAM_IDS.clear()
            _STREAM_IDS[value] = known
        return known


class StreamStarted(_Event):
    type: Literal["stream.started"]
    user: Annotated[str, Field(max_length=320)] | None = None
    model: Name | None = None
    task_title: Annotated[str, Field(max_length=1000)] | None = None
    is_byok: StrictBool = False
    # A project of the owner's team (or of the solo owner), by name.
    project: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class LlmCall(_Event):
    type: Literal["llm.call"]
    model: Name | None = None
    provider: Name | None = None
    input_tokens: Count
    output_tokens: Count
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    reasoning_tokens: Count = 0
    duration_ms: Count
    cost_usd: Annotated[Decimal, Field(ge=0, le=10**9, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _parts_within_wholes(self) -> LlmCall:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens exceed input_tokens "
                "(input_tokens is the whole prompt, cached tokens included)"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens (they are part of it)")
        return self


class ToolCall(_Event):
    type: Literal["tool.call"]
    tool_name: Name
    duration_ms: Count


class AgentTriggered(_Event):
    type: Literal["agent.triggered"]
    agent_name: Name


class StepCompleted(_Event):
    type: Literal["step.completed"]
    latency_ms: Count


class StreamFinished(_Event):
    type: Literal["stream.finished"]
    status: Literal["completed", "error", "failed", "aborted", "blocked"]
    error_message: Annotated[str, Field(max_length=10_000)] | None = None
    total_execution_ms: Count | None = None


Event = StreamStarted | LlmCall | ToolCall | AgentTriggered | StepCompleted | StreamFinished
# Each type validated by its own model, chosen by `type` (checked first): a third cheaper
# than the discriminated union, which looked the tag up again for every event.
EVENT_MODELS: dict[str, type[Event]] = {
    get_args(model.model_fields["type"].annotation)[0]: model
    for model in (StreamStarted, LlmCall, ToolCall, AgentTriggered, StepCompleted, StreamFinished)
}


_VALIDATE = {
    kind: model.__pydantic_validator__.validate_python for kind, model in EVENT_MODELS.items()
}


@dataclass(frozen=True)
class Rejection:
    index: int
    id: str | None
    code: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "code": self.code, "message": self.message}


def _describe(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors:
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] in ("greater_than_equal", "greater_than") and err.get("ctx", {}).get(
            "ge", err.get("ctx", {}).get("gt")
        ) in (0, Decimal(0)):
            return "negative_count", f"{field} must not be negative"
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"])
    where = f"{field}: " if field else ""
    return "invalid_event", f"{where}{first['msg']}"


def parse_event(index: int, raw: Any, *, nul_free: bool = False) -> Event | Rejection:
    """Validate one raw event of a batch. `nul_free` says the caller knows no string in it
    holds a NUL character (a JSON body without the escape `\\u0000` cannot hold one), so
    its fields need not be searched one by one (a tenth of ingestion's time)."""
    if not isinstance(raw, dict):
        return Rejection(index, None, "invalid_event", "an event must be a JSON object")
    raw_id = raw.get("id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        return Rejection(
            index,
            event_id,
            "unknown_type",
            f"type {kind!r} is not one of {', '.join(EVENT_TYPES)}",
        )
    if not nul_free:
        for name, value in raw.items():
            # PostgreSQL text cannot hold NUL; refuse it here for both stores alike.
            if isinstance(value, str) and "\x00" in value:
                return Rejection(
                    index, event_id, "invalid_event", f"{name} contains a NUL character"
                )
    try:
        # The model's validator itself: `model_validate` adds a Python call and its checks.
        return _VALIDATE[kind](raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        code, message = _describe(exc)
        return Rejection(index, event_id, code, message)
