"""How one accepted event changes its stream's row.

Every rule commutes, so the row is the same whatever order and batch split the events came
in: counts and durations add; breakdowns merge by key; the tool history is kept sorted by
(start, event id); the start is the earliest `stream.started` by (time, id) and the finish the
latest `stream.finished` by (time, id), a real finish always beating the sweeper's verdict.
"""

from __future__ import annotations

import bisect
from decimal import Decimal

from taskmeter.ingest.schemas import (
    AgentTriggered,
    Event,
    LlmCall,
    StepCompleted,
    StreamFinished,
    StreamStarted,
    ToolCall,
)
from taskmeter.store.tables import AnyStream
from taskmeter.timeutil import to_unix_ms
from taskmeter.usage.figures import byok_charge_nano, stream_model

__all__ = ["apply_event", "refresh_derived"]


def apply_event(stream: AnyStream, event: Event, cost_nano: int | None) -> None:
    if stream.first_event_at is None or event.time < stream.first_event_at:
        stream.first_event_at = event.time
    if stream.last_event_at is None or event.time > stream.last_event_at:
        stream.last_event_at = event.time

    if isinstance(event, LlmCall):
        stream.llm_calls += 1
        stream.llm_time_ms += event.duration_ms
        stream.input_tokens += event.input_tokens
        stream.output_tokens += event.output_tokens
        stream.cache_read_tokens += event.cache_read_tokens
        stream.cache_write_tokens += event.cache_write_tokens
        stream.reasoning_tokens += event.reasoning_tokens
        if event.model:
            stream.model_calls[event.model] = stream.model_calls.get(event.model, 0) + 1
        if cost_nano is None:
            stream.unpriced_calls += 1
        else:
            stream.base_nano += cost_nano
    elif isinstance(event, ToolCall):
        stream.tool_calls += 1
        stream.tool_time_ms += event.duration_ms
        entry = stream.tool_breakdown.setdefault(
            event.tool_name, {"calls": 0, "total_duration_ms": 0}
        )
        entry["calls"] += 1
        entry["total_duration_ms"] += event.duration_ms
        bisect.insort(
            stream.tool_history,
            [to_unix_ms(event.time), event.id, event.tool_name, event.duration_ms],
        )
    elif isinstance(event, AgentTriggered):
        stream.agent_triggers += 1
        stream.agent_breakdown[event.agent_name] = (
            stream.agent_breakdown.get(event.agent_name, 0) + 1
        )
    elif isinstance(event, StepCompleted):
        stream.step_count += 1
        stream.step_latency_ms += event.latency_ms
    elif isinstance(event, StreamStarted):
        current = (stream.created_at, stream.started_event_id or "")
        if not stream.started or (event.time, event.id) < current:
            stream.started = True
            stream.created_at = event.time
            stream.started_event_id = event.id
            stream.declared_model = event.model
            stream.task_title = event.task_title
            stream.is_byok = event.is_byok
    elif isinstance(event, StreamFinished):
        current = (stream.finished_at, stream.finish_event_id or "")
        if stream.status is None or stream.swept or (event.time, event.id) > current:
            stream.status = event.status
            stream.error_message = event.error_message
            stream.finished_at = event.time
            stream.finish_event_id = event.id
            stream.stated_execution_ms = event.total_execution_ms
            stream.swept = False


def refresh_derived(stream: AnyStream, default_rate: Decimal) -> None:
    """Fields derived from the rest: the model, and what the platform charges (the base
    amount, or for BYOK the base × neo_cost_rate)."""
    stream.model = stream_model(stream)
    if stream.is_byok:
        rate = stream.neo_cost_rate if stream.neo_cost_rate is not None else default_rate
        stream.neo_credits_nano = byok_charge_nano(stream.base_nano, rate)
    else:
        stream.neo_credits_nano = stream.base_nano
