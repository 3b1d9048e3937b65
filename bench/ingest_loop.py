"""Ingestion without HTTP: `Ingestor.ingest` called in a loop on a fresh store, for profiling.

    python bench/ingest_loop.py --store postgresql --shape events --batches 100
    python bench/ingest_loop.py --store postgresql --shape otlp --batches 60
    py-spy record -o profile.svg -- python bench/ingest_loop.py --store sqlite

`--shape events` sends the ingest benchmark's batches of 1000 events; `--shape otlp` the OTLP
benchmark's exports of 50 traces (500 spans), decoded and mapped as `/v1/traces` does. Prints
wall time and this process's CPU per event (or span), and on PostgreSQL the server's CPU
over the same loop (read from /proc: run it alone on the machine). The figures in
bench/RESULTS.md that say "in-process loop" come from here, old and new code alternating.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from common import create_pg_database
from ingest_http import bodies, define_caps
from otlp_vs_phoenix import SPANS_PER_TRACE, TRACES_PER_EXPORT, USER, exports

from taskmeter.heap import settle_heap
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.otlp import decode_request, spans_to_events
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade

TICKS = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            # The server's processes by name: this one's command line says "postgresql" too.
            if Path(f"/proc/{pid}/comm").read_bytes() != b"postgres\n":
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def ingestor_for(store: Store, shape: str) -> Callable[[bytes], Any]:
    """`ingest(body)` on a migrated `store` holding the benchmarks' user, as the endpoint of
    `shape` does it (a JSON batch, or an OTLP export decoded and mapped)."""
    upgrade(store.write_engine)
    with store.write() as db:
        service.create_user(db, USER)
    ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
    principal = Principal(via="api_key", key_id="loop", service_name="bench")

    def ingest(body: bytes) -> Any:
        if shape == "events":
            # As `POST /api/v1/usage/events` does: no `\u0000` escape, no NUL to look for.
            nul_free = b"\\u0000" not in body
            return ingestor.ingest(principal, orjson.loads(body)["events"], nul_free=nul_free)
        export, _ = decode_request(body, "application/x-protobuf", None)
        return ingestor.ingest(principal, spans_to_events(export).events)

    return ingest


def batch_units(shape: str) -> tuple[int, str]:
    """How many events (or spans) one of `shape`'s bodies holds, and what they are called."""
    if shape == "events":
        return 1000, "event"
    return TRACES_PER_EXPORT * SPANS_PER_TRACE, "span"


def loop_bodies(shape: str, count: int, *, recent: bool = False) -> list[bytes]:
    """`count` batches of 1000 events, or exports of 50 traces, the same on every run
    (`recent`: the events from a week ago on, inside caps' current periods)."""
    if shape == "events":
        start = (
            datetime.now(UTC) - timedelta(days=7) if recent else datetime(2026, 1, 1, tzinfo=UTC)
        )
        return list(itertools.islice(bodies(1, USER, 1000, start), count))
    return exports(count * TRACES_PER_EXPORT, seed=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--shape", choices=["events", "otlp"], default="events")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--caps", type=int, default=0, help="caps defined first (see ingest_http)")
    parser.add_argument("--recent", action="store_true", help="events from a week ago, in a team")
    args = parser.parse_args()
    args.recent = args.recent or bool(args.caps)

    if args.store == "postgresql":
        url, drop = create_pg_database()
        url = url.replace("postgresql://", "postgresql+psycopg://")
    else:
        url, drop = f"sqlite:///{tempfile.mkdtemp(prefix='taskmeter-loop-')}/loop.db", None
    store = Store(url)
    ingest = ingestor_for(store, args.shape)
    if args.recent:
        with store.write() as db:
            service.create_team(db, "loop-team", USER)
        define_caps(url, USER, args.caps)
    batches = loop_bodies(args.shape, args.batches, recent=args.recent)
    per_batch, unit = batch_units(args.shape)
    units = args.batches * per_batch

    settle_heap()  # as `serve` does once started
    server_before = postgres_cpu_s()
    began, cpu_began = time.perf_counter(), time.process_time()
    for body in batches:
        result = ingest(body)
        assert not result.rejected, result.rejected[:2]
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    server = postgres_cpu_s() - server_before
    figures = f"wall {wall / units * 1e6:.1f} µs, this process {cpu / units * 1e6:.1f} µs"
    if args.store == "postgresql":
        figures += f", PostgreSQL {server / units * 1e6:.1f} µs"
    print(f"{units:,} {unit}s on {args.store}: {figures} per {unit}; {units / wall:,.0f} {unit}s/s")
    store.dispose()
    if drop:
        drop()


if __name__ == "__main__":
    main()
