"""The four read endpoints of the Usage tag (API.md).

request ─▶ principal ─▶ scope (403 for members/viewers) ─▶ repository ─▶ TaskUsage JSON

The repository reads through `store.read(replica=True)`: on the read replica when one is
configured (some seconds stale at worst; see docs/decisions.md "Read replicas").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from taskmeter.deps import ScopeDep, StoreDep
from taskmeter.errors import BadRequest, Forbidden, NotFound
from taskmeter.governance.scoped import caps_in_scope
from taskmeter.identity.principal import Scope
from taskmeter.jsonio import JSONBody
from taskmeter.usage import repository
from taskmeter.usage.openapi import COMPONENTS as USAGE_COMPONENTS
from taskmeter.usage.openapi import PARAMETERS, SUMMARY_SCHEMA, error_responses, ref
from taskmeter.usage.params import UsageFilters, parse_filters, parse_page, parse_summary
from taskmeter.usage.summary import MAX_PERIODS, summarise

__all__ = ["COMPONENTS", "OPERATIONS", "admin_only_email", "router"]

router = APIRouter(tags=["Usage"])
MAX_TASK_ID = 256

# (path, method) -> the parameters and responses the published documents give these
# operations; the app's OpenAPI hook puts them in place of what FastAPI would infer.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}


def _document(path: str, parameters: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    OPERATIONS[(path, "get")] = {"parameters": parameters, "responses": responses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def admin_only_email(scope: Scope, filters: UsageFilters) -> None:
    """403 for an `email` filter from anyone but a team admin."""
    if filters.email is not None and not scope.is_team_admin:
        raise Forbidden("the email filter is for team admins")


def _list_page(rows: Sequence[Any], total: int, offset: int) -> JSONBody:
    return JSONBody({"data": rows, "total": total, "has_more": offset + len(rows) < total})


@router.get(
    "/api/v1/usage/streams",
    operation_id="get-v1-usage-streams",
    summary="List all stream usages",
    description="Usage of individual streams (one execution within a task). Solo users see "
    "their own streams; team admins see all the team's streams, with email and the email "
    "filter; team members and viewers get 403.",
)
def list_streams(request: Request, scope: ScopeDep, store: StoreDep) -> JSONBody:
    filters = parse_filters(request.query_params, allow_search=False, allow_stream=True)
    page = parse_page(request.query_params)
    admin_only_email(scope, filters)
    with store.read(replica=True) as db:
        rows, total = repository.list_streams(db, scope, filters, page)
    return _list_page(rows, total, page.offset)


@router.get(
    "/api/v1/usage/tasks",
    operation_id="get-v1-usage-tasks",
    summary="List task usages",
    description="One row per task, aggregated over its streams in the caller's scope.",
)
def list_tasks(request: Request, scope: ScopeDep, store: StoreDep) -> JSONBody:
    filters = parse_filters(request.query_params, allow_search=True, allow_stream=False)
    page = parse_page(request.query_params)
    admin_only_email(scope, filters)
    with store.read(replica=True) as db:
        rows, total = repository.list_tasks(db, scope, filters, page)
    return _list_page(rows, total, page.offset)


@router.get(
    "/api/v1/usage/tasks/{task_id:path}",
    operation_id="get-v1-usage-tasks-task_id",
    summary="Get task usage by ID",
    description="Aggregated usage of one task across its streams in the caller's scope; 404 "
    "when none of its streams is in the scope.",
)
def get_task(task_id: str, scope: ScopeDep, store: StoreDep) -> JSONBody:
    if not task_id or len(task_id) > MAX_TASK_ID:
        raise BadRequest(f"task_id must be 1-{MAX_TASK_ID} characters")
    if "\x00" in task_id:
        raise NotFound(f"no task {task_id!r} in your scope")
    with store.read(replica=True) as db:
        row = repository.get_task(db, scope, task_id)
    if row is None:
        raise NotFound(f"no task {task_id!r} in your scope")
    return JSONBody(row)


@router.get(
    "/api/v1/usage/summary",
    operation_id="get-v1-usage-summary",
    summary="Usage summary",
    description="Totals and breakdowns over [from, to) in the caller's scope, by period with "
    "group_by (cut in tz), and the scope's credit account. A group_by whose range holds more "
    f"than {MAX_PERIODS} periods is refused with 400.",
)
def get_summary(request: Request, scope: ScopeDep, store: StoreDep) -> JSONBody:
    query = parse_summary(request.query_params)
    with store.read(replica=True) as db:
        body = summarise(db, scope, query)
        # The scope's caps with their current period (an addition to the published summary;
        # like the rest of the read API they may lag on a replica: authorize reads the primary).
        body["caps"] = caps_in_scope(db, scope)
        return JSONBody(body)


_document(
    "/api/v1/usage/streams",
    PARAMETERS["streams"],
    {
        "200": _json(ref("TaskUsageListResponse"), "List of stream usage records"),
        **error_responses(400, 401, 403, 429, 500),
    },
)
_document(
    "/api/v1/usage/tasks",
    PARAMETERS["tasks"],
    {
        "200": _json(ref("TaskUsageListResponse"), "List of task usage records"),
        **error_responses(400, 401, 403, 429, 500),
    },
)
_document(
    "/api/v1/usage/tasks/{task_id}",
    PARAMETERS["task"],
    {
        "200": _json(ref("TaskUsage"), "Task usage data"),
        **error_responses(400, 401, 403, 404, 429, 500),
    },
)
_document(
    "/api/v1/usage/summary",
    PARAMETERS["summary"],
    {
        "200": _json(ref("UsageSummary"), "Usage summary"),
        **error_responses(400, 401, 403, 429, 500),
    },
)
COMPONENTS = {**USAGE_COMPONENTS, "UsageSummary": SUMMARY_SCHEMA}
