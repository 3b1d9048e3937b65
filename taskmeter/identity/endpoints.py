"""`GET /api/v1/user`: who the credential belongs to."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from taskmeter.deps import AUTH_RESPONSES, PrincipalDep
from taskmeter.errors import Forbidden

__all__ = ["router"]

router = APIRouter(tags=["User"])


class TeamInfo(BaseModel):
    id: int
    name: str
    role: str


class UserInfo(BaseModel):
    id: int
    email: str
    role: str
    team: TeamInfo | None


@router.get(
    "/api/v1/user",
    operation_id="get-v1-user",
    summary="The caller's user, system role and team",
    responses=AUTH_RESPONSES,
)
def get_user(principal: PrincipalDep) -> UserInfo:
    if principal.user_id is None or principal.email is None:
        raise Forbidden("a service key belongs to no user")
    team = principal.team
    return UserInfo(
        id=principal.user_id,
        email=principal.email,
        role=principal.system_role or "user",
        team=TeamInfo(id=team.id, name=team.name, role=team.role) if team else None,
    )
