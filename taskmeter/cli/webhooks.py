"""`taskmeter webhooks …`: the endpoints alerts are sent to, and what was delivered."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from taskmeter.cli.common import JsonOption, fail, print_json, print_table, write
from taskmeter.timeutil import iso_z, utc_now
from taskmeter.webhooks.endpoints import (
    STATUSES,
    WebhookError,
    add_endpoint,
    deliveries,
    endpoint_json,
    list_endpoints,
    parse_events,
    remove_endpoint,
    validate_url,
)
from taskmeter.webhooks.outbox import EVENT_TYPES, TEST_EVENT, enqueue

__all__ = ["webhooks"]

webhooks = typer.Typer(
    help="Webhook endpoints for alerts (cap.threshold, cap.reached, credits.low, "
    "credits.expiring) and their deliveries.",
    no_args_is_help=True,
)


@webhooks.command("add")
def webhooks_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL.")],
    events: Annotated[
        str, typer.Option("--events", help=f"Comma-separated: {','.join(EVENT_TYPES)}.")
    ],
    description: Annotated[
        str | None, typer.Option("--description", help="A note for `list`.")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Register an endpoint; prints its id and its signing secret (shown only now)."""
    try:
        url = validate_url(url)
        names = parse_events(events)
    except WebhookError as exc:
        fail(str(exc))
    with write(ctx) as db:
        try:
            endpoint = add_endpoint(db, url, names, description)
        except WebhookError as exc:
            fail(str(exc))
        out = {**endpoint_json(endpoint), "secret": endpoint.secret}
    if as_json:
        print_json(out)
        return
    print(f"added webhook endpoint {out['id']}: {url} ({', '.join(names)})")
    print(f"secret (shown once, verify webhook-signature with it): {out['secret']}")


@webhooks.command("list")
def webhooks_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List the endpoints (never their secrets)."""
    with write(ctx) as db:
        rows = [endpoint_json(endpoint) for endpoint in list_endpoints(db)]
    if as_json:
        print_json(rows)
        return
    print_table(
        "Webhook endpoints",
        ["id", "url", "events", "description", "created"],
        [
            [r["id"], r["url"], ",".join(r["events"]), r["description"], r["created_at"]]
            for r in rows
        ],
    )


@webhooks.command("remove")
def webhooks_remove(
    ctx: typer.Context,
    endpoint_id: Annotated[int, typer.Argument(help="The id `webhooks list` shows.")],
    as_json: bool = JsonOption,
) -> None:
    """Remove an endpoint; its pending deliveries are dropped (marked failed)."""
    with write(ctx) as db:
        try:
            dropped = remove_endpoint(db, endpoint_id)
        except WebhookError as exc:
            fail(str(exc))
    if as_json:
        print_json({"removed": True, "id": endpoint_id, "dropped_pending": dropped})
    else:
        print(f"removed webhook endpoint {endpoint_id} ({dropped} pending deliveries dropped)")


@webhooks.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered or failed.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
    as_json: bool = JsonOption,
) -> None:
    """What was sent, what waits for a retry, what failed (newest first)."""
    if status is not None and status not in STATUSES:
        fail(f"--status {status!r} is not one of {', '.join(STATUSES)}")
    if not 1 <= limit <= 10_000:
        fail("--limit must be from 1 to 10000")
    with write(ctx) as db:
        rows = deliveries(db, status, limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        "Webhook deliveries",
        ["id", "endpoint", "event", "status", "attempts", "last", "next / done"],
        [
            [
                r["id"], r["endpoint_id"], r["event"], r["status"],
                r["attempts"], r["last_error"] or r["last_status"],
                r["next_attempt_at"] or r["delivered_at"],
            ]
            for r in rows
        ],
    )  # fmt: skip


@webhooks.command("test")
def webhooks_test(
    ctx: typer.Context,
    endpoint_id: Annotated[int, typer.Argument(help="The id `webhooks list` shows.")],
    as_json: bool = JsonOption,
) -> None:
    """Send a `webhook.test` event to one endpoint (the running `serve` delivers it)."""
    with write(ctx) as db:
        if endpoint_id not in {endpoint.id for endpoint in list_endpoints(db)}:
            fail(f"no webhook endpoint {endpoint_id}")
        event_id = enqueue(
            db,
            TEST_EVENT,
            {"endpoint_id": endpoint_id, "sent_at": iso_z(utc_now())},
            dedupe_key=f"test:{uuid.uuid4().hex}",
            endpoint_ids=[endpoint_id],
        )
    if as_json:
        print_json({"enqueued": True, "event_id": event_id, "endpoint_id": endpoint_id})
    else:
        print(f"enqueued {TEST_EVENT} for endpoint {endpoint_id} (see `webhooks deliveries`)")
