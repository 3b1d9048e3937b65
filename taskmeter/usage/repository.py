"""Scoped queries over streams and tasks: every function takes the caller's `Scope`.

A scope's key is the only way rows are reached, so nothing here can return another team's
or another user's usage. Orders follow the indexes (read backwards): created_at DESC,
stream_id DESC (task_id DESC), or base amount DESC then the same.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from taskmeter.identity.principal import Scope
from taskmeter.store.tables import (
    PROJECTS,
    STREAMS,
    USERS,
    Project,
    ScopeTotal,
    Stream,
    StreamRow,
    Task,
    User,
)
from taskmeter.usage.figures import stream_figures, to_task_usage, with_email
from taskmeter.usage.params import Page, UsageFilters

__all__ = [
    "get_task",
    "list_streams",
    "list_tasks",
    "owner_id_for_email",
    "project_id_in_scope",
    "stream_conditions",
    "task_conditions",
]


def owner_id_for_email(db: Session, email: str) -> int | None:
    return db.scalar(select(User.id).where(User.email == email.strip().lower()))


def project_id_in_scope(db: Session, scope: Scope, name: str) -> int | None:
    if "\x00" in name:  # no stored name holds one, and PostgreSQL cannot compare against it
        return None
    return db.scalar(
        select(Project.id).where(Project.scope == scope.key, Project.name == name.strip())
    )


def with_project(usage: str, project: str | None) -> str:
    """A rendered `TaskUsage` with its project's name (an addition to the published row)."""
    if project is None:
        return usage
    return '{"project":' + orjson.dumps(project).decode() + "," + usage[1:]


def _shared_conditions(
    db: Session, rows: type[Stream] | type[Task], scope: Scope, f: UsageFilters
) -> list[ColumnElement[bool]] | None:
    """The filters streams and tasks share (same column names), or None if none can match."""
    conditions: list[ColumnElement[bool]] = [rows.scope == scope.key]
    if f.task_id is not None:
        conditions.append(rows.task_id == f.task_id)
    if f.status is not None:
        conditions.append(rows.status == f.status)
    if f.model is not None:
        conditions.append(rows.model == f.model)
    if f.is_byok is not None:
        conditions.append(rows.is_byok.is_(f.is_byok))
    if f.window.start is not None:
        conditions.append(rows.created_at >= f.window.start)
    if f.window.end is not None:
        conditions.append(rows.created_at < f.window.end)
    if f.email is not None:
        owner = owner_id_for_email(db, f.email)
        if owner is None:
            return None
        conditions.append(rows.owner_user_id == owner)
    if f.project is not None:
        project = project_id_in_scope(db, scope, f.project)
        if project is None:
            return None
        conditions.append(rows.project_id == project)
    return conditions


def stream_conditions(
    db: Session, scope: Scope, f: UsageFilters
) -> list[ColumnElement[bool]] | None:
    """The scope's finished streams that match `f` (the list endpoint's and the export's), or
    None if none can."""
    conditions = _shared_conditions(db, Stream, scope, f)
    if conditions is None:
        return None
    conditions.append(Stream.status.is_not(None))  # readers see finished streams only
    if f.stream_id is not None:
        conditions.append(Stream.stream_id == f.stream_id)
    return conditions


def _unfiltered(f: UsageFilters) -> bool:
    return all(
        value is None
        for value in (
            f.task_id, f.stream_id, f.status, f.model, f.email, f.is_byok, f.search,
            f.window.start, f.window.end, f.project,
        )
    )  # fmt: skip


def _total(
    db: Session,
    rows: Any,
    conditions: list[ColumnElement[bool]],
    scope: Scope,
    f: UsageFilters,
    kept: Any,
) -> int:
    """A filtered page counts its rows; an unfiltered one reads the scope's kept total."""
    if _unfiltered(f):
        return int(db.scalar(select(kept).where(ScopeTotal.scope == scope.key)) or 0)
    return int(db.scalar(select(func.count()).select_from(rows).where(*conditions)) or 0)


def _page(query: Any, page: Page) -> Any:
    return query.limit(page.limit).offset(page.offset)


def list_streams(
    db: Session, scope: Scope, f: UsageFilters, page: Page
) -> tuple[list[dict[str, Any]], int]:
    conditions = None if f.matches_nothing else stream_conditions(db, scope, f)
    if conditions is None:
        return [], 0
    total = _total(db, Stream, conditions, scope, f, ScopeTotal.finished_streams)
    if page.offset >= total:
        return [], total
    order: list[ColumnElement[Any]] = [Stream.created_at.desc(), Stream.stream_id.desc()]
    if page.sort == "cost":
        order.insert(0, Stream.base_nano.desc())
    # Plain rows, not ORM instances: loading instances had been an eighth of a page's time.
    query = (
        select(*STREAMS.c, USERS.c.email, PROJECTS.c.name)
        .outerjoin(USERS, USERS.c.id == STREAMS.c.owner_user_id)
        .outerjoin(PROJECTS, PROJECTS.c.id == STREAMS.c.project_id)
        .where(*conditions)
        .order_by(*order)
    )
    rows = []
    for *values, email, project in db.execute(_page(query, page)):
        row = to_task_usage(
            stream_figures(StreamRow(values)),
            as_task=False,
            email=email if scope.is_team_admin else None,
        )
        if project is not None:
            row["project"] = project
        rows.append(row)
    return rows, total


def task_conditions(db: Session, scope: Scope, f: UsageFilters) -> list[ColumnElement[bool]] | None:
    """The scope's tasks that match `f` (the list endpoint's and the export's), or None."""
    conditions = _shared_conditions(db, Task, scope, f)
    if conditions is None:
        return None
    if f.search:
        matches = [
            Task.task_id.icontains(f.search, autoescape=True),
            Task.task_title.icontains(f.search, autoescape=True),
        ]
        if scope.is_team_admin:
            owners = select(User.id).where(User.email.icontains(f.search, autoescape=True))
            matches.append(Task.owner_user_id.in_(owners))
        conditions.append(or_(*matches))
    return conditions


def list_tasks(
    db: Session, scope: Scope, f: UsageFilters, page: Page
) -> tuple[list[orjson.Fragment], int]:
    """A page of `TaskUsage` rows, already JSON (each task's stored rendering)."""
    conditions = None if f.matches_nothing else task_conditions(db, scope, f)
    if conditions is None:
        return [], 0
    total = _total(db, Task, conditions, scope, f, ScopeTotal.tasks)
    if page.offset >= total:
        return [], total
    order: list[ColumnElement[Any]] = [Task.created_at.desc(), Task.task_id.desc()]
    if page.sort == "cost":
        order.insert(0, Task.base_nano.desc())
    query = (
        select(Task.usage, User.email, Project.name)
        .outerjoin(User, User.id == Task.owner_user_id)
        .outerjoin(Project, Project.id == Task.project_id)
        .where(*conditions)
        .order_by(*order)
    )
    rows = [
        orjson.Fragment(
            with_project(with_email(usage, email if scope.is_team_admin else None), project)
        )
        for usage, email, project in db.execute(_page(query, page))
    ]
    return rows, total


def get_task(db: Session, scope: Scope, task_id: str) -> orjson.Fragment | None:
    """The task's `TaskUsage`, already JSON (the stored rendering)."""
    found = db.execute(
        select(Task.usage, User.email, Project.name)
        .outerjoin(User, User.id == Task.owner_user_id)
        .outerjoin(Project, Project.id == Task.project_id)
        .where(Task.scope == scope.key, Task.task_id == task_id)
    ).first()
    if found is None:
        return None
    usage, email, project = found
    return orjson.Fragment(
        with_project(with_email(usage, email if scope.is_team_admin else None), project)
    )
