"""Query parameters of the read endpoints, parsed exactly as API.md says.

Anything the published schema allows is accepted (RFC 3339 in every form it permits — lower
case `t`/`z`, leap second, year 0000 — bare dates, `1`/`0` booleans), so the list endpoints
never answer 400 to a request the seeds call valid; anything else is a 400 that names the
parameter.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.datastructures import QueryParams

from taskmeter.errors import BadRequest
from taskmeter.ingest.schemas import STATUSES

__all__ = ["Page", "UsageFilters", "Window", "parse_filters", "parse_page", "parse_summary"]

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$"
)
MAX_OFFSET = 2**62


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end); either side may be open."""

    start: datetime | None = None
    end: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.start is not None and self.end is not None and self.start >= self.end


@dataclass(frozen=True)
class UsageFilters:
    window: Window
    task_id: str | None = None
    stream_id: uuid.UUID | None = None
    status: str | None = None
    model: str | None = None
    email: str | None = None
    is_byok: bool | None = None
    search: str | None = None
    project: str | None = None

    @property
    def matches_nothing(self) -> bool:
        # A NUL can be in no stored string (ingestion refuses it); PostgreSQL cannot even
        # compare against one, so such a filter short-circuits to an empty page.
        texts = (self.task_id, self.model, self.email, self.search, self.project)
        return self.window.empty or any(t is not None and "\x00" in t for t in texts)


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int
    sort: Literal["created_at", "cost"]


def _one(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    return values[-1] if values else None


def parse_instant_param(name: str, raw: str) -> datetime:
    """RFC 3339 date-time or a bare date (00:00 UTC)."""
    text = raw.strip().upper()
    date_only = _DATE.match(text)
    match = date_only or _DATETIME.match(text)
    if match is None:
        raise BadRequest(f"{name}: {raw!r} is not an RFC 3339 date-time or a YYYY-MM-DD date")
    year, month, day = (int(g) for g in match.groups()[:3])
    hour = minute = second = micro = 0
    zone = "Z"
    if not date_only:
        hour, minute, second = (int(g) for g in match.groups()[3:6])
        fraction = match.group(7)
        micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
        zone = match.group(8) or "Z"
    second = min(second, 59)  # RFC 3339 allows a leap second; Python does not
    try:
        if year == 0:  # RFC 3339 allows year 0000; it sorts before everything we store
            return datetime.min.replace(tzinfo=UTC)
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"{name}: {raw!r} is not a valid date") from None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset_minutes = sign * (int(digits[:2]) * 60 + int(digits[2:]))
        if abs(offset_minutes) >= 24 * 60:
            raise BadRequest(f"{name}: {raw!r} has an offset out of range")
        try:
            moment = moment - timedelta(minutes=offset_minutes)
        except OverflowError:
            return (
                datetime.min.replace(tzinfo=UTC) if sign > 0 else datetime.max.replace(tzinfo=UTC)
            )
    return moment


def _window(params: QueryParams) -> Window:
    start_raw, end_raw = _one(params, "from"), _one(params, "to")
    return Window(
        start=parse_instant_param("from", start_raw) if start_raw is not None else None,
        end=parse_instant_param("to", end_raw) if end_raw is not None else None,
    )


def _bool(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadRequest(f"{name}: {raw!r} must be true or false")


def _int(name: str, raw: str | None, default: int, low: int, high: int | None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"{name}: {raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name}: {value} is out of range ({bounds})")
    return value


def parse_filters(params: QueryParams, *, allow_search: bool, allow_stream: bool) -> UsageFilters:
    status = _one(params, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: {status!r} must be one of {', '.join(STATUSES)}")
    stream_id = None
    raw_stream = _one(params, "stream_id") if allow_stream else None
    if raw_stream is not None:
        try:
            stream_id = uuid.UUID(raw_stream.strip())
        except ValueError:
            raise BadRequest(f"stream_id: {raw_stream!r} is not a UUID") from None
    return UsageFilters(
        window=_window(params),
        task_id=_one(params, "task_id"),
        stream_id=stream_id,
        status=status,
        model=_one(params, "model"),
        email=_one(params, "email"),
        is_byok=_bool("is_byok", _one(params, "is_byok")),
        search=_one(params, "search") if allow_search else None,
        project=_one(params, "project"),
    )


def parse_page(params: QueryParams) -> Page:
    sort = _one(params, "sort")
    sort = "created_at" if sort is None else sort  # only absence defaults; "" is invalid
    if sort not in ("created_at", "cost"):
        raise BadRequest(f"sort: {sort!r} must be created_at or cost")
    return Page(
        limit=_int("limit", _one(params, "limit"), 50, 1, 200),
        offset=min(_int("offset", _one(params, "offset"), 0, 0, None), MAX_OFFSET),
        sort=sort,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class SummaryQuery:
    window: Window
    group_by: Literal["day", "week", "month"] | None
    tz: ZoneInfo
    project: str | None = None


def parse_summary(params: QueryParams) -> SummaryQuery:
    group_by = _one(params, "group_by")
    if group_by is not None and group_by not in ("day", "week", "month"):
        raise BadRequest(f"group_by: {group_by!r} must be day, week or month")
    tz_name = _one(params, "tz")
    tz_name = "UTC" if tz_name is None else tz_name
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadRequest(f"tz: {tz_name!r} is not an IANA time zone name") from None
    return SummaryQuery(
        window=_window(params),
        group_by=group_by,  # type: ignore[arg-type]
        tz=zone,
        project=_one(params, "project"),
    )
