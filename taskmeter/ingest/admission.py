"""Admission control for the write endpoints: past a bound of in-flight writes, answer 429
with Retry-After (which OTLP exporters and the SDK retry) instead of queueing without end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from taskmeter.errors import RateLimited

__all__ = ["WriteAdmission"]


class WriteAdmission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self._in_flight >= self.limit:
                raise RateLimited("too many writes in flight; retry shortly", retry_after=1)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
