"""A cap's periods: day, week (from Monday), month or total, cut at local midnight in an IANA
zone (daylight-saving changes included), as UTC instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["PERIODS", "TOTAL_START", "parse_zone", "period_bounds"]

PERIODS = ("day", "week", "month", "total")
# The one period of a `total` cap.
TOTAL_START = datetime(1970, 1, 1, tzinfo=UTC)


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or ValueError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of a local date. Where midnight does not exist (a clock jumping at
    00:00), fold=0 reads it with the offset before the jump: the jump's own instant."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def period_bounds(period: str, zone: ZoneInfo, at: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the period holding instant `at`; `end` is None for `total`."""
    if period == "total":
        return TOTAL_START, None
    local = at.astimezone(zone).date()
    if period == "day":
        first, after = local, local + timedelta(days=1)
    elif period == "week":
        first = local - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = local.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _local_midnight(first, zone), _local_midnight(after, zone)
