"""Query benchmark: p50/p99 over HTTP for each read endpoint on a generated store, next to a
naive baseline (plain GROUP BY over the raw stream rows) for the same questions.

    python bench/generate.py --store postgresql --streams 1000000      # once
    python bench/query.py bench/.data/postgresql-1000000.json --requests 200

Starts `taskmeter serve` on the store the manifest names and asks, as the admin of the large
team and as a solo user: the first page of streams and tasks, page 50, `sort=cost`, a one-week
`from`/`to` window, one task by id, and the 12-month summary with `group_by=day`. Each case is
warmed up, then timed sequentially from this process (HTTP and JSON included). The baseline
runs the obvious SQL for the same answers straight on the database (no HTTP at all, so the
ratio favours it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from common import percentile, rss_mib, start_serve, stop_serve
from sqlalchemy import create_engine, text

from taskmeter.config import normalise_database_url

LIMIT = 20


def cases(manifest: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    until = datetime.fromisoformat(manifest["until"])
    week = {"from": (until - timedelta(days=60)).isoformat(), "to": (until - timedelta(days=53))}
    week["to"] = week["to"].isoformat()  # type: ignore[union-attr]
    year = {"from": (until - timedelta(days=365)).isoformat(), "to": until.isoformat()}
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    page50 = {"limit": LIMIT, "offset": 49 * LIMIT}
    by_day = {**year, "group_by": "day"}
    for who in ("admin", "solo"):
        task = manifest[f"{who}_task"]
        out += [
            (who, "streams, first page", "/api/v1/usage/streams", {"limit": LIMIT}),
            (who, "streams, page 50", "/api/v1/usage/streams", page50),
            (who, "streams, sort=cost", "/api/v1/usage/streams", {"limit": LIMIT, "sort": "cost"}),
            (who, "streams, one week", "/api/v1/usage/streams", {"limit": LIMIT, **week}),
            (who, "tasks, first page", "/api/v1/usage/tasks", {"limit": LIMIT}),
            (who, "tasks, page 50", "/api/v1/usage/tasks", page50),
            (who, "tasks, sort=cost", "/api/v1/usage/tasks", {"limit": LIMIT, "sort": "cost"}),
            (who, "tasks, one week", "/api/v1/usage/tasks", {"limit": LIMIT, **week}),
            (who, "task by id", f"/api/v1/usage/tasks/{task}", {}),
            (who, "summary, 12 months by day", "/api/v1/usage/summary", by_day),
        ]  # fmt: skip
    return out


def timed(call: Any, requests: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return percentile(times, 0.5), percentile(times, 0.99)


def baselines(url: str, manifest: dict[str, Any], scope: str) -> dict[str, str]:
    """The obvious SQL: aggregate the raw stream rows on every request."""
    postgres = url.startswith("postgresql")
    day = "date_trunc('day', created_at)" if postgres else "substr(created_at, 1, 10)"
    # Built from the manifest's own scope names (bench only), hence no bound parameters.
    task_group = (
        "SELECT task_id, min(created_at) AS created, sum(base_nano) AS cost, count(*) AS streams, "
        "sum(tool_calls), sum(input_tokens), sum(output_tokens), sum(neo_credits_nano) "
        f"FROM streams WHERE scope = '{scope}' AND status IS NOT NULL GROUP BY task_id"
    )
    return {
        "tasks, first page": f"{task_group} ORDER BY created DESC, task_id DESC LIMIT {LIMIT}",
        "tasks, sort=cost": f"{task_group} ORDER BY cost DESC, task_id DESC LIMIT {LIMIT}",
        "summary, 12 months by day": (
            f"SELECT {day} AS day, count(*), sum(neo_credits_nano), sum(base_nano), "
            "sum(tool_calls), sum(input_tokens), sum(output_tokens) FROM streams "
            # The generated data spans exactly the 12 months asked about: no date filter needed.
            f"WHERE scope = '{scope}' AND status IS NOT NULL GROUP BY 1 ORDER BY 1"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    url = manifest["url"]
    engine = create_engine(normalise_database_url(url))
    with engine.connect() as conn:
        scopes = {
            who: conn.execute(
                text("SELECT scope FROM tasks WHERE task_id = :t"), {"t": manifest[f"{who}_task"]}
            ).scalar_one()
            for who in ("admin", "solo")
        }
        counts = {
            who: conn.execute(
                text("SELECT count(*) FROM streams WHERE scope = :s"), {"s": scope}
            ).scalar_one()
            for who, scope in scopes.items()
        }
    server, base = start_serve(url, Path(tempfile.mkdtemp(prefix="taskmeter-query-")))
    print(
        f"store={manifest['store']} streams={manifest['streams']:,} tasks={manifest['tasks']:,} "
        f"admin scope streams={counts['admin']:,} solo scope streams={counts['solo']:,} "
        f"requests={args.requests}"
    )
    print(f"{'who':<6}{'case':<28}{'p50 ms':>9}{'p99 ms':>9}{'naive p50':>11}{'naive p99':>11}")
    peak = 0.0
    try:
        keys = {"admin": manifest["admin_key"], "solo": manifest["solo_key"]}
        clients = {
            who: httpx.Client(base_url=base, headers={"X-Api-Key": key}, timeout=60)
            for who, key in keys.items()
        }
        for who, name, path, params in cases(manifest):
            if args.only not in f"{who} {name}":
                continue
            client = clients[who]

            def ask(client: httpx.Client = client, path: str = path, params: Any = params) -> None:
                answer = client.get(path, params=params)
                assert answer.status_code == 200, answer.text[:300]

            p50, p99 = timed(ask, args.requests, args.warmup)
            peak = max(peak, rss_mib(server.pid))
            naive = ""
            sql = baselines(url, manifest, scopes[who]).get(name)
            if sql is not None:
                with engine.connect() as conn:
                    n50, n99 = timed(
                        lambda conn=conn, sql=sql: conn.execute(text(sql)).fetchall(),
                        max(5, args.requests // 10),
                        2,
                    )
                naive = f"{n50:>11.1f}{n99:>11.1f}"
            print(f"{who:<6}{name:<28}{p50:>9.1f}{p99:>9.1f}{naive}", flush=True)
        print(f"serve peak RSS: {peak:.0f} MiB")
    finally:
        stop_serve(server)


if __name__ == "__main__":
    main()
