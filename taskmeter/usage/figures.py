"""A stream's or a task's numbers (SEMANTICS.md), and their `TaskUsage` JSON form.

`stream_figures(stream)` reads a projected stream row; `task_figures(streams)` aggregates
a task's finished streams (sums, merged breakdowns, history re-indexed in time order, latency
weighted by steps, the latest stream's status/model/title); `to_task_usage` renders either.
Money stays integer nano-credits until this last step.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from taskmeter import jsonio
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.tables import AnyStream
from taskmeter.timeutil import iso_z

__all__ = [
    "SUMMED",
    "byok_charge_nano",
    "execution_ms",
    "render_task_usage",
    "rounded_mean",
    "stream_execution_ms",
    "stream_figures",
    "stream_model",
    "task_figures",
    "task_row_values",
    "to_task_usage",
    "with_email",
]

SUMMED = (
    "step_count",
    "step_latency_ms",
    "tool_calls",
    "tool_time_ms",
    "agent_triggers",
    "llm_calls",
    "llm_time_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_execution_ms",
    "base_nano",
    "neo_credits_nano",
    "unpriced_calls",
)
UNKNOWN_MODEL = "unknown"


def rounded_mean(total: int, count: int) -> int | None:
    """total / count rounded half up, or None for no items (never a made-up 0)."""
    if count == 0:
        return None
    return (2 * total + count) // (2 * count)


def byok_charge_nano(base_nano: int, rate: Decimal) -> int:
    return int((base_nano * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def stream_model(stream: AnyStream) -> str:
    if stream.declared_model:
        return stream.declared_model
    if stream.model_calls:
        # Most calls wins; ties go to the alphabetically first, so the answer is stable.
        return min(stream.model_calls.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return UNKNOWN_MODEL


def _ms_between(start: datetime, end: datetime) -> int:
    return max(0, round((end - start).total_seconds() * 1000))


def execution_ms(stated: int | None, created_at: datetime, finished_at: datetime) -> int:
    """The stated execution time, else finish − start (for a swept stream, its last event)."""
    return stated if stated is not None else _ms_between(created_at, finished_at)


def stream_execution_ms(stream: AnyStream) -> int:
    """`execution_ms` of a visible (started, finished) stream."""
    assert stream.created_at is not None and stream.finished_at is not None
    return execution_ms(stream.stated_execution_ms, stream.created_at, stream.finished_at)


def stream_figures(stream: AnyStream) -> dict[str, Any]:
    """The figures of one visible (started, finished) stream."""
    assert stream.created_at is not None and stream.finished_at is not None
    execution = stream_execution_ms(stream)
    return {
        "task_id": stream.task_id,
        "stream_id": str(stream.stream_id),
        "owner_user_id": stream.owner_user_id,
        "created_at": stream.created_at,
        "finished_at": stream.finished_at,
        "status": stream.status,
        "error_message": stream.error_message,
        "model": stream_model(stream),
        "task_title": stream.task_title,
        "is_byok": stream.is_byok,
        "step_count": stream.step_count,
        "step_latency_ms": stream.step_latency_ms,
        "tool_calls": stream.tool_calls,
        "tool_time_ms": stream.tool_time_ms,
        # Sorted: stored key order follows arrival order on SQLite, and must not show.
        "tool_breakdown": dict(sorted(stream.tool_breakdown.items())),
        "tool_history": stream.tool_history,
        "agent_triggers": stream.agent_triggers,
        "agent_breakdown": dict(sorted(stream.agent_breakdown.items())),
        "llm_calls": stream.llm_calls,
        "llm_time_ms": stream.llm_time_ms,
        "input_tokens": stream.input_tokens,
        "output_tokens": stream.output_tokens,
        "cache_read_tokens": stream.cache_read_tokens,
        "cache_write_tokens": stream.cache_write_tokens,
        "reasoning_tokens": stream.reasoning_tokens,
        "total_execution_ms": execution,
        "base_nano": stream.base_nano,
        "neo_credits_nano": stream.neo_credits_nano,
        "llm_cost_nano": stream.base_nano if stream.is_byok else None,
        "neo_cost_nano": stream.neo_credits_nano if stream.is_byok else None,
        "unpriced_calls": stream.unpriced_calls,
        "stream_count": 1,
    }


def _sum_optional(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def task_figures(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the figures of a task's streams (all in one scope)."""
    assert streams, "a task has at least one stream"
    latest = max(streams, key=lambda s: (s["created_at"], s["stream_id"]))
    tools: dict[str, dict[str, int]] = {}
    agents: dict[str, int] = {}
    history: list[Any] = []
    for s in streams:
        for name, entry in s["tool_breakdown"].items():
            merged = tools.setdefault(name, {"calls": 0, "total_duration_ms": 0})
            merged["calls"] += entry["calls"]
            merged["total_duration_ms"] += entry["total_duration_ms"]
        for name, count in s["agent_breakdown"].items():
            agents[name] = agents.get(name, 0) + count
        history.extend(s["tool_history"])
    figures: dict[str, Any] = {key: sum(s[key] for s in streams) for key in SUMMED}
    figures.update(
        task_id=latest["task_id"],
        owner_user_id=latest["owner_user_id"],
        created_at=min(s["created_at"] for s in streams),
        finished_at=max(s["finished_at"] for s in streams),
        status=latest["status"],
        error_message=latest["error_message"],
        model=latest["model"],
        task_title=latest["task_title"],
        is_byok=any(s["is_byok"] for s in streams),
        tool_breakdown=dict(sorted(tools.items())),
        agent_breakdown=dict(sorted(agents.items())),
        tool_history=sorted(history),
        llm_cost_nano=_sum_optional([s["llm_cost_nano"] for s in streams]),
        neo_cost_nano=_sum_optional([s["neo_cost_nano"] for s in streams]),
        stream_count=len(streams),
    )
    return figures


TASK_COLUMNS = (
    "owner_user_id", "created_at", "finished_at", "status", "error_message", "model",
    "task_title", "is_byok", "stream_count", "base_nano",
)  # fmt: skip


def task_row_values(figures: dict[str, Any]) -> dict[str, Any]:
    """A task row's columns (besides its key) from the task's figures."""
    return {**{name: figures[name] for name in TASK_COLUMNS}, "usage": render_task_usage(figures)}


def render_task_usage(figures: dict[str, Any]) -> str:
    """The task's `TaskUsage` JSON as the API serves it, but for the team admin's `email`.

    Rendered once, when the task row is written, and served as stored: decoding a stored
    form, converting it and encoding the answer were half of a task page's time (a task's
    tool-call history runs to hundreds of entries; bench/RESULTS.md).
    """
    return jsonio.dumps(to_task_usage(figures, as_task=True))


def with_email(usage: str, email: str | None) -> str:
    """A rendered `TaskUsage` with the owner's email, as team admins see it."""
    if email is None:
        return usage
    return '{"email":' + jsonio.dumps(email) + "," + usage[1:]


def to_task_usage(
    figures: dict[str, Any], *, as_task: bool, email: str | None = None
) -> dict[str, Any]:
    """The seeds' `TaskUsage` (plus the token extension fields): a stream row, or a task row
    (no `stream_id`). `email` is given only to team admins."""
    row: dict[str, Any] = {"task_id": figures["task_id"]}
    if not as_task:
        row["stream_id"] = figures["stream_id"]
    if email is not None:
        row["email"] = email
    row.update(
        task_title=figures["task_title"],
        model=figures["model"],
        status=figures["status"],
        error_message=figures["error_message"],
        is_byok=figures["is_byok"],
        created_at=iso_z(figures["created_at"]),
        finished_at=iso_z(figures["finished_at"]),
        step_count=figures["step_count"],
        avg_step_latency_ms=rounded_mean(figures["step_latency_ms"], figures["step_count"]),
        tool_calls=figures["tool_calls"],
        tool_time_ms=figures["tool_time_ms"],
        tool_breakdown=figures["tool_breakdown"],
        tool_call_history=[
            {"index": i, "tool_name": name, "timestamp": ts, "duration_ms": duration}
            for i, (ts, _event_id, name, duration) in enumerate(figures["tool_history"])
        ],
        agent_triggers=figures["agent_triggers"],
        agent_breakdown=figures["agent_breakdown"],
        llm_time_ms=figures["llm_time_ms"],
        total_execution_ms=figures["total_execution_ms"],
        neo_credits=credits_from_nano(figures["neo_credits_nano"]),
        llm_cost=None
        if figures["llm_cost_nano"] is None
        else credits_from_nano(figures["llm_cost_nano"]),
        neo_cost=None
        if figures["neo_cost_nano"] is None
        else credits_from_nano(figures["neo_cost_nano"]),
        input_tokens=figures["input_tokens"],
        output_tokens=figures["output_tokens"],
        cache_read_tokens=figures["cache_read_tokens"],
        cache_write_tokens=figures["cache_write_tokens"],
        total_tokens=figures["input_tokens"] + figures["output_tokens"],
        llm_calls=figures["llm_calls"],
        stream_count=figures["stream_count"],
    )
    return row
