"""Python instructions an ingested event (or span), counted by valgrind: the same on every run.

    python bench/instructions.py --shape events
    python bench/instructions.py --shape otlp

This machine's speed moves by a third within minutes, so timings of a change worth a few
percent need many alternating pairs; an instruction count does not move (the same code gives
the same count to 0.01 %). It runs this script twice under `valgrind --tool=callgrind`, each
time ingesting batches in process into a fresh PostgreSQL database as `bench/ingest_loop.py`
does (after one batch to warm caches), once with 1 batch and once with 5, and prints the
difference divided by the 4 batches' events: what the ingest path costs in this process
(Python, pydantic, psycopg's client side), not PostgreSQL's side (`ingest_loop.py` reads
that). Each run takes about two minutes. Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
from decimal import Decimal

import orjson
from common import create_pg_database
from ingest_http import bodies
from otlp_vs_phoenix import SPANS_PER_TRACE, TRACES_PER_EXPORT, USER, exports

from taskmeter.heap import settle_heap
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.otlp import decode_request, spans_to_events
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade

BUILT = 6  # batches built in every run, so that the two runs differ only in what they ingest
FEW, MANY = 1, 5


def ingest_batches(shape: str, count: int) -> None:
    url, drop = create_pg_database()
    store = Store(url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade(store.write_engine)
    with store.write() as db:
        service.create_user(db, USER)
    ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
    principal = Principal(via="api_key", key_id="count", service_name="bench")
    if shape == "events":
        batches = list(itertools.islice(bodies(1, USER, 1000), BUILT + 1))
    else:
        batches = exports((BUILT + 1) * TRACES_PER_EXPORT, seed=1)
    settle_heap()  # as `serve` does once started

    def ingest(body: bytes) -> None:
        if shape == "events":
            result = ingestor.ingest(principal, orjson.loads(body)["events"], nul_free=True)
        else:
            export, _ = decode_request(body, "application/x-protobuf", None)
            result = ingestor.ingest(principal, spans_to_events(export).events)
        assert not result.rejected, result.rejected[:2]

    ingest(batches[0])  # first-use caches (statements, price lookups) warmed
    for body in batches[1 : 1 + count]:
        ingest(body)
    store.dispose()
    drop()


def counted(shape: str, count: int) -> int:
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--shape",
            shape,
            "--child",
            str(count),
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["events", "otlp"], default="events")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        ingest_batches(args.shape, args.child)
        return
    per_batch = 1000 if args.shape == "events" else TRACES_PER_EXPORT * SPANS_PER_TRACE
    unit = "an event" if args.shape == "events" else "a span"
    few, many = counted(args.shape, FEW), counted(args.shape, MANY)
    per_unit = (many - few) / ((MANY - FEW) * per_batch)
    print(f"{per_unit:,.0f} instructions {unit} ({args.shape}, {MANY - FEW} batches)")


if __name__ == "__main__":
    main()
