"""Times: accepted with any offset, kept and compared in UTC."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

__all__ = ["as_utc", "iso_z", "parse_instant", "to_unix_ms", "utc_now"]

_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An instant from a store in UTC: SQLite gives naive UTC, psycopg an aware instant in
    the session's zone (which no payload or key may show)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_z(moment: datetime) -> str:
    """A UTC instant as the API writes it: ISO 8601 with `Z`."""
    return moment.isoformat().replace("+00:00", "Z")


def parse_instant(value: str | int | float) -> datetime:
    """RFC 3339 (any offset or `Z`), a bare date (00:00 UTC), or Unix milliseconds.

    A string without an offset is read as UTC. Raises ValueError for anything else.
    """
    if not isinstance(value, str):
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number of milliseconds")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    try:
        # The common case (every event has a time) in one call: Python 3.11 reads `Z`,
        # offsets and bare dates itself.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    text = value.strip()
    if _BARE_DATE.match(text):
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_unix_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)
