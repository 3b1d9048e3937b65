"""The governance API: authorize a stream, release its reservation, manage caps in scope.

POST   /api/v1/usage/authorize            service keys, or a user's key for itself
DELETE /api/v1/usage/reservations/{id}    the same callers
GET    /api/v1/usage/caps                 team admins (their team), solo users (their own)
PUT    /api/v1/usage/caps                 the same: create or change one cap
DELETE /api/v1/usage/caps/{cap_id}
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from taskmeter.deps import AUTH_RESPONSES, PrincipalDep, ScopeDep, StoreDep
from taskmeter.errors import BadRequest, ErrorResponse, NotFound
from taskmeter.governance.authorize import AuthorizeRequest, authorize, release
from taskmeter.governance.caps import CapError, parse_limit, parse_thresholds, remove_cap, set_cap
from taskmeter.governance.scoped import cap_in_scope, caps_in_scope, target_in_scope
from taskmeter.jsonio import JSONBody, JSONBodyRoute

__all__ = ["router"]

router = APIRouter(tags=["Governance"], route_class=JSONBodyRoute)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # No stored name holds a NUL, and PostgreSQL cannot even compare against one.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class AuthorizeBody(_Body):
    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=320,
        description="The stream owner's email (default: the key's own user).",
    )
    team: str | None = Field(default=None, max_length=200)
    project: str | None = Field(default=None, min_length=1, max_length=200)
    task_id: str | None = Field(default=None, min_length=1, max_length=256)
    stream_id: uuid.UUID | None = None
    estimate_credits: Decimal | None = Field(
        default=None, description="Credits to hold while the stream runs (default 0)."
    )


class CapBody(_Body):
    kind: Literal["user", "team", "member", "project"]
    user: str | None = Field(default=None, max_length=320)
    project: str | None = Field(default=None, max_length=200)
    period: Literal["day", "week", "month", "total"]
    tz: str = Field(default="UTC", max_length=64)
    limit_credits: Decimal
    thresholds: list[int] | None = None


REFUSED: dict[int | str, dict[str, Any]] = {
    402: {
        "model": ErrorResponse,
        "description": "Refused: insufficient_neo_credits, user_spending_cap_reached or "
        "project_spending_cap_reached, with the cap or the credit account that refused",
    }
}


@router.post(
    "/api/v1/usage/authorize",
    operation_id="post-v1-usage-authorize",
    summary="May this stream run? Hold its estimate",
    responses={**AUTH_RESPONSES, **REFUSED, 400: {"model": ErrorResponse}},
)
async def post_authorize(
    body: AuthorizeBody, request: Request, principal: PrincipalDep, store: StoreDep
) -> JSONBody:
    try:
        estimate = 0 if body.estimate_credits is None else parse_limit(body.estimate_credits)
    except CapError:
        raise BadRequest(
            "estimate_credits must be 0 or more credits with at most 9 decimals"
        ) from None
    settings = request.app.state.settings
    user = body.user or principal.email
    if user is None:
        raise BadRequest("`user` is required with a service key")
    call = AuthorizeRequest(
        user=user,
        team=body.team,
        project=body.project,
        task_id=body.task_id,
        stream_id=body.stream_id,
        estimate_nano=estimate,
    )

    def run(db: Session) -> dict[str, Any]:
        return authorize(
            db,
            principal,
            call,
            require_credits=settings.require_credits,
            ttl_s=settings.reservation_ttl_s,
        )

    return JSONBody(await run_in_threadpool(store.run_small_write, run))


@router.delete(
    "/api/v1/usage/reservations/{reservation_id}",
    operation_id="delete-v1-usage-reservation",
    summary="Release a reservation's hold",
    responses={**AUTH_RESPONSES, 404: {"model": ErrorResponse}},
)
def delete_reservation(
    reservation_id: str, principal: PrincipalDep, store: StoreDep
) -> dict[str, Any]:
    store.run_small_write(lambda db: release(db, principal, reservation_id))
    return {"released": True, "reservation_id": reservation_id}


@router.get(
    "/api/v1/usage/caps",
    operation_id="get-v1-usage-caps",
    summary="The caps in the caller's scope, with their current period",
    responses={**AUTH_RESPONSES},
)
def get_caps(scope: ScopeDep, store: StoreDep) -> dict[str, Any]:
    with store.read() as db:
        return {"data": caps_in_scope(db, scope)}


@router.put(
    "/api/v1/usage/caps",
    operation_id="put-v1-usage-caps",
    summary="Create or change a cap in the caller's scope",
    responses={
        **AUTH_RESPONSES,
        201: {"description": "The cap was created"},
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
    },
)
def put_cap(body: CapBody, scope: ScopeDep, store: StoreDep) -> JSONResponse:
    try:
        limit = parse_limit(body.limit_credits)
        thresholds = parse_thresholds(body.thresholds)
    except CapError as exc:
        raise BadRequest(str(exc), code=exc.code) from None
    with store.write() as db:
        target = target_in_scope(db, scope, body.kind, body.user, body.project)
        try:
            cap, created = set_cap(
                db, target, period=body.period, tz=body.tz, limit_nano=limit,
                thresholds=thresholds,
            )  # fmt: skip
        except CapError as exc:
            raise BadRequest(str(exc), code=exc.code) from None
        cap_id = cap.id
    with store.read() as db:
        shown = next(c for c in caps_in_scope(db, scope) if c["id"] == cap_id)
    return JSONResponse(shown, status_code=201 if created else 200)


@router.delete(
    "/api/v1/usage/caps/{cap_id}",
    operation_id="delete-v1-usage-cap",
    summary="Remove a cap in the caller's scope",
    responses={**AUTH_RESPONSES, 404: {"model": ErrorResponse}},
)
def delete_cap(cap_id: int, scope: ScopeDep, store: StoreDep) -> dict[str, Any]:
    if not 0 < cap_id < 2**31:
        raise NotFound(f"no cap {cap_id}")
    with store.write() as db:
        cap = cap_in_scope(db, scope, cap_id)
        remove_cap(db, cap.id)
    return {"removed": True, "id": cap_id}
