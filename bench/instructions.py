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
import os
import re
import subprocess
import sys

from common import create_pg_database
from ingest_loop import batch_units, ingestor_for, loop_bodies

from taskmeter.heap import settle_heap
from taskmeter.store import Store

BUILT = 6  # batches built in every run, so that the two runs differ only in what they ingest
FEW, MANY = 1, 5


def ingest_batches(shape: str, count: int) -> None:
    url, drop = create_pg_database()
    store = Store(url.replace("postgresql://", "postgresql+psycopg://"))
    ingest = ingestor_for(store, shape)
    batches = loop_bodies(shape, BUILT + 1)
    settle_heap()  # as `serve` does once started

    def checked(body: bytes) -> None:
        result = ingest(body)
        assert not result.rejected, result.rejected[:2]

    checked(batches[0])  # first-use caches (statements, price lookups) warmed
    for body in batches[1 : 1 + count]:
        checked(body)
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
    per_batch, unit = batch_units(args.shape)
    few, many = counted(args.shape, FEW), counted(args.shape, MANY)
    per_unit = (many - few) / ((MANY - FEW) * per_batch)
    article = "an" if unit == "event" else "a"
    print(f"{per_unit:,.0f} instructions {article} {unit} ({args.shape}, {MANY - FEW} batches)")


if __name__ == "__main__":
    main()
