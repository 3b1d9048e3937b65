"""Lay a generated stream's model and tool calls out on its timeline (the demo and the bench).

    layout = lay_out(rng.random, start_ms, [(model call ms, [tool call ms, …]), …])
    layout.model_at[i], layout.tool_at[j]   each call's start (Unix ms)
    layout.step_end[i]                      the end of step i (its model call and its tools)
    layout.end_ms                           the stream's finish

A stream runs one step after another: a gap, a model call, then the step's tool calls, one
after another with gaps. Now and then (`burst`) a step's tool calls run at once,
starting a few milliseconds apart: a parallel burst, the only place calls overlap. So every
call lies inside [start, end], and the union of the calls' intervals never exceeds the
execution; tool time summed over a burst may.

Tool starts are strictly increasing, so the history is already in the service's order (start
time, then event id) whatever the event ids sort as. `rnd` is a `random.Random().random`:
the same seed lays out the same timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Layout", "lay_out", "union_ms"]


@dataclass(frozen=True, slots=True)
class Layout:
    model_at: list[int]
    tool_at: list[int]
    step_end: list[int]
    end_ms: int


def lay_out(
    rnd: Callable[[], float],
    start_ms: int,
    steps: list[tuple[int, list[int]]],
    *,
    burst: float = 0.1,
) -> Layout:
    """Starts for each step's model call and tool calls (their durations in ms), from
    `start_ms`; tool starts come out in the order of `steps`."""
    model_at: list[int] = []
    tool_at: list[int] = []
    step_end: list[int] = []
    clock = start_ms
    for think, block in steps:
        clock += 50 + int(rnd() * 1_500)
        model_at.append(clock)
        clock += think
        if len(block) > 1 and rnd() < burst:
            at = clock
            end = clock
            for duration in block:
                at += 1 + int(rnd() * 200)
                tool_at.append(at)
                end = max(end, at + duration)
            clock = end
        else:
            for duration in block:
                clock += 20 + int(rnd() * 1_500)
                tool_at.append(clock)
                clock += duration
        step_end.append(clock)
    return Layout(model_at, tool_at, step_end, clock + 50 + int(rnd() * 1_000))


def union_ms(intervals: list[tuple[int, int]]) -> int:
    """The length of the union of [start, end) intervals: time during which some call ran."""
    total = 0
    reach: int | None = None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total
