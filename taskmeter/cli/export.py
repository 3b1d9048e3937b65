"""`taskmeter usage export`: a running server's export endpoint, streamed into a file.

    taskmeter usage export --format csv --level tasks --from 2026-03-01 --output march.csv

The body goes to `FILE.part` as it arrives (a Rich progress line counts bytes and, for CSV
and JSON Lines, rows) and is renamed to FILE once complete: an interrupted export leaves no
file that looks whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from taskmeter.cli.common import fail
from taskmeter.cli.usage import KeyOption, UrlOption, server_and_key

__all__ = ["export"]


def _error(answer: httpx.Response) -> str:
    try:
        body: dict[str, Any] = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    return f"{body.get('code', answer.status_code)}: {body.get('message', body.get('error'))}"


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv, jsonl, parquet or focus (FOCUS 1.2 CSV).")
    ] = "csv",
    level: Annotated[str, typer.Option(help="streams, tasks or calls.")] = "streams",
    url: Annotated[str | None, UrlOption] = None,
    key: Annotated[str | None, KeyOption] = None,
    task_id: Annotated[str | None, typer.Option("--task-id")] = None,
    stream_id: Annotated[str | None, typer.Option("--stream-id")] = None,
    status: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option("--from", help="RFC 3339 or date.")] = None,
    until: Annotated[str | None, typer.Option("--to", help="RFC 3339 or date.")] = None,
    email: Annotated[str | None, typer.Option(help="Team admins: one member's usage.")] = None,
    is_byok: Annotated[bool | None, typer.Option("--byok/--no-byok")] = None,
    project: Annotated[str | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="level=tasks: id, title or email.")] = None,
) -> None:
    """Export usage (the list endpoints' filters) into a file, streamed."""
    base, api_key = server_and_key(url, key)
    params = {
        "format": fmt,
        "level": level,
        "task_id": task_id,
        "stream_id": stream_id,
        "status": status,
        "model": model,
        "from": since,
        "to": until,
        "email": email,
        "is_byok": None if is_byok is None else str(is_byok).lower(),
        "project": project,
        "search": search,
    }
    partial = output.with_name(output.name + ".part")
    rows = 0
    try:
        with (
            httpx.Client(base_url=base, headers={"X-Api-Key": api_key}, timeout=60) as client,
            client.stream(
                "GET",
                "/api/v1/usage/export",
                params={k: v for k, v in params.items() if v is not None},
            ) as answer,
        ):
            if answer.status_code != 200:
                answer.read()
                fail(_error(answer))
            with (
                partial.open("wb") as sink,
                Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TextColumn("{task.fields[rows]} rows"),
                    TimeElapsedColumn(),
                    transient=False,
                ) as progress,
            ):
                bar = progress.add_task(f"export {output.name}", total=None, rows="–")
                lines = fmt != "parquet"
                for data in answer.iter_bytes():
                    sink.write(data)
                    rows += data.count(b"\n") if lines else 0
                    shown = max(0, rows - 1) if fmt in ("csv", "focus") else rows
                    progress.update(bar, advance=len(data), rows=f"{shown:,}" if lines else "–")
                progress.update(bar, total=answer.num_bytes_downloaded)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        fail(f"the export did not complete: {exc}")
    os.replace(partial, output)
    print(f"wrote {output} ({output.stat().st_size:,} bytes)")
