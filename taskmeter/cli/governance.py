"""`taskmeter projects …` and `taskmeter caps …`: the operator's side of spend governance."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from taskmeter.cli.common import JsonOption, fail, print_json, print_table, write
from taskmeter.governance.caps import (
    CapTarget,
    cap_json,
    current_period,
    parse_limit,
    parse_thresholds,
    remove_cap,
    set_cap,
    used_in_period,
)
from taskmeter.governance.projects import (
    archive_project,
    create_project,
    find_project,
    list_projects,
    owner_scope,
)
from taskmeter.identity.service import IdentityError, find_team, find_user
from taskmeter.store.tables import MEMBERSHIPS, PROJECTS, TEAMS, USERS, Cap, Project
from taskmeter.timeutil import utc_now

__all__ = ["caps", "projects"]

projects = typer.Typer(help="Projects of a team or a solo user.", no_args_is_help=True)
caps = typer.Typer(
    help="Spending caps on users, teams, members and projects.", no_args_is_help=True
)

TeamOption = typer.Option("--team", help="The team.")
UserOption = typer.Option("--user", help="The user (email).")


def _project_json(db: Session, project: Project) -> dict[str, Any]:
    owner = None
    if project.team_id is not None:
        owner = {"team": db.scalar(select(TEAMS.c.name).where(TEAMS.c.id == project.team_id))}
    elif project.user_id is not None:
        owner = {"user": db.scalar(select(USERS.c.email).where(USERS.c.id == project.user_id))}
    return {
        "id": project.id,
        "name": project.name,
        **(owner or {}),
        "created_at": project.created_at,
        "archived_at": project.archived_at,
    }


@projects.command("create")
def projects_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The project's name, unique in its team.")],
    team: Annotated[str | None, TeamOption] = None,
    user: Annotated[str | None, UserOption] = None,
    as_json: bool = JsonOption,
) -> None:
    """Create project NAME in a team (--team) or for a solo user (--user)."""
    with write(ctx) as db:
        out = _project_json(db, create_project(db, name, team_name=team, user_email=user))
    if as_json:
        print_json(out)
    else:
        print(f"created project {out['name']} (id {out['id']})")


@projects.command("list")
def projects_list(
    ctx: typer.Context,
    team: Annotated[str | None, TeamOption] = None,
    user: Annotated[str | None, UserOption] = None,
    as_json: bool = JsonOption,
) -> None:
    """List projects (all, or one team's or solo user's)."""
    with write(ctx) as db:
        scope = None
        if team is not None or user is not None:
            scope, _, _ = owner_scope(db, team_name=team, user_email=user)
        rows = [_project_json(db, p) for p in list_projects(db, scope)]
    if as_json:
        print_json(rows)
        return
    print_table(
        "Projects",
        ["id", "name", "owner", "created", "archived"],
        [
            [r["id"], r["name"], r.get("team") or r.get("user"), r["created_at"], r["archived_at"]]
            for r in rows
        ],
    )


@projects.command("archive")
def projects_archive(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The project's name.")],
    team: Annotated[str | None, TeamOption] = None,
    user: Annotated[str | None, UserOption] = None,
    as_json: bool = JsonOption,
) -> None:
    """Archive a project: its usage stays; new authorizations naming it are refused."""
    with write(ctx) as db:
        out = _project_json(db, archive_project(db, name, team_name=team, user_email=user))
    if as_json:
        print_json(out)
    else:
        print(f"archived project {out['name']}")


def _target(db: Session, team: str | None, user: str | None, project: str | None) -> CapTarget:
    """--user (a user), --team (a team), --team and --user (a member), --project with --team
    or --user (a project)."""
    if project is not None:
        scope, _, _ = owner_scope(db, team_name=team, user_email=user)
        found = find_project(db, scope, project.strip())
        if found is None:
            raise IdentityError(f"no project {project!r} there")
        return CapTarget("project", project_id=found.id)
    if team is not None and user is not None:
        team_row = find_team(db, team)
        user_row = find_user(db, user)
        member = db.scalar(
            select(MEMBERSHIPS.c.team_id).where(
                MEMBERSHIPS.c.user_id == user_row.id, MEMBERSHIPS.c.team_id == team_row.id
            )
        )
        if member is None:
            raise IdentityError(f"{user_row.email} is not a member of team {team_row.name}")
        return CapTarget("member", user_id=user_row.id, team_id=team_row.id)
    if team is not None:
        return CapTarget("team", team_id=find_team(db, team).id)
    if user is not None:
        return CapTarget("user", user_id=find_user(db, user).id)
    raise IdentityError(
        "name what the cap limits: --user, --team, --team with --user, or --project"
    )


def _cap_row(db: Session, cap: Cap) -> dict[str, Any]:
    start, end = current_period(cap, utc_now())
    names: dict[str, str] = {}
    if cap.user_id is not None:
        names["user"] = db.scalar(select(USERS.c.email).where(USERS.c.id == cap.user_id)) or ""
    if cap.team_id is not None:
        names["team"] = db.scalar(select(TEAMS.c.name).where(TEAMS.c.id == cap.team_id)) or ""
    if cap.project_id is not None:
        names["project"] = (
            db.scalar(select(PROJECTS.c.name).where(PROJECTS.c.id == cap.project_id)) or ""
        )
    return cap_json(
        cap, used_nano=used_in_period(db, cap, start), reserved_nano=0, resets_at=end, names=names
    )


@caps.command("set")
def caps_set(
    ctx: typer.Context,
    limit: Annotated[str, typer.Option("--limit", help="The hard limit in credits.")],
    period: Annotated[str, typer.Option("--period", help="day, week, month or total.")] = "month",
    tz: Annotated[str, typer.Option("--tz", help="IANA zone the periods are cut in.")] = "UTC",
    thresholds: Annotated[
        str | None, typer.Option("--thresholds", help="Soft thresholds in percent (50,80,95).")
    ] = None,
    team: Annotated[str | None, TeamOption] = None,
    user: Annotated[str | None, UserOption] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="A project (with --team or --user).")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Create or change a cap (one per subject and period)."""
    with write(ctx) as db:
        target = _target(db, team, user, project)
        cap, created = set_cap(
            db,
            target,
            period=period,
            tz=tz,
            limit_nano=parse_limit(limit),
            thresholds=parse_thresholds(thresholds),
        )
        out = _cap_row(db, cap)
    if as_json:
        print_json(out)
    else:
        verb = "created" if created else "changed"
        print(f"{verb} cap {out['id']}: {out['kind']} {out['period']} limit {limit.strip()}")


@caps.command("list")
def caps_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List every cap with its current period's spend."""
    with write(ctx) as db:
        rows = [_cap_row(db, cap) for cap in db.scalars(select(Cap).order_by(Cap.id))]
    if as_json:
        print_json(rows)
        return
    print_table(
        "Caps",
        ["id", "kind", "subject", "period", "tz", "limit", "used", "remaining", "resets at"],
        [
            [
                r["id"], r["kind"],
                " / ".join(r[k] for k in ("team", "user", "project") if k in r),
                r["period"], r["tz"], r["limit_credits"], r["used_credits"],
                r["remaining_credits"], r["resets_at"],
            ]
            for r in rows
        ],
    )  # fmt: skip


@caps.command("remove")
def caps_remove(
    ctx: typer.Context,
    cap_id: Annotated[int, typer.Argument(help="The id `caps list` shows.")],
    as_json: bool = JsonOption,
) -> None:
    """Remove a cap."""
    with write(ctx) as db:
        if db.get(Cap, cap_id) is None:
            fail(f"no cap {cap_id}")
        remove_cap(db, cap_id)
    if as_json:
        print_json({"removed": True, "id": cap_id})
    else:
        print(f"removed cap {cap_id}")
