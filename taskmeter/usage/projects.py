"""The summary's `by_project`: finished streams' credits and streams, and tasks, per project of
the scope over the window, read from the rows through the partial index on (scope, project,
created_at) — the rollups carry no project."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from taskmeter.identity.principal import Scope
from taskmeter.pricing.credits import credits_from_nano
from taskmeter.store.tables import Project, Stream, Task
from taskmeter.usage.params import Window

__all__ = ["by_project"]


def by_project(db: Session, scope: Scope, window: Window) -> list[dict[str, Any]]:
    if window.empty:
        return []
    streams = [Stream.scope == scope.key, Stream.project_id.is_not(None)]
    tasks = [Task.scope == scope.key, Task.project_id.is_not(None)]
    if window.start is not None:
        streams.append(Stream.created_at >= window.start)
        tasks.append(Task.created_at >= window.start)
    if window.end is not None:
        streams.append(Stream.created_at < window.end)
        tasks.append(Task.created_at < window.end)
    figures: dict[int, list[int]] = {}
    for project_id, credits, count in db.execute(
        select(Stream.project_id, func.sum(Stream.neo_credits_nano), func.count())
        .where(*streams, Stream.status.is_not(None))
        .group_by(Stream.project_id)
    ):
        figures[int(project_id or 0)] = [int(credits or 0), int(count), 0]
    for project_id, count in db.execute(
        select(Task.project_id, func.count()).where(*tasks).group_by(Task.project_id)
    ):
        figures.setdefault(int(project_id or 0), [0, 0, 0])[2] = int(count)
    if not figures:
        return []
    names = dict(
        db.execute(select(Project.id, Project.name).where(Project.id.in_(sorted(figures)))).all()
    )
    ranked = sorted(figures.items(), key=lambda item: (-item[1][0], names.get(item[0], "")))
    return [
        {
            "project": names.get(pid, ""),
            "neo_credits": credits_from_nano(credits),
            "streams": streams_n,
            "tasks": tasks_n,
        }
        for pid, (credits, streams_n, tasks_n) in ranked
    ]
