"""Rollup buckets and periods: a window cut into whole months, hours and 15-minute buckets,
and local periods (day, ISO week, month) assigned from them."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, false, or_

from taskmeter.usage.params import Window
from taskmeter.usage.rollups import (
    BUCKET_S,
    HOUR_BUCKETS,
    hour_of,
    month_of,
)

__all__ = [
    "Span",
    "bucket_bounds",
    "bucket_time",
    "grain_buckets",
    "in_spans",
    "next_hour",
    "next_month",
    "next_period",
    "period_start",
    "split_spans",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(local_day: date, group_by: str) -> date:
    if group_by == "week":
        return local_day - timedelta(days=local_day.weekday())
    if group_by == "month":
        return local_day.replace(day=1)
    return local_day


def next_period(start: date, group_by: str) -> date:
    if group_by == "day":
        return start + timedelta(days=1)
    if group_by == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def grain_buckets(zone: ZoneInfo, start: datetime, end: datetime) -> int:
    """How many 15-minute buckets can be grouped and still fall in one local day."""
    offsets: set[int] = set()
    probe = start
    step = timedelta(days=7)
    while True:
        utc_offset = probe.astimezone(zone).utcoffset()
        offsets.add(int(utc_offset.total_seconds()) if utc_offset else 0)
        if probe >= end:
            break
        probe = min(end, probe + step)
    grain = 86_400
    for offset in offsets:
        grain = math.gcd(grain, abs(offset) % 86_400 or 86_400)
    return max(1, grain // BUCKET_S)


def bucket_bounds(window: Window) -> tuple[int | None, int | None]:
    """The whole buckets inside the window: [first, last)."""
    first = None if window.start is None else math.ceil(window.start.timestamp() / BUCKET_S)
    last = None if window.end is None else math.floor(window.end.timestamp() / BUCKET_S)
    return first, last


def bucket_time(bucket: int) -> datetime:
    return EPOCH + timedelta(seconds=bucket * BUCKET_S)


Span = tuple[int | None, int | None]  # buckets [low, high); None is open


def next_month(bucket: int) -> int:
    """The first bucket of the first UTC month starting at or after `bucket`."""
    start = month_of(bucket)
    return start if start == bucket else month_of(start + 31 * 86_400 // BUCKET_S)


def next_hour(bucket: int) -> int:
    return hour_of(bucket + HOUR_BUCKETS - 1)


def split_spans(
    span: Span, floor: Callable[[int], int], ceil: Callable[[int], int]
) -> tuple[Span | None, list[Span]]:
    """Split [first, last) into the whole coarse units inside it and the fine rest at its ends."""
    first, last = span
    low = None if first is None else ceil(first)
    high = None if last is None else floor(last)
    if low is not None and high is not None and low >= high:
        return None, [span]
    fine: list[Span] = []
    if first is not None and low is not None and first < low:
        fine.append((first, low))
    if last is not None and high is not None and high < last:
        fine.append((high, last))
    return (low, high), fine


def in_spans(bucket: Any, spans: list[Span]) -> ColumnElement[bool]:
    """`bucket` inside any of the spans (false for none)."""
    ranges = []
    for low, high in spans:
        bounds = []
        if low is not None:
            bounds.append(bucket >= low)
        if high is not None:
            bounds.append(bucket < high)
        ranges.append(and_(*bounds) if bounds else bucket.is_not(None))
    return or_(*ranges) if ranges else false()
