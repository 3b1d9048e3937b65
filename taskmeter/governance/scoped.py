"""Caps as a team admin (or a solo user) sees and manages them: only the caps of their scope.

Scope ─ caps_in_scope ─▶ the team's, its members' and its projects' caps (a solo user:
their own and their projects'), each with used, reserved, limit, remaining, resets at
Scope + target ─ target_in_scope ─▶ CapTarget | 403 (a kind the scope cannot manage)
                                              | 404 (a user or project of another scope)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from taskmeter.errors import BadRequest, Forbidden, NotFound
from taskmeter.governance.authorize import Payer, held_against, open_holds
from taskmeter.governance.caps import CapTarget, cap_json, current_period, used_in_period
from taskmeter.identity.principal import Scope
from taskmeter.store.tables import MEMBERSHIPS, PROJECTS, USERS, Cap
from taskmeter.timeutil import utc_now

__all__ = ["cap_in_scope", "caps_in_scope", "target_in_scope"]


def _scope_filter(scope: Scope) -> Any:
    projects = select(PROJECTS.c.id).where(PROJECTS.c.scope == scope.key)
    if scope.kind == "team":
        return or_(Cap.team_id == scope.team_id, Cap.project_id.in_(projects))
    return or_((Cap.kind == "user") & (Cap.user_id == scope.user_id), Cap.project_id.in_(projects))


def caps_in_scope(db: Session, scope: Scope) -> list[dict[str, Any]]:
    caps = list(db.scalars(select(Cap).where(_scope_filter(scope)).order_by(Cap.id)))
    if not caps:
        return []
    now = utc_now()
    holds = (
        open_holds(db, Payer(scope.user_id, scope.team_id, None, scope.key), now)
        if scope.kind == "solo"
        else _team_holds(db, scope, now)
    )
    emails = dict(
        db.execute(
            select(USERS.c.id, USERS.c.email).where(
                USERS.c.id.in_({c.user_id for c in caps if c.user_id is not None})
            )
        ).all()
    )
    projects = dict(
        db.execute(
            select(PROJECTS.c.id, PROJECTS.c.name).where(
                PROJECTS.c.id.in_({c.project_id for c in caps if c.project_id is not None})
            )
        ).all()
    )
    out = []
    for cap in caps:
        start, end = current_period(cap, now)
        names: dict[str, str] = {}
        if cap.user_id is not None:
            names["user"] = emails.get(cap.user_id, "")
        if cap.project_id is not None:
            names["project"] = projects.get(cap.project_id, "")
        out.append(
            cap_json(
                cap,
                used_nano=used_in_period(db, cap, start),
                reserved_nano=held_against(cap, holds, start),
                resets_at=end,
                names=names,
            )
        )
    return out


def _team_holds(db: Session, scope: Scope, now: Any) -> Any:
    # Every open reservation stamped with the team (its members' and its projects' included).
    return open_holds(db, Payer(-1, scope.team_id, None, scope.key), now)


def cap_in_scope(db: Session, scope: Scope, cap_id: int) -> Cap:
    cap = db.scalar(select(Cap).where(Cap.id == cap_id, _scope_filter(scope)))
    if cap is None:
        raise NotFound(f"no cap {cap_id}")
    return cap


def target_in_scope(
    db: Session, scope: Scope, kind: str, user: str | None, project: str | None
) -> CapTarget:
    """The subject a team admin or solo user names, checked against their scope."""
    if kind == "project":
        if project is None:
            raise _bad("a project cap names its `project`")
        pid = db.scalar(
            select(PROJECTS.c.id).where(PROJECTS.c.scope == scope.key, PROJECTS.c.name == project)
        )
        if pid is None:
            raise NotFound(f"no project {project!r}")
        return CapTarget("project", project_id=pid)
    if scope.kind == "team":
        if kind == "team":
            return CapTarget("team", team_id=scope.team_id)
        if kind == "member":
            if user is None:
                raise _bad("a member cap names its `user` (email)")
            uid = db.scalar(
                select(USERS.c.id)
                .join(MEMBERSHIPS, MEMBERSHIPS.c.user_id == USERS.c.id)
                .where(
                    USERS.c.email == user.strip().lower(), MEMBERSHIPS.c.team_id == scope.team_id
                )
            )
            if uid is None:
                raise NotFound(f"no member {user!r} in this team")
            return CapTarget("member", user_id=uid, team_id=scope.team_id)
        if kind == "user":
            raise Forbidden("a user's cap over all their usage is set by the operator")
    else:
        if kind == "user":
            if user is not None and user.strip().lower() != _email(db, scope.user_id):
                raise NotFound(f"no user {user!r} here")
            return CapTarget("user", user_id=scope.user_id)
        if kind in ("team", "member"):
            raise Forbidden("team caps are managed by the team's admins")
    raise _bad(f"kind must be one of user, team, member, project, not {kind!r}")


def _email(db: Session, user_id: int) -> str | None:
    return db.scalar(select(USERS.c.email).where(USERS.c.id == user_id))


def _bad(message: str) -> BadRequest:
    return BadRequest(message)
