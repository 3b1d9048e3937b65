"""Prometheus metrics: what `GET /metrics` exports, and the middleware that times requests.

    request ─ RequestTimer (ASGI) ─▶ ProcessMetrics.requests   (histogram: method, route, status)
    ingest endpoints ─ count_ingest ─▶ ProcessMetrics.ingested / rejected (by code)
    scrape ─ render(store, metrics, unpriced)
              ├─ the per-process series above, labelled with the process id
              ├─ store_figures: stream_rollups_monthly summed per team, model, BYOK
              │   (credits, cost, tokens: the same exact totals from every worker)
              ├─ COLLECTORS: callables added by other modules (e.g. a webhook outbox backlog)
              └─ taskmeter_metrics_store_up: 0 when the store did not answer (the rest stays)

Two kinds of figures. Totals of money and tokens are read from the store's monthly rollups at
scrape time, so with `serve --workers N` every worker answers the same exact numbers, and they
survive restarts. Request latencies and ingest counts exist only in the process that served the
request: they carry a `pid` label (one series per process; a restart starts new ones, which
`sum by (…)` over `rate()` handles), since a scrape of the shared port reaches one worker and
unlabelled series would jump between processes. prometheus_client's multiprocess mode would sum
those across workers, but needs a directory shared by the supervisor and its workers, wiped at
each start; the exposition below is small enough to keep without the dependency.

No label has unbounded cardinality: teams (their names) and models are operator data, models
cut to the `MAX_MODELS` with the most credits (the rest as model="other"); routes are templates,
never raw paths; no user, task or stream appears.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from taskmeter.store import Store
from taskmeter.store.tables import TEAMS, StreamRollupMonth

__all__ = [
    "COLLECTORS",
    "LATENCY_BUCKETS",
    "MAX_MODELS",
    "ProcessMetrics",
    "RequestTimer",
    "render",
    "store_figures",
]

# Seconds; the ingest path answers in milliseconds, a summary over a year in up to ~1 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_MODELS = 100
log = logging.getLogger("taskmeter.metrics")
NANO = Decimal(10) ** 9

# Extra exposition sources: each is called with the open read session and returns complete
# metric text (HELP, TYPE and samples). The hook for figures this module does not own, such
# as a webhook outbox's backlog: `COLLECTORS.append(outbox_backlog_lines)`.
Collector = Callable[[Session], Iterable[str]]
COLLECTORS: list[Collector] = []


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float | int | Decimal) -> str:
    if isinstance(value, Decimal):
        text = f"{value.normalize():f}"
        return "0" if text == "-0" else text
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class _Histogram:
    buckets: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class ProcessMetrics:
    """Figures of this process alone; updates take a lock (ingest runs in worker threads)."""

    pid: str = field(default_factory=lambda: str(os.getpid()))
    requests: dict[tuple[str, str, str], _Histogram] = field(default_factory=dict)
    ingested: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        with self._lock:
            histogram = self.requests.get(key)
            if histogram is None:
                histogram = self.requests[key] = _Histogram([0] * len(LATENCY_BUCKETS))
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    histogram.buckets[index] += 1
                    break
            histogram.total += seconds
            histogram.count += 1

    def count_ingest(self, accepted: int, duplicates: int, codes: Iterable[str]) -> None:
        with self._lock:
            self.ingested["accepted"] += accepted
            self.ingested["duplicate"] += duplicates
            for code in codes:
                self.rejected[code] += 1

    def lines(self) -> list[str]:
        pid = {"pid": self.pid}
        with self._lock:
            requests = {k: (list(h.buckets), h.total, h.count) for k, h in self.requests.items()}
            ingested = dict(self.ingested)
            rejected = dict(self.rejected)
        out = [
            "# HELP taskmeter_http_request_duration_seconds Time to answer a request, by "
            "method, route template and status, in this process.",
            "# TYPE taskmeter_http_request_duration_seconds histogram",
        ]
        for (method, route, status), (buckets, total, count) in sorted(requests.items()):
            labels = {**pid, "method": method, "route": route, "status": status}
            running = 0
            for bound, hits in zip(LATENCY_BUCKETS, buckets, strict=True):
                running += hits
                le = _labels({**labels, "le": _number(bound)})
                out.append(f"taskmeter_http_request_duration_seconds_bucket{le} {running}")
            out.append(
                "taskmeter_http_request_duration_seconds_bucket"
                f"{_labels({**labels, 'le': '+Inf'})} {count}"
            )
            out.append(f"taskmeter_http_request_duration_seconds_sum{_labels(labels)} {total!r}")
            out.append(f"taskmeter_http_request_duration_seconds_count{_labels(labels)} {count}")
        out += [
            "# HELP taskmeter_ingest_events_total Events received for ingestion, by outcome "
            "(accepted, duplicate), in this process.",
            "# TYPE taskmeter_ingest_events_total counter",
        ]
        for outcome in ("accepted", "duplicate"):
            named = _labels({**pid, "outcome": outcome})
            out.append(f"taskmeter_ingest_events_total{named} {ingested.get(outcome, 0)}")
        out += [
            "# HELP taskmeter_ingest_rejected_total Events rejected at ingestion, by code, "
            "in this process.",
            "# TYPE taskmeter_ingest_rejected_total counter",
        ]
        for code, count in sorted(rejected.items()):
            out.append(f"taskmeter_ingest_rejected_total{_labels({**pid, 'code': code})} {count}")
        return out


@dataclass(frozen=True)
class StoreFigure:
    team: str  # "" for a solo user's streams
    model: str
    byok: bool
    credits_nano: int  # what the account was charged (neo_credits)
    cost_nano: int  # the calls' price (base amount)
    input_tokens: int
    output_tokens: int


def store_figures(db: Session, max_models: int = MAX_MODELS) -> list[StoreFigure]:
    """Every stream's figures so far (running streams included), per team, model and BYOK,
    from the monthly rollups; models beyond the `max_models` with most credits as "other"."""
    rollup = StreamRollupMonth.__table__.c
    rows = db.execute(
        select(
            rollup.scope,
            rollup.model,
            rollup.is_byok,
            func.sum(rollup.neo_credits_nano),
            func.sum(rollup.base_nano),
            func.sum(rollup.input_tokens),
            func.sum(rollup.output_tokens),
        ).group_by(rollup.scope, rollup.model, rollup.is_byok)
    ).all()
    teams = {f"t{team_id}": name for team_id, name in db.execute(select(TEAMS.c.id, TEAMS.c.name))}
    credits_by_model: dict[str, int] = defaultdict(int)
    for row in rows:
        credits_by_model[row[1]] += int(row[3] or 0)
    ranked = sorted(credits_by_model, key=lambda m: (-credits_by_model[m], m))
    kept = set(ranked[:max_models])
    merged: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for scope, model, byok, credits, cost, tokens_in, tokens_out in rows:
        team = teams.get(scope, "") if scope.startswith("t") else ""
        figures = merged[(team, model if model in kept else "other", bool(byok))]
        for index, value in enumerate((credits, cost, tokens_in, tokens_out)):
            figures[index] += int(value or 0)
    return [StoreFigure(t, m, b, *f) for (t, m, b), f in sorted(merged.items())]


def _store_lines(figures: list[StoreFigure], credit_usd: Decimal) -> list[str]:
    out = [
        "# HELP taskmeter_credits_total Credits charged to accounts (neo_credits), by team "
        "(empty: solo users), stream model and BYOK; from the store, the same in every worker.",
        "# TYPE taskmeter_credits_total counter",
    ]
    key = [{"team": f.team, "model": f.model, "byok": str(f.byok).lower()} for f in figures]
    for labels, f in zip(key, figures, strict=True):
        out.append(f"taskmeter_credits_total{_labels(labels)} {_number(f.credits_nano / NANO)}")
    out += [
        "# HELP taskmeter_llm_cost_usd_total The model calls' price in USD, by team, stream "
        "model and BYOK (BYOK calls are billed to the user's own key); from the store.",
        "# TYPE taskmeter_llm_cost_usd_total counter",
    ]
    for labels, f in zip(key, figures, strict=True):
        usd = _number(f.cost_nano * credit_usd / NANO)
        out.append(f"taskmeter_llm_cost_usd_total{_labels(labels)} {usd}")
    out += [
        "# HELP taskmeter_tokens_total Tokens of recorded model calls, by team, stream model, "
        "BYOK and direction (input includes cached); from the store.",
        "# TYPE taskmeter_tokens_total counter",
    ]
    for labels, f in zip(key, figures, strict=True):
        for direction, count in (("input", f.input_tokens), ("output", f.output_tokens)):
            named = _labels({**labels, "direction": direction})
            out.append(f"taskmeter_tokens_total{named} {count}")
    return out


def _unpriced_lines(unpriced: Mapping[str, int]) -> list[str]:
    out = [
        "# HELP taskmeter_unpriced_calls_total Model calls recorded with no known price "
        "(they cost 0), by model, since this process started.",
        "# TYPE taskmeter_unpriced_calls_total counter",
    ]
    for model, count in sorted(unpriced.items()):
        out.append(f"taskmeter_unpriced_calls_total{_labels({'model': model})} {count}")
    return out


def render(
    store: Store, metrics: ProcessMetrics, unpriced: Mapping[str, int], credit_usd: Decimal
) -> str:
    """The whole exposition (Prometheus text format 0.0.4). An unreachable store costs the
    store's series, not the scrape: the process's own figures are what explains an outage."""
    lines = _unpriced_lines(unpriced)
    lines += metrics.lines()
    try:
        with store.read() as db:
            figures = store_figures(db)
            collected = [line for collector in COLLECTORS for line in collector(db)]
    except DBAPIError as exc:
        log.warning("metrics: the store did not answer: %s", exc.orig or exc)
        reached = 0
    else:
        reached = 1
        lines += _store_lines(figures, credit_usd)
        lines += collected
    lines += [
        "# HELP taskmeter_metrics_store_up Whether this scrape read the store's figures.",
        "# TYPE taskmeter_metrics_store_up gauge",
        f"taskmeter_metrics_store_up {reached}",
    ]
    return "\n".join(lines) + "\n"


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTimer:
    """ASGI middleware: each HTTP request's time to its last body byte, by route template.

    The route is read from the scope after the app ran (the router records the matched
    route there); a request that matched none is "unmatched", so a scan of random paths adds
    one series, not one per path.
    """

    def __init__(self, app: ASGIApp, metrics: ProcessMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", "?"), template, status, time.perf_counter() - started
            )
