"""Builders for ingestion events, as an agent platform would send them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class StreamEvents:
    """The events of one stream; each builder returns the event and remembers it."""

    def __init__(self, task_id: str = "task-1", stream_id: str | None = None) -> None:
        self.task_id = task_id
        self.stream_id = stream_id or str(uuid.uuid4())
        self.events: list[dict[str, Any]] = []
        self._n = 0

    def _event(self, kind: str, seconds: float, **fields: Any) -> dict[str, Any]:
        self._n += 1
        event = {
            "id": fields.pop("id", f"e{self._n}"),
            "type": kind,
            "time": fields.pop("time", at(seconds)),
            "stream_id": self.stream_id,
            "task_id": fields.pop("task_id", self.task_id),
            **fields,
        }
        self.events.append(event)
        return event

    def started(self, seconds: float = 0, **fields: Any) -> dict[str, Any]:
        return self._event("stream.started", seconds, **fields)

    def llm(self, seconds: float, **fields: Any) -> dict[str, Any]:
        fields.setdefault("input_tokens", 1000)
        fields.setdefault("output_tokens", 100)
        fields.setdefault("duration_ms", 800)
        return self._event("llm.call", seconds, **fields)

    def tool(
        self, seconds: float, name: str = "nuclei", duration_ms: int = 1000, **fields: Any
    ) -> dict[str, Any]:
        return self._event("tool.call", seconds, tool_name=name, duration_ms=duration_ms, **fields)

    def agent(self, seconds: float, name: str = "recon", **fields: Any) -> dict[str, Any]:
        return self._event("agent.triggered", seconds, agent_name=name, **fields)

    def step(self, seconds: float, latency_ms: int = 100, **fields: Any) -> dict[str, Any]:
        return self._event("step.completed", seconds, latency_ms=latency_ms, **fields)

    def finished(self, seconds: float, status: str = "completed", **fields: Any) -> dict[str, Any]:
        return self._event("stream.finished", seconds, status=status, **fields)
