"""Publishing validated batches to JetStream, and reading how far projection lags.

IngestLog.connect(url) ─ the stream (created if missing: file storage, `replicas`, a
duplicate window) ─ publish(batch_id, data) ─▶ PubAck (seq, duplicate)
lag() ─▶ messages not yet acknowledged by the projectors, and the age of the oldest
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
from nats.js import api
from nats.js.errors import NotFoundError

__all__ = ["CONSUMER", "SUBJECT_PREFIX", "IngestLog", "Lag"]

SUBJECT_PREFIX = "taskmeter.ingest"
CONSUMER = "projector"
# How long JetStream remembers a batch's id: a client's retries within it are dropped.
DUPLICATE_WINDOW_S = 120.0
# Acknowledged after its transaction commits; not acknowledged within this, redelivered.
ACK_WAIT_S = 60.0


@dataclass(frozen=True)
class Lag:
    messages: int
    seconds: float


class IngestLog:
    """One process's connection to the ingest log's stream."""

    def __init__(self, url: str, *, stream: str, replicas: int) -> None:
        self.url = url
        self.stream = stream
        self.replicas = replicas
        self.subject = f"{SUBJECT_PREFIX}.{stream.lower()}"
        self._nc: Any = None
        self._js: Any = None
        self._lag: tuple[float, Lag] | None = None

    async def connect(self) -> None:
        self._nc = await nats.connect(
            self.url,
            name="taskmeter",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
        )
        self._js = self._nc.jetstream()
        await self.ensure_stream()

    async def ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            retention=api.RetentionPolicy.LIMITS,
        )
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            try:
                await self._js.add_stream(config)
            except Exception:
                # Another process created it meanwhile.
                await self._js.stream_info(self.stream)
        await self.ensure_consumer()

    async def ensure_consumer(self) -> None:
        try:
            await self._js.consumer_info(self.stream, CONSUMER)
        except NotFoundError:
            config = api.ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=10_000,
                filter_subject=self.subject,
            )
            try:
                await self._js.add_consumer(self.stream, config)
            except Exception:
                await self._js.consumer_info(self.stream, CONSUMER)

    @property
    def jetstream(self) -> Any:
        return self._js

    async def publish(self, batch_id: str, data: bytes) -> Any:
        """Append a batch; returns once JetStream has stored it (its PubAck)."""
        return await self._js.publish(
            self.subject, data, timeout=10, headers={"Nats-Msg-Id": batch_id}
        )

    async def lag(self, *, max_age_s: float = 1.0) -> Lag:
        """Messages the projectors have not acknowledged, and how old the oldest is (cached
        for `max_age_s`: readiness probes and scrapes may come often)."""
        now = time.monotonic()
        if self._lag is not None and now - self._lag[0] < max_age_s:
            return self._lag[1]
        info = await self._js.consumer_info(self.stream, CONSUMER)
        pending = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        seconds = 0.0
        if pending:
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            try:
                oldest = await self._js.get_msg(self.stream, seq=floor + 1, next=True)
            except NotFoundError:
                oldest = None
            if oldest is not None and oldest.time is not None:
                seconds = max(0.0, time.time() - _epoch(oldest.time))
        lag = Lag(pending, seconds)
        self._lag = (now, lag)
        return lag

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None


def _epoch(moment: Any) -> float:
    if isinstance(moment, datetime):
        return moment.timestamp()
    if isinstance(moment, str):
        return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    return float(moment)
