"""Re-pricing benchmark: a store of N model calls, ingested, then re-priced under new prices.

    python bench/reprice.py --store postgresql --calls 1000000
    python bench/reprice.py --store sqlite --calls 200000

Every phase runs in its own process (its peak RSS is its own), one after the other:

    load   the calls ingested with `Ingestor.ingest` in batches of ~1,000 events (streams of
           `--calls-per-stream` calls over the benchmark's five models and a year, 60 users in
           6 teams and 20 solo): the baseline, what ingesting the same calls costs
    dry    `reprice --dry-run` under a prices file that prices all five models anew (every
           call changes): the plan alone, one scan of the calls
    apply  the same re-pricing applied (plan, then groups of --group-streams streams, each a
           transaction re-projecting its streams, tasks and rollups)

Prints one JSON line per phase (wall seconds, CPU seconds, peak RSS) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from common import MODELS, create_pg_database

from taskmeter.finance.reprice import RepriceFilter, reprice
from taskmeter.heap import settle_heap
from taskmeter.identity import service
from taskmeter.identity.principal import Principal
from taskmeter.ingest.service import Ingestor
from taskmeter.pricing.prices import PriceBook
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade

NEW_PRICES = "\n".join(
    f'[models."{model}"]\ninput_mtok = {1 + n}\noutput_mtok = {4 + n}\ncache_read_mtok = 0.5\n'
    for n, (model, _) in enumerate(MODELS)
)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)
BATCH_EVENTS = 1_000


def users() -> list[str]:
    return [f"user{n}@bench.example" for n in range(80)]


def setup(url: str) -> None:
    store = Store(url)
    upgrade(store.write_engine)
    with store.write() as db:
        for n, email in enumerate(users()):
            service.create_user(db, email)
            if n < 60:
                team = f"team-{n % 6}"
                if n < 6:
                    service.create_team(db, team, email)
                else:
                    service.add_member(db, team, email, "member")
    store.dispose()


def events(calls: int, per_stream: int, seed: int = 7) -> list[list[dict[str, Any]]]:
    """Batches of ~BATCH_EVENTS events: whole streams (start, calls, finish)."""
    rng = random.Random(seed)
    emails = users()
    batches: list[list[dict[str, Any]]] = [[]]
    made = n = 0
    while made < calls:
        count = min(per_stream, calls - made)
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        task = f"task-{n // 2}"
        start = UNTIL - timedelta(seconds=rng.uniform(3600, 365 * 86_400))
        model, provider = rng.choice(MODELS)

        where = (sid, task, start)
        owner = emails[(n // 2) % len(emails)]
        stream = [_event(where, "stream.started", 0, user=owner, model=model)]
        for i in range(count):
            inp = 500 + rng.randrange(59_500)
            output = 50 + rng.randrange(3950)
            stream.append(
                _event(where, "llm.call", 1 + i, model=model, provider=provider,
                       input_tokens=inp, output_tokens=output, cache_read_tokens=inp // 4,
                       duration_ms=1000)
            )  # fmt: skip
        stream.append(_event(where, "stream.finished", count + 1, status="completed"))
        if len(batches[-1]) + len(stream) > BATCH_EVENTS:
            batches.append([])
        batches[-1].extend(stream)
        made += count
        n += 1
    return batches


def _event(where: tuple[str, str, datetime], kind: str, i: int, **fields: Any) -> dict[str, Any]:
    sid, task, start = where
    at = (start + timedelta(seconds=i)).isoformat()
    return {"id": f"e{i}", "type": kind, "time": at, "stream_id": sid, "task_id": task, **fields}


def phase(name: str, url: str, args: argparse.Namespace, prices: Path) -> dict[str, Any]:
    store = Store(url)
    settle_heap()
    started, cpu = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {"phase": name}
    if name == "load":
        batches = events(args.calls, args.calls_per_stream)
        started, cpu = time.perf_counter(), time.process_time()  # building events not timed
        ingestor = Ingestor(store, PriceBook(), credit_usd=Decimal(10), default_rate=Decimal("0.1"))
        principal = Principal(via="api_key", key_id="bench", service_name="bench")
        accepted = 0
        for batch in batches:
            accepted += ingestor.ingest(principal, batch).accepted
        out["events"] = accepted
    else:
        outcome = reprice(
            store,
            PriceBook(prices),
            RepriceFilter(),
            credit_usd=Decimal(10),
            default_rate=Decimal("0.1"),
            dry_run=name == "dry",
            actor="bench",
            group_streams=args.group_streams,
        )
        plan = outcome.plan
        out.update(
            calls_seen=plan.calls_seen,
            calls_changed=plan.calls_changed,
            streams_changed=plan.streams_changed,
            tasks_changed=plan.tasks_changed,
            transactions=outcome.transactions,
            delta_nano=plan.base_after_nano - plan.base_before_nano,
        )
    out["wall_s"] = round(time.perf_counter() - started, 2)
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    store.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--calls-per-stream", type=int, default=10)
    parser.add_argument("--group-streams", type=int, default=200)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prices", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.url, args, Path(args.prices))), flush=True)
        return
    workdir = Path(tempfile.mkdtemp(prefix="reprice-bench-"))
    prices = workdir / "new-prices.toml"
    prices.write_text(NEW_PRICES)
    drop = None
    if args.store == "postgresql":
        url, drop = create_pg_database()
        url = url.replace("postgresql://", "postgresql+psycopg://")
    else:
        url = f"sqlite:///{workdir / 'reprice.db'}"
    try:
        setup(url)
        results = {}
        for name in ("load", "dry", "apply"):
            command = [sys.executable, __file__, "--phase", name, "--url", url,
                       "--prices", str(prices), "--calls", str(args.calls),
                       "--calls-per-stream", str(args.calls_per_stream),
                       "--group-streams", str(args.group_streams)]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(results[name]), flush=True)
        load, dry, apply = results["load"], results["dry"], results["apply"]
        print(
            f"re-pricing {apply['calls_changed']:,} calls: {apply['wall_s']} s, peak RSS "
            f"{apply['peak_rss_mib']} MiB; ingesting them {load['wall_s']} s "
            f"(apply / ingest = {apply['wall_s'] / load['wall_s']:.2f}); dry run "
            f"{dry['wall_s']} s (apply / dry = {apply['wall_s'] / dry['wall_s']:.2f})"
        )
    finally:
        if drop:
            drop()


if __name__ == "__main__":
    main()
