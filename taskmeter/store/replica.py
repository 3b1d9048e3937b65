"""The read replica: which engine serves a read that may be a little stale.

    store.read(replica=True)
        │
        ▼
    ReadReplica.choose() ── state older than CHECK_INTERVAL_S? ── probe the replica:
        │                                                         one query, lag in seconds
        │                   (one thread probes; the others use the state it last saw)
        ├─ replica up, lag ≤ TASKMETER_READ_MAX_LAG_S (or no maximum) ──▶ replica engine
        ├─ replica unreachable (probe or checkout fails) ───────────────▶ primary, retried
        │                                                                 after DOWN_RETRY_S
        └─ replica lagging past the maximum ────────────────────────────▶ primary

Every change of state is one log line (`taskmeter.store`), and `status()` / `metrics()`
give /readyz and /metrics the state, the lag and how many reads fell back to the primary.
A replica that is down never makes the service unready: the primary serves its reads.

Lag is `now() - pg_last_xact_replay_timestamp()` on the replica, except when it has replayed
everything it received from a live WAL receiver: then it is 0 however long ago the last write
was (an idle primary sends nothing to replay, and the naive figure would grow without bound).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

__all__ = ["ReadReplica", "ReplicaState"]

log = logging.getLogger("taskmeter.store")

CHECK_INTERVAL_S = 1.0
# A replica that failed is probed again after this long, so that a replica whose connection
# attempts hang (a dropped route, not a refused port) costs a request at most this often.
DOWN_RETRY_S = 5.0
CONNECT_TIMEOUT_S = 2

_PROBE = text(
    """
    SELECT pg_is_in_recovery() AS standby,
           CASE
             WHEN NOT pg_is_in_recovery() THEN 0
             WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                  AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN 0
             ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
           END AS lag_s
    """
)


@dataclass(frozen=True)
class ReplicaState:
    """What the last probe saw. `lag_s` is None when it could not be measured."""

    up: bool
    standby: bool
    lag_s: float | None
    checked_at: float
    reason: str

    @property
    def serving(self) -> str:
        return "replica" if self.reason == "" else "primary"


class ReadReplica:
    """A PostgreSQL streaming replica for stale-tolerant reads, with its health and lag."""

    def __init__(self, url: str, *, max_lag_s: float | None, **engine_options: Any) -> None:
        self.max_lag_s = max_lag_s
        self.engine: Engine = create_engine(
            url,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            pool_timeout=5,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            **engine_options,
        )
        self.fallbacks = 0  # reads sent to the primary instead, since this process started
        self._counting = threading.Lock()
        self._state = ReplicaState(
            up=False, standby=False, lag_s=None, checked_at=float("-inf"), reason="not checked"
        )
        self._probing = threading.Lock()

    @property
    def state(self) -> ReplicaState:
        return self._state

    def current(self) -> ReplicaState:
        """The replica's state, probed again if the last probe is old."""
        state = self._state
        wait = CHECK_INTERVAL_S if state.up else DOWN_RETRY_S
        if time.monotonic() - state.checked_at >= wait and self._probing.acquire(blocking=False):
            try:
                state = self._probe()
            finally:
                self._probing.release()
        return state

    def choose(self) -> bool:
        """Whether the next read goes to the replica (True) or the primary (False)."""
        if self.current().serving == "replica":
            return True
        with self._counting:
            self.fallbacks += 1
        return False

    def failed(self, exc: BaseException) -> None:
        """A read on the replica lost its connection: send reads to the primary until the
        next probe finds it back."""
        self._record(
            ReplicaState(False, False, None, time.monotonic(), f"unreachable: {_first_line(exc)}")
        )

    def _probe(self) -> ReplicaState:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(_PROBE).one()
        except DBAPIError as exc:
            state = ReplicaState(
                False, False, None, time.monotonic(), f"unreachable: {_first_line(exc)}"
            )
        else:
            lag = None if row.lag_s is None else float(row.lag_s)
            reason = ""
            if self.max_lag_s is not None and (lag is None or lag > self.max_lag_s):
                shown = "unknown" if lag is None else f"{lag:.1f} s"
                reason = f"lagging: {shown} behind (maximum {self.max_lag_s:g} s)"
            state = ReplicaState(True, bool(row.standby), lag, time.monotonic(), reason)
        self._record(state)
        return state

    def _record(self, state: ReplicaState) -> None:
        before, self._state = self._state, state
        if before.reason == state.reason:
            return
        if state.reason == "":
            log.warning("read replica in use again (lag %s s)", _seconds(state.lag_s))
        else:
            log.warning("read replica not used, reads go to the primary: %s", state.reason)

    def status(self) -> dict[str, Any]:
        """The replica's part of /readyz."""
        state = self.current()
        return {
            "serving": state.serving,
            "up": state.up,
            "standby": state.standby,
            "lag_s": None if state.lag_s is None else round(state.lag_s, 3),
            "max_lag_s": self.max_lag_s,
            "reason": state.reason or None,
        }

    def metrics(self) -> list[str]:
        """Prometheus lines for /metrics."""
        state = self.current()
        lines = [
            "# HELP taskmeter_read_replica_up Whether the last probe reached the read replica.",
            "# TYPE taskmeter_read_replica_up gauge",
            f"taskmeter_read_replica_up {int(state.up)}",
            "# HELP taskmeter_read_replica_in_use Whether replica-tolerant reads go to the "
            "replica (0: to the primary, because it is down or lagging).",
            "# TYPE taskmeter_read_replica_in_use gauge",
            f"taskmeter_read_replica_in_use {int(state.serving == 'replica')}",
            "# HELP taskmeter_read_replica_fallbacks_total Reads sent to the primary instead "
            "of the replica, since this process started.",
            "# TYPE taskmeter_read_replica_fallbacks_total counter",
            f"taskmeter_read_replica_fallbacks_total {self.fallbacks}",
        ]
        if state.lag_s is not None:
            lines += [
                "# HELP taskmeter_read_replica_lag_seconds Replay lag of the read replica at "
                "the last probe.",
                "# TYPE taskmeter_read_replica_lag_seconds gauge",
                f"taskmeter_read_replica_lag_seconds {state.lag_s:.3f}",
            ]
        return lines

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"
