"""Export benchmark: an export's peak memory and rows/s, small store against big, with a floor.

    python bench/generate.py --store sqlite --streams 100000      # once each
    python bench/generate.py --store sqlite --streams 1000000
    python bench/export.py bench/.data/sqlite-100000.json bench/.data/sqlite-1000000.json

For each store and each format (csv, jsonl, parquet; `--formats` to choose), a fresh
`taskmeter serve` is started, warmed with an empty export, and the large team's admin (a
tenth of the store's streams) exports every stream over HTTP into /dev/null; serve's peak RSS
(VmHWM) is read after. Memory that is flat in the row count shows as a big/small peak ratio
near 1.0 although the big export has ~10× the rows. The floor is a bare SELECT of the same
columns over the same rows, run on the database without HTTP or encoding, fetched in
batches (the second of two runs: the page cache warm, as the exports find it): the
export's rows/s beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import start_serve, stop_serve
from sqlalchemy import create_engine, text

from taskmeter.config import normalise_database_url

FORMATS = ("csv", "jsonl", "parquet")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM")


def count_rows(fmt: str, body: io.BytesIO | None, lines: int) -> int:
    if fmt != "parquet":
        return lines - 1 if fmt == "csv" else lines
    import pyarrow.parquet as pq

    assert body is not None
    return int(pq.read_metadata(body).num_rows)


def export_once(manifest: dict[str, Any], fmt: str, level: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        server, base = start_serve(manifest["url"], Path(workdir))
        try:
            headers = {"X-Api-Key": manifest["admin_key"]}
            with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
                warm = client.get("/api/v1/usage/export", params={"format": fmt, "task_id": "none"})
                assert warm.status_code == 200, warm.text
                before = peak_rss_mib(server.pid)
                began = time.monotonic()
                size = lines = 0
                keep = io.BytesIO() if fmt == "parquet" else None
                params = {"format": fmt, "level": level}
                with client.stream("GET", "/api/v1/usage/export", params=params) as answer:
                    assert answer.status_code == 200, answer.read()
                    for data in answer.iter_bytes():
                        size += len(data)
                        lines += data.count(b"\n")
                        if keep is not None:
                            keep.write(data)
                seconds = time.monotonic() - began
                peak = peak_rss_mib(server.pid)
        finally:
            stop_serve(server)
    rows = count_rows(fmt, keep, lines)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_s": rows / seconds,
        "mib": size / 2**20,
        "peak_warm": before,
        "peak": peak,
    }


def floor_rows_s(manifest: dict[str, Any]) -> tuple[int, float]:
    """A bare SELECT of the export's stream columns over the admin's finished streams, the
    second of two runs (the first warms the page cache, as the exports find it)."""
    floor_once(manifest)
    return floor_once(manifest)


def floor_once(manifest: dict[str, Any]) -> tuple[int, float]:
    engine = create_engine(normalise_database_url(manifest["url"]))
    with engine.connect() as conn:
        scope = conn.execute(
            text(
                "SELECT 't' || m.team_id FROM memberships m JOIN users u ON u.id = m.user_id "
                "WHERE u.email = 'admin@bench.example'"
            )
        ).scalar_one()
        began = time.monotonic()
        result = conn.execution_options(stream_results=True, yield_per=1000).execute(
            text(
                "SELECT s.stream_id, s.task_id, s.task_title, s.model, s.status, "
                "s.error_message, s.is_byok, s.created_at, s.finished_at, "
                "s.stated_execution_ms, s.step_count, s.step_latency_ms, s.tool_calls, "
                "s.tool_time_ms, s.agent_triggers, s.llm_calls, s.llm_time_ms, s.input_tokens, "
                "s.output_tokens, s.cache_read_tokens, s.cache_write_tokens, s.base_nano, "
                "s.neo_credits_nano, u.email FROM streams s JOIN users u ON u.id = s.owner_user_id "
                "WHERE s.scope = :scope AND s.status IS NOT NULL ORDER BY s.created_at, s.stream_id"
            ),
            {"scope": scope},
        )
        rows = sum(len(batch) for batch in result.partitions())
        seconds = time.monotonic() - began
    engine.dispose()
    return rows, rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("small", type=Path, help="manifest of the small store")
    parser.add_argument("big", type=Path, help="manifest of the big store")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--level", default="streams", choices=["streams", "tasks", "calls"])
    args = parser.parse_args()
    stores = {"small": json.loads(args.small.read_text()), "big": json.loads(args.big.read_text())}
    results: dict[tuple[str, str], dict[str, float]] = {}
    floors: dict[str, tuple[int, float]] = {}
    for name, manifest in stores.items():
        floors[name] = floor_rows_s(manifest)
        print(
            f"{name}: {manifest['streams']:,} streams in the store ({manifest['store']}); "
            f"floor SELECT {floors[name][0]:,} rows at {floors[name][1]:,.0f} rows/s",
            flush=True,
        )
        for fmt in args.formats.split(","):
            r = results[(name, fmt)] = export_once(manifest, fmt, args.level)
            print(
                f"  {fmt:8} {r['rows']:>9,.0f} rows  {r['mib']:8.1f} MiB  {r['seconds']:7.1f} s  "
                f"{r['rows_s']:>9,.0f} rows/s ({r['rows_s'] / floors[name][1]:.2f}× floor)  "
                f"serve peak RSS {r['peak_warm']:.0f} MiB warm -> {r['peak']:.0f} MiB",
                flush=True,
            )
    print("\nbig / small:")
    for fmt in args.formats.split(","):
        small, big = results[("small", fmt)], results[("big", fmt)]
        print(
            f"  {fmt:8} rows {big['rows'] / small['rows']:5.1f}×   peak RSS "
            f"{big['peak'] / small['peak']:.2f}× ({small['peak']:.0f} -> {big['peak']:.0f} MiB; "
            f"growth over warm {small['peak'] - small['peak_warm']:.0f} -> "
            f"{big['peak'] - big['peak_warm']:.0f} MiB)   rows/s "
            f"{big['rows_s'] / small['rows_s']:.2f}×"
        )


if __name__ == "__main__":
    main()
