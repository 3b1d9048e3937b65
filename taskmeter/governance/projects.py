"""Projects: named groups of streams inside a team or a solo user's own usage.

A project lives in one scope (``t<team>`` or ``u<user>``, the key streams are stamped with);
a stream names it by name on `stream.started`, and only a project of the stream's own scope
can be named. Archived projects keep their streams and still take usage that happened; new
authorizations for them are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from taskmeter.identity.principal import scope_key
from taskmeter.identity.service import (
    AlreadyExists,
    IdentityError,
    NoSuchThing,
    find_team,
    find_user,
)
from taskmeter.store.tables import MEMBERSHIPS, PROJECTS, Project
from taskmeter.timeutil import utc_now

__all__ = [
    "ProjectRef",
    "archive_project",
    "create_project",
    "find_project",
    "list_projects",
    "owner_scope",
    "projects_by_name",
]

MAX_NAME = 200


@dataclass(frozen=True)
class ProjectRef:
    id: int
    scope: str
    name: str
    archived: bool


def owner_scope(
    db: Session, *, team_name: str | None, user_email: str | None
) -> tuple[str, int | None, int | None]:
    """(scope, team id, user id) of `--team TEAM` or `--user EMAIL` (a solo user's own)."""
    if (team_name is None) == (user_email is None):
        raise IdentityError("give exactly one of --team TEAM or --user EMAIL")
    if team_name is not None:
        team = find_team(db, team_name)
        return scope_key(team_id=team.id, user_id=0), team.id, None
    assert user_email is not None
    user = find_user(db, user_email)
    in_team = db.scalar(select(MEMBERSHIPS.c.team_id).where(MEMBERSHIPS.c.user_id == user.id))
    if in_team is not None:
        raise IdentityError(
            f"{user.email} is in a team: their streams are the team's, give --team instead"
        )
    return scope_key(team_id=None, user_id=user.id), None, user.id


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise IdentityError(f"a project name has 1-{MAX_NAME} characters")
    return name


def create_project(
    db: Session, name: str, *, team_name: str | None = None, user_email: str | None = None
) -> Project:
    scope, team_id, user_id = owner_scope(db, team_name=team_name, user_email=user_email)
    name = _valid_name(name)
    if find_project(db, scope, name) is not None:
        raise AlreadyExists(f"project {name!r} exists already")
    project = Project(
        scope=scope, name=name, team_id=team_id, user_id=user_id, created_at=utc_now()
    )
    db.add(project)
    db.flush()
    return project


def find_project(db: Session, scope: str, name: str) -> Project | None:
    return db.scalar(select(Project).where(Project.scope == scope, Project.name == name))


def list_projects(db: Session, scope: str | None = None) -> list[Project]:
    query = select(Project).order_by(Project.scope, Project.name)
    if scope is not None:
        query = query.where(Project.scope == scope)
    return list(db.scalars(query))


def archive_project(
    db: Session, name: str, *, team_name: str | None = None, user_email: str | None = None
) -> Project:
    scope, _, _ = owner_scope(db, team_name=team_name, user_email=user_email)
    project = find_project(db, scope, _valid_name(name))
    if project is None:
        raise NoSuchThing(f"no project {name!r} there")
    if project.archived_at is None:
        project.archived_at = utc_now()
        db.flush()
    return project


def projects_by_name(
    db: Session, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], ProjectRef]:
    """The projects of these (scope, name) pairs that exist, in one query."""
    pairs = sorted(set(wanted))
    if not pairs:
        return {}
    rows = db.execute(
        select(PROJECTS.c.id, PROJECTS.c.scope, PROJECTS.c.name, PROJECTS.c.archived_at).where(
            tuple_(PROJECTS.c.scope, PROJECTS.c.name).in_(pairs)
        )
    )
    return {
        (scope, name): ProjectRef(pid, scope, name, archived is not None)
        for pid, scope, name, archived in rows
    }


def project_names(db: Session, ids: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = db.execute(select(PROJECTS.c.id, PROJECTS.c.name).where(PROJECTS.c.id.in_(wanted)))
    return {k: v for k, v in rows}
