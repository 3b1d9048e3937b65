"""`taskmeter usage tasks|streams|task|summary` and `taskmeter demo`: usage from the terminal
(`taskmeter usage export` is in cli/export.py).

The usage commands are clients of a running server, built on `taskmeter.client`; they read
the server and key from --url/--key or TASKMETER_URL/TASKMETER_API_KEY.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from taskmeter.cli.common import (
    JsonOption,
    fail,
    open_store,
    print_json,
    print_table,
    settings_from,
)
from taskmeter.client import TaskmeterError, TaskUsage, UsageClient

usage = typer.Typer(help="Read usage from a running taskmeter (needs a key).", no_args_is_help=True)

UrlOption = typer.Option("--url", help="Server URL (else TASKMETER_URL, else 127.0.0.1:8080).")
KeyOption = typer.Option("--key", help="API key (else TASKMETER_API_KEY).")


def server_and_key(url: str | None, key: str | None) -> tuple[str, str]:
    """The server URL and API key from the options, else the environment."""
    key = key or os.environ.get("TASKMETER_API_KEY")
    if not key:
        fail("give an API key with --key or TASKMETER_API_KEY")
    return url or os.environ.get("TASKMETER_URL", "http://127.0.0.1:8080"), key


def _client(url: str | None, key: str | None) -> UsageClient:
    base, api_key = server_and_key(url, key)
    return UsageClient(base, api_key=api_key)


def _rows(rows: list[TaskUsage], with_stream: bool) -> list[list[Any]]:
    return [
        [
            *([r.stream_id] if with_stream else []),
            r.task_id,
            r.email or "",
            r.status,
            r.model,
            r.created_at.isoformat(timespec="seconds"),
            r.stream_count,
            r.llm_calls,
            r.tool_calls,
            f"{r.neo_credits or 0:.6f}",
        ]
        for r in rows
    ]


COLUMNS = [
    "task",
    "email",
    "status",
    "model",
    "created",
    "streams",
    "llm calls",
    "tool calls",
    "credits",
]


def _list(
    kind: str, url: str | None, key: str | None, as_json: bool, filters: dict[str, Any]
) -> None:
    with _client(url, key) as client:
        try:
            page = client.streams(**filters) if kind == "streams" else client.tasks(**filters)
        except TaskmeterError as exc:
            fail(f"{exc.code}: {exc.message}")
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    columns = (["stream"] if kind == "streams" else []) + COLUMNS
    print_table(
        f"{kind} ({len(page.data)} of {page.total})", columns, _rows(page.data, kind == "streams")
    )


@usage.command("tasks")
def usage_tasks(
    url: Annotated[str | None, UrlOption] = None,
    key: Annotated[str | None, KeyOption] = None,
    status: Annotated[str | None, typer.Option(help="completed, error, failed, aborted…")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="Part of a task id, title or email.")] = None,
    since: Annotated[str | None, typer.Option("--from", help="RFC 3339 or date.")] = None,
    until: Annotated[str | None, typer.Option("--to", help="RFC 3339 or date.")] = None,
    email: Annotated[str | None, typer.Option(help="Team admins: one member's tasks.")] = None,
    sort: Annotated[str, typer.Option(help="created_at or cost.")] = "created_at",
    limit: Annotated[int, typer.Option()] = 20,
    offset: Annotated[int, typer.Option()] = 0,
    as_json: bool = JsonOption,
) -> None:
    """Tasks, aggregated over their streams."""
    _list(
        "tasks",
        url,
        key,
        as_json,
        {
            "status": status,
            "model": model,
            "search": search,
            "since": since,
            "until": until,
            "email": email,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        },
    )


@usage.command("streams")
def usage_streams(
    url: Annotated[str | None, UrlOption] = None,
    key: Annotated[str | None, KeyOption] = None,
    task_id: Annotated[str | None, typer.Option("--task-id")] = None,
    status: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option("--from")] = None,
    until: Annotated[str | None, typer.Option("--to")] = None,
    email: Annotated[str | None, typer.Option()] = None,
    sort: Annotated[str, typer.Option()] = "created_at",
    limit: Annotated[int, typer.Option()] = 20,
    offset: Annotated[int, typer.Option()] = 0,
    as_json: bool = JsonOption,
) -> None:
    """Streams, one row each."""
    _list(
        "streams",
        url,
        key,
        as_json,
        {
            "task_id": task_id,
            "status": status,
            "model": model,
            "since": since,
            "until": until,
            "email": email,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        },
    )


@usage.command("task")
def usage_task(
    task_id: str,
    url: Annotated[str | None, UrlOption] = None,
    key: Annotated[str | None, KeyOption] = None,
    as_json: bool = JsonOption,
) -> None:
    """One task, with its tool breakdown."""
    with _client(url, key) as client:
        try:
            row = client.task(task_id)
        except TaskmeterError as exc:
            fail(f"{exc.code}: {exc.message}")
    if as_json:
        print_json(row.model_dump(mode="json", exclude_none=False))
        return
    print_table(f"task {row.task_id}", COLUMNS, _rows([row], False))
    print_table(
        "tools",
        ["tool", "calls", "total ms"],
        [
            [name, entry.calls, entry.total_duration_ms]
            for name, entry in sorted(
                (row.tool_breakdown or {}).items(), key=lambda kv: -kv[1].total_duration_ms
            )
        ],
    )


@usage.command("summary")
def usage_summary(
    url: Annotated[str | None, UrlOption] = None,
    key: Annotated[str | None, KeyOption] = None,
    since: Annotated[str | None, typer.Option("--from")] = None,
    until: Annotated[str | None, typer.Option("--to")] = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help="day, week or month.")] = None,
    tz: Annotated[str | None, typer.Option(help="IANA zone for periods.")] = None,
    as_json: bool = JsonOption,
) -> None:
    """Totals, by model, by member, by period, and the credit account."""
    with _client(url, key) as client:
        try:
            s = client.summary(since=since, until=until, group_by=group_by, tz=tz)
        except TaskmeterError as exc:
            fail(f"{exc.code}: {exc.message}")
    if as_json:
        print_json(s.model_dump(mode="json"))
        return
    print_table(
        "summary",
        ["tasks", "credits", "steps", "tool calls", "issued", "available"],
        [
            [
                s.total_tasks,
                f"{s.total_neo_credits:.6f}",
                s.total_steps,
                s.total_tool_calls,
                s.total_issued_neo_credits,
                f"{s.total_available_neo_credits:.6f}",
            ]
        ],
    )
    print_table(
        "by model",
        ["model", "tasks", "streams", "credits", "input", "output"],
        [
            [
                m,
                v["tasks"],
                v["streams"],
                f"{v['neo_credits']:.6f}",
                v["input_tokens"],
                v["output_tokens"],
            ]
            for m, v in s.by_model.items()
        ],
    )
    if s.by_period:
        print_table(
            "by period",
            ["period", "credits", "tasks"],
            [[p["date"], f"{p['neo_credits']:.6f}", p["tasks"]] for p in s.by_period],
        )


def demo(
    ctx: typer.Context,
    tasks: Annotated[int, typer.Option(help="How many tasks to make.")] = 300,
    seed: Annotated[int, typer.Option(help="Same seed, same data (re-runs add nothing).")] = 7,
    as_json: bool = JsonOption,
) -> None:
    """Fill the store with a realistic demo organisation and print keys to try."""
    from taskmeter.demo import run_demo

    settings = settings_from(ctx)
    with open_store(ctx) as store:
        result = run_demo(store, settings, tasks=tasks, seed=seed)
    if as_json:
        print_json(
            {
                "keys": result.keys,
                "tasks": result.tasks,
                "streams": result.streams,
                "events": result.events,
                "caps": result.caps,
            }
        )
        return
    print(
        f"recorded {result.events} events: {result.tasks} tasks, {result.streams} streams "
        "over the last 90 days"
    )
    print(f"spending caps: {'; '.join(result.caps)}")
    print_table("demo keys (shown once)", ["user", "key"], list(result.keys.items()))
    admin = result.keys["admin@acme.example"]
    print("\ntry, once `taskmeter serve` runs:")
    print(
        f"  curl -s -H 'X-Api-Key: {admin}' 'localhost:8080/api/v1/usage/tasks?sort=cost&limit=5'"
    )
    print(f"  taskmeter usage summary --key {admin} --group-by week")
