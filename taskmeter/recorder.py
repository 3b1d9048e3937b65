"""Record streams from an agent's own code, in three lines.

    from taskmeter.recorder import Recorder

    recorder = Recorder("http://127.0.0.1:8080", api_key="neo_sk_…")
    with recorder.stream(task_id="scan-42", model="gpt-4o") as s:
        s.llm_call(model="gpt-4o", input_tokens=1200, output_tokens=300, duration_ms=900)
        with s.tool_call("nuclei"):          # timed; also usable as a decorator
            run_nuclei()

Events are queued and sent in the background, in batches (by count and by time), each event
with an id fixed when it was recorded: a batch that fails is retried with backoff (honouring
Retry-After) with the same ids, so the server counts it once however often it arrives. A batch
the server refuses as malformed (400/413) or unauthorised (401/403) is logged and dropped, not
reported as sent. `flush(timeout)` waits for the queue to drain; `close()` flushes and stops;
both run at interpreter exit. An exception inside `with recorder.stream(…)` finishes the
stream as `error` with the exception's message, and propagates.

Spend governance: `recorder.stream(…, authorize=True)` asks `POST /api/v1/usage/authorize`
first and raises `SpendingCapReached` or `InsufficientCredits` (both `SpendRefused`, a
`TaskmeterError`) before anything is recorded; a stream whose ingested spend passes a cap's
hard limit is reported to `Recorder(on_over_limit=callback)` and shows `s.over_limit` true.

    TaskmeterError
      └── SpendRefused              402 from authorize
            ├── SpendingCapReached  user_spending_cap_reached, project_spending_cap_reached
            └── InsufficientCredits insufficient_neo_credits
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import httpx

from taskmeter.client import TaskmeterError

__all__ = [
    "InsufficientCredits",
    "Recorder",
    "SpendRefused",
    "SpendingCapReached",
    "StreamRecorder",
]

log = logging.getLogger("taskmeter.recorder")
P = ParamSpec("P")
R = TypeVar("R")
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SpendRefused(TaskmeterError):
    """authorize answered 402: `code` says why, `body` is the whole ErrorResponse."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(402, str(body.get("code")), str(body.get("message")))
        self.body = body


class SpendingCapReached(SpendRefused):
    """A user's, team member's, team's or project's cap is reached (`body["cap"]`)."""


class InsufficientCredits(SpendRefused):
    """The credit account cannot cover the stream (`body["credits"]`)."""


class StreamRecorder:
    """One stream's events; made by `Recorder.stream`."""

    def __init__(
        self, recorder: Recorder, task_id: str, stream_id: str, started: dict[str, Any]
    ) -> None:
        self._recorder = recorder
        self.task_id = task_id
        self.stream_id = stream_id
        self._started = started
        self._finished = False
        self.reservation_id: str | None = None

    @property
    def over_limit(self) -> bool:
        """Whether ingestion reported this stream past a cap's hard limit: time to stop."""
        return self.stream_id in self._recorder.over_limit

    def _emit(self, kind: str, time: str | None = None, **fields: Any) -> None:
        self._recorder._enqueue(
            {
                "id": uuid.uuid4().hex,
                "type": kind,
                "time": time or _now(),
                "stream_id": self.stream_id,
                "task_id": self.task_id,
                **{k: v for k, v in fields.items() if v is not None},
            }
        )

    def __enter__(self) -> StreamRecorder:
        self._emit("stream.started", **self._started)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if not self._finished:
            if exc is not None:
                self.finish("error", error_message=str(exc) or kind.__name__ if kind else None)
            else:
                self.finish("completed")

    def llm_call(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        duration_ms: int,
        model: str | None = None,
        provider: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        cost_usd: str | float | None = None,
    ) -> None:
        """A model call; `input_tokens` is the whole prompt, cached tokens included."""
        self._emit(
            "llm.call",
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
            reasoning_tokens=reasoning_tokens,
            duration_ms=duration_ms,
            cost_usd=None if cost_usd is None else str(cost_usd),
        )

    def tool_call(self, name: str, duration_ms: int | None = None) -> _ToolTimer:
        """Record a tool call now (`duration_ms` given), or time one: use the result as a
        context manager or as a decorator."""
        timer = _ToolTimer(self, name)
        if duration_ms is not None:
            self._emit("tool.call", tool_name=name, duration_ms=duration_ms)
            timer.recorded = True
        return timer

    def agent_triggered(self, name: str) -> None:
        self._emit("agent.triggered", agent_name=name)

    def step(self, latency_ms: int) -> None:
        self._emit("step.completed", latency_ms=latency_ms)

    def finish(
        self,
        status: str = "completed",
        *,
        error_message: str | None = None,
        total_execution_ms: int | None = None,
    ) -> None:
        self._finished = True
        self._emit(
            "stream.finished",
            status=status,
            error_message=error_message,
            total_execution_ms=total_execution_ms,
        )


class _ToolTimer:
    def __init__(self, stream: StreamRecorder, name: str) -> None:
        self.stream = stream
        self.name = name
        self.recorded = False
        self._start = 0.0
        self._started_at = ""

    def __enter__(self) -> _ToolTimer:
        self._start = time.monotonic()
        self._started_at = _now()
        return self

    def __exit__(self, *_: object) -> None:
        if not self.recorded:
            elapsed = round((time.monotonic() - self._start) * 1000)
            self.stream._emit(
                "tool.call", time=self._started_at, tool_name=self.name, duration_ms=elapsed
            )

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            with _ToolTimer(self.stream, self.name):
                return function(*args, **kwargs)

        return timed


class Recorder:
    """Sends recorded events to taskmeter in the background."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
        max_backoff: float = 30.0,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        on_over_limit: Callable[[list[dict[str, str]]], None] | None = None,
    ) -> None:
        self._client_args: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout,
            "transport": transport,
            "headers": {"X-Api-Key": api_key} if api_key else {},
        }
        self.batch_size = min(batch_size, 1000)
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self._pending = 0
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._stop_deadline = float("inf")  # set by close(): how long unsent batches retry
        self.sent = 0
        self.dropped = 0
        self.on_over_limit = on_over_limit
        # Stream ids ingestion reported past a hard limit, and their codes.
        self.over_limit: dict[str, str] = {}
        self._start_worker()
        atexit.register(self.close)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._start_worker)

    def _start_worker(self) -> None:
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="taskmeter-recorder", daemon=True)
        self._worker.start()

    @contextmanager
    def _session(self) -> Iterator[httpx.Client]:
        with httpx.Client(**self._client_args) as client:
            yield client

    def stream(
        self,
        task_id: str,
        *,
        user: str | None = None,
        model: str | None = None,
        title: str | None = None,
        is_byok: bool = False,
        stream_id: str | None = None,
        project: str | None = None,
        authorize: bool = False,
        estimate_credits: float | str | None = None,
    ) -> StreamRecorder:
        """A stream of `task_id`; use it as a context manager. With `authorize`, taskmeter is
        asked first (raising `SpendRefused` if it refuses) and holds `estimate_credits`."""
        stream = StreamRecorder(
            self,
            task_id,
            stream_id or str(uuid.uuid4()),
            {
                "user": user, "model": model, "task_title": title, "is_byok": is_byok,
                "project": project,
            },
        )  # fmt: skip
        if authorize:
            stream.reservation_id = self.authorize(
                user=user, project=project, task_id=task_id, stream_id=stream.stream_id,
                estimate_credits=estimate_credits,
            )["reservation_id"]  # fmt: skip
        return stream

    def authorize(self, **request: Any) -> dict[str, Any]:
        """`POST /api/v1/usage/authorize` now: the answer, or `SpendRefused` on 402."""
        body = {k: v for k, v in request.items() if v is not None}
        with self._session() as client:
            try:
                answer = client.post("/api/v1/usage/authorize", json=body)
            except httpx.TransportError as exc:
                raise TaskmeterError(0, "unreachable", str(exc)) from exc
        document: dict[str, Any] = answer.json() if answer.content else {}
        if answer.status_code == 200:
            return document
        if answer.status_code == 402:
            code = document.get("code")
            if code == "insufficient_neo_credits":
                raise InsufficientCredits(document)
            raise SpendingCapReached(document)
        raise TaskmeterError(
            answer.status_code,
            str(document.get("code", "error")),
            str(document.get("message", answer.text[:300])),
            document.get("error_id"),
        )

    def _enqueue(self, event: dict[str, Any]) -> None:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self.dropped += 1
            log.error("taskmeter recorder queue is full; an event was dropped")

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=max(0.0, wait))
                    if wait > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                if batch or self._stop.is_set():
                    break
                deadline = time.monotonic() + self.flush_interval
        return batch

    def _run(self) -> None:
        with self._session() as client:
            while not (self._stop.is_set() and self._queue.empty()):
                batch = self._take_batch()
                if batch:
                    self._deliver(client, batch)
                    with self._idle:
                        self._pending -= len(batch)
                        self._idle.notify_all()

    def _deliver(self, client: httpx.Client, batch: list[dict[str, Any]]) -> None:
        backoff = 0.25
        while True:
            try:
                answer = client.post("/api/v1/usage/events", json={"events": batch})
            except httpx.TransportError as exc:
                log.warning("taskmeter unreachable (%s); retrying in %.1fs", exc, backoff)
                retry_after = None
            else:
                if answer.status_code in (200, 207):
                    body = answer.json()
                    self.sent += body["accepted"] + body["duplicates"]
                    for rejected in body["rejected"]:
                        log.error(
                            "taskmeter rejected event %s: %s: %s",
                            rejected["id"],
                            rejected["code"],
                            rejected["message"],
                        )
                    if body.get("over_limit"):
                        self._report_over_limit(body["over_limit"])
                    return
                if answer.status_code not in RETRYABLE:
                    self.dropped += len(batch)
                    log.error(
                        "taskmeter refused a batch of %d events (%d): %s; dropped",
                        len(batch),
                        answer.status_code,
                        answer.text[:300],
                    )
                    return
                header = answer.headers.get("retry-after", "")
                retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
            if self._stop.is_set() and self._stop_deadline < time.monotonic():
                self.dropped += len(batch)
                log.error("taskmeter recorder closing: %d unsent events dropped", len(batch))
                return
            time.sleep(min(self.max_backoff, retry_after if retry_after else backoff))
            backoff = min(self.max_backoff, backoff * 2)

    def _report_over_limit(self, streams: list[dict[str, str]]) -> None:
        for entry in streams:
            self.over_limit[entry["stream_id"]] = entry["code"]
        if self.on_over_limit is not None:
            try:
                self.on_over_limit(streams)
            except Exception:
                log.exception("taskmeter recorder: the on_over_limit callback raised")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every recorded event was delivered (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued (retrying for up to `timeout` seconds), then stop."""
        if not self._worker.is_alive():
            return
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._worker.join(timeout + 1)
        atexit.unregister(self.close)
