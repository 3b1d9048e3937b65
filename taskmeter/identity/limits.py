"""Rate limits on failed authentication: per client address and per presented credential.

Every failed attempt counts against the caller's address and against the credential it
presented (by a hash, never the value). Past the limit within the window, that address, or
that credential, gets 429 with Retry-After until the window has room again. A guessing attack
on 190-bit keys is hopeless anyway; this keeps a misconfigured or hostile client from turning
401s into load and log noise. Counters live in the process: each replica limits on its own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque

from taskmeter.errors import RateLimited

__all__ = ["FailedAuthLimiter"]

WINDOW_S = 60.0


class FailedAuthLimiter:
    def __init__(self, per_address: int, per_credential: int) -> None:
        self.limits = {"address": per_address, "credential": per_credential}
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(credential: str) -> str:
        return hashlib.sha256(credential.encode()).hexdigest()[:24]

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        stamps = self._failures.get(key)
        if stamps is None:
            return deque()
        while stamps and now - stamps[0] > WINDOW_S:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
        return stamps

    def check(self, address: str, credential: str | None) -> None:
        """Raise 429 if this address or credential failed too often lately."""
        now = time.monotonic()
        keys = [("address", address)]
        if credential:
            keys.append(("credential", self.fingerprint(credential)))
        with self._lock:
            for key in keys:
                stamps = self._recent(key, now)
                if len(stamps) >= self.limits[key[0]]:
                    wait = max(1, round(WINDOW_S - (now - stamps[0]) + 0.5))
                    raise RateLimited(
                        f"too many failed authentications from this {key[0]}; retry in {wait} s",
                        retry_after=wait,
                    )

    def failed(self, address: str, credential: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
                self._failures.clear()
            self._failures.setdefault(("address", address), deque()).append(now)
            if credential:
                key = ("credential", self.fingerprint(credential))
                self._failures.setdefault(key, deque()).append(now)
