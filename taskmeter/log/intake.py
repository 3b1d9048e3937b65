"""The write endpoints' side of the log: validate a batch, publish its valid events, answer.

The answer's `accepted` and `rejected` are exact for validation (what `parse_event` decides
alone); `duplicates` counts the batch's repeats of its own ids. What only the store can decide —
an event seen in an earlier batch (a duplicate), a stream of another task or user, an unknown
user or project — is decided when the batch is applied, and counted in the projector's
metrics. The answer carries the batch's `batch_id` (its message id in the log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from taskmeter.identity.principal import Principal
from taskmeter.ingest.batch import IngestResult, parse_batch
from taskmeter.log.messages import batch_id, encode
from taskmeter.log.publisher import IngestLog

__all__ = ["LoggedResult", "log_batch"]


@dataclass
class LoggedResult(IngestResult):
    batch_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        body = super().as_json()
        body["batch_id"] = self.batch_id
        return body


def _validated(
    principal: Principal, raw_events: Sequence[Any], nul_free: bool
) -> tuple[LoggedResult, bytes | None]:
    result = LoggedResult()
    by_stream = parse_batch(raw_events, result, nul_free=nul_free)
    indexes = sorted(index for of_stream in by_stream.values() for index, _ in of_stream.values())
    result.accepted = len(indexes)
    if not indexes:
        return result, None
    keys = [(str(sid), event_id) for sid, of_stream in by_stream.items() for event_id in of_stream]
    result.batch_id = batch_id(principal, keys)
    return result, encode(principal, [raw_events[i] for i in indexes])


async def log_batch(
    ingest_log: IngestLog, principal: Principal, raw_events: Sequence[Any], *, nul_free: bool
) -> LoggedResult:
    """Validate (in a worker thread: milliseconds of CPU a batch), then publish and wait for
    JetStream's acknowledgement: once this returns, the batch is durable in the log."""
    result, data = await run_in_threadpool(_validated, principal, raw_events, nul_free)
    if data is not None:
        assert result.batch_id is not None
        await ingest_log.publish(result.batch_id, data)
    return result
