"""What "a stream's calls fit in its execution" means, for the generated data's tests.

A stream runs from `start` to `end` (its `created_at` and `finished_at`, in Unix ms; its
execution is `end - start`). Its calls (model and tool calls, as (start, duration) in ms):

1. every call lies inside the stream: start ≥ `start`, start + duration ≤ `end`;
2. the union of the calls' intervals (the time during which some call ran) ≤ the execution;
3. so the calls that overlap no other (the sequential ones) sum to ≤ the execution, and
   summed durations exceed the execution only through overlapping calls (parallel bursts).

A task (streams one after another) keeps the same for its tool calls as the API serves them:
`tool_time_ms` is the sum over `tool_call_history`; the union of the history's intervals ≤
`total_execution_ms` (the sum of its streams' executions); with no two calls overlapping,
`tool_time_ms` ≤ `total_execution_ms`; every call inside [created_at, finished_at].
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskmeter.timeline import union_ms

__all__ = ["assert_stream_fits", "assert_task_fits", "overlapping", "unix_ms"]


def unix_ms(moment: datetime | str) -> int:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


def overlapping(calls: list[tuple[int, int]]) -> set[int]:
    """Indexes of the calls (start, duration) that overlap another call."""
    order = sorted(range(len(calls)), key=lambda i: calls[i][0])
    out: set[int] = set()
    reach, holder = -1, -1
    for i in order:
        start, duration = calls[i]
        if start < reach:
            out.update((i, holder))
        if start + duration > reach:
            reach, holder = start + duration, i
    return out


def assert_stream_fits(start: int, end: int, calls: list[tuple[int, int]], what: str) -> None:
    execution = end - start
    for at, duration in calls:
        assert start <= at and at + duration <= end, f"{what}: a call outside its stream"
    assert union_ms([(a, a + d) for a, d in calls]) <= execution, f"{what}: calls overrun"
    parallel = overlapping(calls)
    sequential = sum(d for i, (_, d) in enumerate(calls) if i not in parallel)
    assert sequential <= execution, f"{what}: sequential calls outlast the stream"


def assert_task_fits(task: dict[str, Any]) -> bool:
    """Checks a served TaskUsage; True when its tool calls overlap somewhere (a burst)."""
    history = [(c["timestamp"], c["duration_ms"]) for c in task["tool_call_history"]]
    what = f"task {task['task_id']}"
    assert task["tool_time_ms"] == sum(d for _, d in history), what
    assert task["tool_calls"] == len(history), what
    start, end = unix_ms(task["created_at"]), unix_ms(task["finished_at"])
    assert_stream_fits(start, end, history, what)
    assert union_ms([(a, a + d) for a, d in history]) <= task["total_execution_ms"], what
    burst = bool(overlapping(history))
    if not burst:
        assert task["tool_time_ms"] <= task["total_execution_ms"], what
    return burst
