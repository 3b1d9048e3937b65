"""Typed clients for the Usage API: `UsageClient` (sync) and `AsyncUsageClient`.

    from taskmeter.client import UsageClient

    with UsageClient("http://127.0.0.1:8080", api_key="neo_sk_…") as usage:
        for task in usage.iter_tasks(sort="cost", since=...):   # pages fetched as needed
            print(task.task_id, task.neo_credits)
        print(usage.summary(group_by="day", tz="Europe/Berlin").total_neo_credits)

Every error answer raises `TaskmeterError`, carrying the ErrorResponse `code` to branch on
(`unauthorized`, `forbidden`, `not_exists`, `invalid_request`, …). Both clients share one
implementation of requests and responses (`_Calls`); they differ only in how bytes move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

__all__ = [
    "AsyncUsageClient",
    "TaskUsage",
    "TaskUsagePage",
    "TaskmeterError",
    "ToolBreakdownEntry",
    "ToolCallHistoryEntry",
    "UsageClient",
    "UsageSummary",
]

DEFAULT_URL = "http://127.0.0.1:8080"
Sort = Literal["created_at", "cost"]
Status = Literal["completed", "error", "failed", "aborted", "blocked"]
GroupBy = Literal["day", "week", "month"]


class _Model(BaseModel):
    # Servers may add fields; clients keep working and keep them.
    model_config = ConfigDict(extra="allow")


class ToolBreakdownEntry(_Model):
    calls: int = 0
    total_duration_ms: int = 0


class ToolCallHistoryEntry(_Model):
    index: int
    tool_name: str
    timestamp: int
    duration_ms: int


class TaskUsage(_Model):
    """One row: a stream (`stream_id` set) or a task aggregated over its streams."""

    task_id: str
    model: str
    status: Status
    step_count: int
    tool_calls: int
    agent_triggers: int
    created_at: datetime
    stream_id: str | None = None
    email: str | None = None
    task_title: str | None = None
    error_message: str | None = None
    is_byok: bool = False
    finished_at: datetime | None = None
    avg_step_latency_ms: int | None = None
    tool_time_ms: int | None = None
    tool_breakdown: dict[str, ToolBreakdownEntry] | None = None
    tool_call_history: list[ToolCallHistoryEntry] | None = None
    agent_breakdown: dict[str, int] | None = None
    llm_time_ms: int | None = None
    total_execution_ms: int | None = None
    neo_credits: float | None = None
    llm_cost: float | None = None
    neo_cost: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int = 0
    llm_calls: int = 0
    stream_count: int = 1


class TaskUsagePage(_Model):
    data: list[TaskUsage]
    total: int
    has_more: bool


class UsageSummary(_Model):
    total_tasks: int
    total_neo_credits: float
    by_status: dict[str, int]
    by_model: dict[str, dict[str, Any]]
    by_email: list[dict[str, Any]] | None = None
    by_period: list[dict[str, Any]] | None = None
    byok: dict[str, Any] | None = None
    total_steps: int = 0
    total_tool_calls: int = 0
    total_agent_triggers: int = 0
    total_execution_ms: int = 0
    total_issued_neo_credits: float = 0.0
    total_available_neo_credits: float = 0.0
    total_neo_credits_post_reset: float = 0.0
    last_credit_reset: datetime | None = None
    neo_credits_expires_at: datetime | None = None
    neo_credits_is_expired: bool = False


class TaskmeterError(Exception):
    """An error answer from taskmeter (or no answer at all: `status` 0, `code` "unreachable")."""

    def __init__(self, status: int, code: str, message: str, error_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.error_id = error_id


M = TypeVar("M", bound=BaseModel)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class _Calls:
    """Requests and responses, shared by both clients."""

    @staticmethod
    def params(filters: dict[str, Any]) -> dict[str, str]:
        # `since`/`until` spell the API's `from`/`to`, which Python cannot take as keywords.
        renamed = {"since": "from", "until": "to"}
        return {renamed.get(k, k): _param(v) for k, v in filters.items() if v is not None}

    @staticmethod
    def parse(response: httpx.Response, model: type[M]) -> M:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise TaskmeterError(
                response.status_code,
                str(body.get("code") or "http_error"),
                str(body.get("message") or body.get("error") or response.reason_phrase),
                body.get("error_id"),
            )
        return model.model_validate(response.json())

    @staticmethod
    def unreachable(exc: httpx.TransportError) -> TaskmeterError:
        return TaskmeterError(0, "unreachable", f"taskmeter did not answer: {exc}")


def _headers(api_key: str | None, token: str | None) -> dict[str, str]:
    if api_key:
        return {"X-Api-Key": api_key}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


class UsageClient:
    """The Usage API, synchronously. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key, token),
            timeout=timeout,
            transport=transport,
        )

    def _get(self, path: str, model: type[M], filters: dict[str, Any]) -> M:
        try:
            response = self._http.get(path, params=_Calls.params(filters))
        except httpx.TransportError as exc:
            raise _Calls.unreachable(exc) from exc
        return _Calls.parse(response, model)

    def streams(self, **filters: Any) -> TaskUsagePage:
        """One page of stream rows; filters as the API names them (`since`/`until` for
        `from`/`to`)."""
        return self._get("/api/v1/usage/streams", TaskUsagePage, filters)

    def tasks(self, **filters: Any) -> TaskUsagePage:
        """One page of task rows."""
        return self._get("/api/v1/usage/tasks", TaskUsagePage, filters)

    def task(self, task_id: str) -> TaskUsage:
        return self._get(f"/api/v1/usage/tasks/{quote(task_id, safe='')}", TaskUsage, {})

    def summary(self, **filters: Any) -> UsageSummary:
        return self._get("/api/v1/usage/summary", UsageSummary, filters)

    def _iterate(self, path: str, filters: dict[str, Any]) -> Iterator[TaskUsage]:
        offset = int(filters.pop("offset", 0))
        filters.setdefault("limit", 200)
        while True:
            page = self._get(path, TaskUsagePage, {**filters, "offset": offset})
            yield from page.data
            offset += len(page.data)
            if not page.has_more or not page.data:
                return

    def iter_streams(self, **filters: Any) -> Iterator[TaskUsage]:
        """Every matching stream row, fetching pages as the loop needs them."""
        return self._iterate("/api/v1/usage/streams", filters)

    def iter_tasks(self, **filters: Any) -> Iterator[TaskUsage]:
        """Every matching task row, fetching pages as the loop needs them."""
        return self._iterate("/api/v1/usage/tasks", filters)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UsageClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncUsageClient:
    """The Usage API, for asyncio. Use as an async context manager, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key, token),
            timeout=timeout,
            transport=transport,
        )

    async def _get(self, path: str, model: type[M], filters: dict[str, Any]) -> M:
        try:
            response = await self._http.get(path, params=_Calls.params(filters))
        except httpx.TransportError as exc:
            raise _Calls.unreachable(exc) from exc
        return _Calls.parse(response, model)

    async def streams(self, **filters: Any) -> TaskUsagePage:
        return await self._get("/api/v1/usage/streams", TaskUsagePage, filters)

    async def tasks(self, **filters: Any) -> TaskUsagePage:
        return await self._get("/api/v1/usage/tasks", TaskUsagePage, filters)

    async def task(self, task_id: str) -> TaskUsage:
        return await self._get(f"/api/v1/usage/tasks/{quote(task_id, safe='')}", TaskUsage, {})

    async def summary(self, **filters: Any) -> UsageSummary:
        return await self._get("/api/v1/usage/summary", UsageSummary, filters)

    async def _iterate(self, path: str, filters: dict[str, Any]) -> AsyncIterator[TaskUsage]:
        offset = int(filters.pop("offset", 0))
        filters.setdefault("limit", 200)
        while True:
            page = await self._get(path, TaskUsagePage, {**filters, "offset": offset})
            for row in page.data:
                yield row
            offset += len(page.data)
            if not page.has_more or not page.data:
                return

    def iter_streams(self, **filters: Any) -> AsyncIterator[TaskUsage]:
        return self._iterate("/api/v1/usage/streams", filters)

    def iter_tasks(self, **filters: Any) -> AsyncIterator[TaskUsage]:
        return self._iterate("/api/v1/usage/tasks", filters)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncUsageClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
