"""The export's column sets, one a level: name, type, unit and meaning (docs/exports.md).

A record is a tuple in its level's column order. Types, and how each format writes them:

    string    text                      CSV as is, JSONL string, Parquet string
    integer   whole number              decimal digits, JSON number, int64
    boolean   true / false              `true`/`false`, JSON boolean, bool
    time      UTC instant (datetime)    ISO 8601 with `Z`, same, timestamp[us, UTC]
    credits   nano-credits (int)        exact decimal string, 9 places; Parquet decimal128(38, 9)
    decimal   exact Decimal (FOCUS)     plain decimal string (no exponent)
    json      a JSON object (FOCUS)     its compact JSON text

A null is an empty CSV field, JSON `null`, a Parquet null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CALLS", "LEVELS", "STREAMS", "TASKS", "Column", "Kind"]

Kind = Literal["string", "integer", "boolean", "time", "credits", "decimal", "json"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool
    unit: str
    description: str


def _c(name: str, kind: Kind, description: str, *, unit: str = "", null: bool = False) -> Column:
    return Column(name, kind, null, unit, description)


_WHO = [
    _c("task_id", "string", "The task's id"),
    _c("task_title", "string", "The task's title", null=True),
    _c("email", "string", "Owner's email; team admins only (null for a solo user)", null=True),
    _c("project", "string", "The project's name", null=True),
]
_FIGURES = [
    _c("model", "string", "LLM model"),
    _c("status", "string", "completed, error, failed, aborted or blocked"),
    _c("error_message", "string", "Error message of a stream that did not complete", null=True),
    _c("is_byok", "boolean", "Bring Your Own Key usage"),
    _c("created_at", "time", "Start (a task: its first stream's)"),
    _c("finished_at", "time", "Finish (a task: its last stream's)"),
    _c("total_execution_ms", "integer", "Execution time", unit="ms"),
    _c("step_count", "integer", "Steps", unit="steps"),
    _c("avg_step_latency_ms", "integer", "Mean step latency (null: none)", unit="ms", null=True),
    _c("tool_calls", "integer", "Tool calls", unit="calls"),
    _c("tool_time_ms", "integer", "Tool time", unit="ms"),
    _c("agent_triggers", "integer", "Agent triggers", unit="triggers"),
    _c("llm_calls", "integer", "LLM calls", unit="calls"),
    _c("llm_time_ms", "integer", "LLM time", unit="ms"),
    _c("input_tokens", "integer", "Prompt tokens, cached ones included", unit="tokens"),
    _c("output_tokens", "integer", "Completion tokens, reasoning included", unit="tokens"),
    _c("cache_read_tokens", "integer", "Prompt tokens read from cache", unit="tokens"),
    _c("cache_write_tokens", "integer", "Prompt tokens written to cache", unit="tokens"),
    _c("total_tokens", "integer", "input_tokens + output_tokens", unit="tokens"),
    _c("neo_credits", "credits", "Credits charged", unit="credits"),
    _c("llm_cost", "credits", "BYOK: the base amount (null otherwise)", unit="credits", null=True),
    _c(
        "neo_cost",
        "credits",
        "BYOK: base × neo_cost_rate, else null",
        unit="credits",
        null=True,
    ),
]

STREAMS: tuple[Column, ...] = (_c("stream_id", "string", "The stream's UUID"), *_WHO, *_FIGURES)
TASKS: tuple[Column, ...] = (
    *_WHO,
    *_FIGURES,
    _c("stream_count", "integer", "Streams aggregated", unit="streams"),
)
CALLS: tuple[Column, ...] = (
    _c("stream_id", "string", "The call's stream"),
    _c("event_id", "string", "The call's event id (unique within its stream)"),
    *_WHO,
    _c("time", "time", "When the call was recorded"),
    _c("model", "string", "Model the call named (null: it named none)", null=True),
    _c("provider", "string", "Provider the call named", null=True),
    _c("is_byok", "boolean", "The stream is BYOK"),
    _c("input_tokens", "integer", "Prompt tokens, cached ones included", unit="tokens"),
    _c("output_tokens", "integer", "Completion tokens, reasoning included", unit="tokens"),
    _c("cache_read_tokens", "integer", "Prompt tokens read from cache", unit="tokens"),
    _c("cache_write_tokens", "integer", "Prompt tokens written to cache", unit="tokens"),
    _c("reasoning_tokens", "integer", "Reasoning tokens (part of output_tokens)", unit="tokens"),
    _c("duration_ms", "integer", "Call duration", unit="ms"),
    _c("priced", "boolean", "A price was found (an unpriced call costs 0)"),
    _c("credits", "credits", "The call's base amount: USD cost / credit price", unit="credits"),
)
LEVELS: dict[str, tuple[Column, ...]] = {"streams": STREAMS, "tasks": TASKS, "calls": CALLS}
