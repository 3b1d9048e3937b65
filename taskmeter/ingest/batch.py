"""Parse: a batch's raw events validated one by one, grouped by stream.

    raw events ─ parse_event ─▶ Event | Rejection ─▶ EventsByStream + IngestResult

A rejection or an in-batch repeat is counted in the result and the rest of the batch goes on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskmeter.ingest.schemas import (
    Event,
    Rejection,
    parse_event,
)

__all__ = ["EventsByStream", "IngestResult", "parse_batch"]


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # Streams of the batch whose spend reached a cap's hard limit: {"stream_id", "code"}.
    over_limit: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_json() for r in sorted(self.rejected, key=lambda r: r.index)],
        }
        if self.over_limit:
            # Present only when there is something to abort: the published answer is as it was.
            body["over_limit"] = self.over_limit
        return body


# A batch's valid events by stream, each stream's in batch order, keyed by event id.
EventsByStream = dict[uuid.UUID, dict[str, tuple[int, Event]]]


def parse_batch(
    raw_events: Sequence[Any], result: IngestResult, *, nul_free: bool = False
) -> EventsByStream:
    """Validate a batch's events: rejections and repeats within the batch go to `result`,
    the rest are grouped by stream (a UUID hashes in Python: once an event here, and the
    store phase then works stream by stream)."""
    by_stream: EventsByStream = {}
    for index, raw in enumerate(raw_events):
        parsed = parse_event(index, raw, nul_free=nul_free)
        if isinstance(parsed, Rejection):
            result.rejected.append(parsed)
            continue
        of_stream = by_stream.get(parsed.stream_id)
        if of_stream is None:
            of_stream = by_stream[parsed.stream_id] = {}
        if parsed.id in of_stream:
            result.duplicates += 1
        else:
            of_stream[parsed.id] = (index, parsed)
    return by_stream
