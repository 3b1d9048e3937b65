"""The Usage tag's OpenAPI: schemas and parameters as the seeds publish them, plus our additions.

The seeds (OpenAPI 3.0 style) mark nullable fields with `nullable: true`; OpenAPI 3.1 says
`type: [T, "null"]`, which is what these are. `tests/test_seed_conformance.py` checks them
against the seed pages: same names, types, formats, enums, required lists, and only additions.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

__all__ = ["COMPONENTS", "PARAMETERS", "SUMMARY_SCHEMA", "error_responses", "ref"]

STATUS_ENUM = ["completed", "error", "failed", "aborted", "blocked"]
# Every zone name this server can cut periods in, so clients (and fuzzers) know the valid set.
TIME_ZONES = sorted(zoneinfo.available_timezones() | {"UTC"})


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


TASK_USAGE: dict[str, Any] = {
    "type": "object",
    "required": [
        "task_id",
        "model",
        "status",
        "step_count",
        "tool_calls",
        "agent_triggers",
        "created_at",
    ],
    "properties": {
        "agent_breakdown": _nullable(
            "object",
            additionalProperties={"type": "integer"},
            description="Agent trigger counts by agent name",
        ),
        "agent_triggers": {"type": "integer", "description": "Total agent triggers"},
        "avg_step_latency_ms": _nullable(
            "integer", description="Average step latency in milliseconds"
        ),
        "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "When the task was created",
        },
        "email": {
            "type": "string",
            "description": "Email of the user who created the task (only visible to team admins)",
        },
        "error_message": _nullable("string", description="Error message if status is error"),
        "is_byok": {
            "type": "boolean",
            "description": "Whether the task used a Bring Your Own Key (BYOK) provider",
        },
        "llm_cost": _nullable(
            "number",
            format="float",
            description=(
                "LLM cost for BYOK usage. Returns the same base amount previously exposed as "
                "neo_credits."
            ),
        ),
        "llm_time_ms": _nullable("integer", description="Total LLM inference time in milliseconds"),
        "model": {"type": "string", "description": "LLM model used"},
        "neo_cost": _nullable(
            "number",
            format="float",
            description=("Neo platform cost for BYOK usage after applying neo_cost_rate"),
        ),
        "neo_credits": _nullable(
            "number", format="float", description="Neo credits used (1 credit = $10 USD equivalent)"
        ),
        "status": {"type": "string", "enum": STATUS_ENUM, "description": "Execution status"},
        "step_count": {"type": "integer", "description": "Number of steps executed"},
        "stream_count": {
            "type": "integer",
            "description": "Number of streams aggregated (1 if single stream)",
        },
        "stream_id": {
            "type": "string",
            "format": "uuid",
            "description": (
                "Stream ID (only present for individual streams, omitted for grouped tasks)"
            ),
        },
        "task_id": {"type": "string", "description": "Task ID"},
        "task_title": _nullable("string", description="Task title when available"),
        "tool_breakdown": _nullable(
            "object",
            additionalProperties=ref("ToolBreakdownEntry"),
            description="Tool call breakdown with calls and duration",
        ),
        "tool_call_history": _nullable(
            "array", items=ref("ToolCallHistoryEntry"), description="Detailed tool call history"
        ),
        "tool_calls": {"type": "integer", "description": "Total tool calls made"},
        "tool_time_ms": _nullable(
            "integer", description="Total tool execution time in milliseconds"
        ),
        "total_execution_ms": _nullable(
            "integer", description="Total execution time in milliseconds"
        ),
        # Extensions (API.md): the token counts the seeds' prose promises, and the finish time.
        "input_tokens": {
            "type": "integer",
            "description": "Prompt tokens, cached ones included (extension)",
        },
        "output_tokens": {
            "type": "integer",
            "description": "Completion tokens, reasoning included (extension)",
        },
        "cache_read_tokens": {
            "type": "integer",
            "description": "Prompt tokens read from cache (extension)",
        },
        "cache_write_tokens": {
            "type": "integer",
            "description": "Prompt tokens written to cache (extension)",
        },
        "total_tokens": {
            "type": "integer",
            "description": "input_tokens + output_tokens (extension)",
        },
        "llm_calls": {"type": "integer", "description": "Number of model calls (extension)"},
        "finished_at": {
            "type": "string",
            "format": "date-time",
            "description": "When the (latest) stream finished (extension)",
        },
    },
}

COMPONENTS: dict[str, Any] = {
    "TaskUsage": TASK_USAGE,
    "TaskUsageListResponse": {
        "type": "object",
        "required": ["data", "total", "has_more"],
        "properties": {
            "data": {"type": "array", "items": ref("TaskUsage")},
            "has_more": {"type": "boolean", "description": "Whether there are more records"},
            "total": {"type": "integer", "description": "Total number of records"},
        },
    },
    "ToolBreakdownEntry": {
        "type": "object",
        "properties": {
            "calls": {"type": "integer", "description": "Number of calls to this tool"},
            "total_duration_ms": {
                "type": "integer",
                "description": "Total duration of all calls in milliseconds",
            },
        },
    },
    "ToolCallHistoryEntry": {
        "type": "object",
        "properties": {
            "duration_ms": {
                "type": "integer",
                "description": "Duration of the call in milliseconds",
            },
            "index": {"type": "integer", "description": "Sequential index of the tool call"},
            "timestamp": {
                "type": "integer",
                "format": "int64",
                "description": "Unix timestamp in milliseconds when the call was made",
            },
            "tool_name": {"type": "string", "description": "Name of the tool called"},
        },
    },
}

_MONEY = {"type": "number", "format": "float"}
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["total_tasks", "total_neo_credits", "by_status", "by_model"],
    "properties": {
        "total_tasks": {"type": "integer"},
        "total_neo_credits": _MONEY,
        "by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_model": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "tasks": {"type": "integer"},
                    "streams": {"type": "integer"},
                    "neo_credits": _MONEY,
                    "llm_cost": _nullable("number", format="float"),
                    "tool_calls": {"type": "integer"},
                    "input_tokens": {"type": "integer"},
                    "output_tokens": {"type": "integer"},
                },
            },
        },
        "by_project": {
            "type": "array",
            "description": "Extension: finished streams' credits, streams and tasks per project",
            "items": {
                "type": "object",
                "required": ["project", "neo_credits", "streams", "tasks"],
                "properties": {
                    "project": {"type": "string"},
                    "neo_credits": _MONEY,
                    "streams": {"type": "integer"},
                    "tasks": {"type": "integer"},
                },
            },
        },
        "caps": {
            "type": "array",
            "description": "Extension: the caps in scope, with their current period",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["user", "team", "member", "project"]},
                    "period": {"type": "string", "enum": ["day", "week", "month", "total"]},
                    "tz": {"type": "string"},
                    "limit_credits": _MONEY,
                    "used_credits": _MONEY,
                    "reserved_credits": _MONEY,
                    "remaining_credits": _MONEY,
                    "thresholds": {"type": "array", "items": {"type": "integer"}},
                    "resets_at": _nullable("string", format="date-time"),
                },
            },
        },
        "by_email": {
            "type": "array",
            "description": "Team admins only",
            "items": {
                "type": "object",
                "required": ["email", "neo_credits", "tasks"],
                "properties": {
                    "email": {"type": "string"},
                    "neo_credits": _MONEY,
                    "tasks": {"type": "integer"},
                },
            },
        },
        "by_period": {
            "type": "array",
            "description": "Only with group_by",
            "items": {
                "type": "object",
                "required": ["date", "neo_credits", "tasks"],
                "properties": {
                    "date": {"type": "string", "format": "date"},
                    "neo_credits": _MONEY,
                    "tasks": {"type": "integer"},
                },
            },
        },
        "byok": {
            "type": "object",
            "properties": {
                "total_llm_cost": _MONEY,
                "total_neo_cost": _MONEY,
                "total_streams": {"type": "integer"},
                "total_tasks": {"type": "integer"},
            },
        },
        "total_steps": {"type": "integer"},
        "total_tool_calls": {"type": "integer"},
        "total_agent_triggers": {"type": "integer"},
        "total_execution_ms": {"type": "integer"},
        "total_issued_neo_credits": _MONEY,
        "total_available_neo_credits": _MONEY,
        "total_neo_credits_post_reset": _MONEY,
        "last_credit_reset": _nullable("string", format="date-time"),
        "neo_credits_expires_at": _nullable("string", format="date-time"),
        "neo_credits_is_expired": {"type": "boolean"},
    },
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "in": "query",
        "name": name,
        "required": False,
        "schema": schema,
    }


_FROM = _query("from", "Filter from datetime (ISO 8601)", {"format": "date-time", "type": "string"})
_TO = _query("to", "Filter to datetime (ISO 8601)", {"format": "date-time", "type": "string"})
_PROJECT = _query(
    "project",
    "Filter by project name (extension; a project of the caller's team or own usage)",
    {"type": "string"},
)

_COMMON_LIST = [
    _query("task_id", "Filter by task ID", {"type": "string"}),
    _query("stream_id", "Filter by specific stream ID", {"format": "uuid", "type": "string"}),
    _query("status", "Filter by status", {"enum": STATUS_ENUM, "type": "string"}),
    _query("model", "Filter by model", {"type": "string"}),
    _FROM,
    _TO,
    _query(
        "limit",
        "Number of results (1-200, default 50)",
        {"default": 50, "maximum": 200, "minimum": 1, "type": "integer"},
    ),
    _query(
        "offset", "Pagination offset (default 0)", {"default": 0, "minimum": 0, "type": "integer"}
    ),
    _query(
        "sort",
        "Sort field",
        {"default": "created_at", "enum": ["created_at", "cost"], "type": "string"},
    ),
    _query(
        "email",
        "Filter by team member email (exact match, only for team admins)",
        {"type": "string"},
    ),
    _query(
        "is_byok",
        "Filter by BYOK status (true = only BYOK streams, false = only non-BYOK streams)",
        {"type": "boolean"},
    ),
    _PROJECT,
]

PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "streams": _COMMON_LIST,
    "tasks": [p for p in _COMMON_LIST if p["name"] != "stream_id"]
    + [
        _query(
            "search",
            "Case-insensitive partial match on task id, task title or (team admins) owner email",
            {"type": "string"},
        ),
    ],
    "task": [
        {
            "description": "The unique task identifier",
            "in": "path",
            "name": "task_id",
            "required": True,
            "schema": {"type": "string"},
        }
    ],
    "summary": [
        _FROM,
        _TO,
        _query(
            "group_by",
            "Group credits and tasks by period",
            {"enum": ["day", "week", "month"], "type": "string"},
        ),
        _query(
            "tz",
            "IANA time zone in which periods are cut (extension; default UTC)",
            {"default": "UTC", "type": "string", "enum": TIME_ZONES},
        ),
        _PROJECT,
    ],
}


def error_responses(*codes: int) -> dict[str, Any]:
    descriptions = {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden - team members/viewers cannot access usage data",
        404: "Task not found",
        429: "Too many failed authentications (Retry-After says when to retry)",
        500: "Internal server error",
    }
    return {
        str(code): {
            "description": descriptions[code],
            "content": {"application/json": {"schema": ref("ErrorResponse")}},
        }
        for code in codes
    }
