"""`taskmeter users|teams|keys …`: the operator's identity commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer
from sqlalchemy import select

from taskmeter.cli.common import JsonOption, fail, print_json, print_table, write
from taskmeter.identity import service
from taskmeter.identity.service import IdentityError
from taskmeter.store.tables import Membership, Team, User

users = typer.Typer(help="Create and list users.", no_args_is_help=True)
teams = typer.Typer(help="Create teams and manage their members.", no_args_is_help=True)
keys = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@users.command("create")
def users_create(
    ctx: typer.Context,
    email: str,
    neo_cost_rate: Annotated[
        str | None, typer.Option(help="This user's BYOK platform rate (default: server's).")
    ] = None,
    role: Annotated[str, typer.Option(help="System role: user or admin.")] = "user",
    as_json: bool = JsonOption,
) -> None:
    """Create a user, identified by EMAIL (case-insensitive)."""
    try:
        rate: Decimal | None = service.parse_rate(neo_cost_rate) if neo_cost_rate else None
    except IdentityError as exc:
        fail(str(exc))
    with write(ctx) as db:
        user = service.create_user(db, email, neo_cost_rate=rate, role=role)
        out = {
            "id": user.id,
            "email": user.email,
            "role": user.role,
            "neo_cost_rate": None if rate is None else str(rate),
        }
    if as_json:
        print_json(out)
    else:
        print(f"created user {out['email']} (id {out['id']})")


@users.command("list")
def users_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List users with their team and role."""
    with write(ctx) as db:
        rows = db.execute(
            select(User, Team.name, Membership.role)
            .outerjoin(Membership, Membership.user_id == User.id)
            .outerjoin(Team, Team.id == Membership.team_id)
            .order_by(User.id)
        ).all()
        out = [
            {
                "id": u.id,
                "email": u.email,
                "role": u.role,
                "neo_cost_rate": None if u.neo_cost_rate is None else str(u.neo_cost_rate),
                "team": team,
                "team_role": team_role,
            }
            for u, team, team_role in rows
        ]
    if as_json:
        print_json(out)
    else:
        print_table(
            "users",
            ["id", "email", "role", "neo_cost_rate", "team", "team role"],
            [list(r.values()) for r in out],
        )


@teams.command("create")
def teams_create(
    ctx: typer.Context,
    name: str,
    admin: Annotated[str, typer.Option("--admin", help="Email of the team's first admin.")],
    as_json: bool = JsonOption,
) -> None:
    """Create team NAME with its first admin."""
    with write(ctx) as db:
        team = service.create_team(db, name, admin)
        out = {"id": team.id, "name": team.name, "admin": admin.strip().lower()}
    if as_json:
        print_json(out)
    else:
        print(f"created team {out['name']!r} (id {out['id']}) with admin {out['admin']}")


@teams.command("add-member")
def teams_add_member(
    ctx: typer.Context,
    team: str,
    email: str,
    role: Annotated[str, typer.Option("--role", help="admin, member or viewer.")],
    as_json: bool = JsonOption,
) -> None:
    """Add user EMAIL to TEAM with a role."""
    with write(ctx) as db:
        membership = service.add_member(db, team, email, role)
        out = {"team": team, "email": email.strip().lower(), "role": membership.role}
    if as_json:
        print_json(out)
    else:
        print(f"added {out['email']} to {team!r} as {out['role']}")


@teams.command("remove-member")
def teams_remove_member(ctx: typer.Context, team: str, email: str) -> None:
    """Remove user EMAIL from TEAM (the team keeps the usage they ran in it)."""
    with write(ctx) as db:
        service.remove_member(db, team, email)
    print(f"removed {email.strip().lower()} from {team!r}")


@teams.command("list")
def teams_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List teams and their members."""
    with write(ctx) as db:
        rows = db.execute(
            select(Team.id, Team.name, User.email, Membership.role)
            .outerjoin(Membership, Membership.team_id == Team.id)
            .outerjoin(User, User.id == Membership.user_id)
            .order_by(Team.id, User.email)
        ).all()
    grouped: dict[int, dict[str, object]] = {}
    for team_id, name, email, role in rows:
        entry = grouped.setdefault(team_id, {"id": team_id, "name": name, "members": []})
        if email is not None:
            entry["members"].append({"email": email, "role": role})  # type: ignore[attr-defined]
    if as_json:
        print_json(list(grouped.values()))
    else:
        print_table(
            "teams",
            ["id", "name", "members"],
            [
                [t["id"], t["name"], ", ".join(f"{m['email']} ({m['role']})" for m in t["members"])]  # type: ignore[attr-defined]
                for t in grouped.values()
            ],
        )


@keys.command("create")
def keys_create(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Argument(help="The user the key acts as.")] = None,
    service_name: Annotated[
        str | None, typer.Option("--service", help="Make an ingestion key for any user.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    as_json: bool = JsonOption,
) -> None:
    """Create an API key and print it once (it is stored only as a hash)."""
    with write(ctx) as db:
        new = service.create_key(db, email=email, service=service_name, name=name)
    if as_json:
        print_json(
            {
                "id": new.id,
                "key": new.plaintext,
                "prefix": new.prefix,
                "kind": "service" if service_name else "user",
            }
        )
    else:
        print(new.plaintext)


@keys.command("list")
def keys_list(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Argument(help="Only this user's keys.")] = None,
    as_json: bool = JsonOption,
) -> None:
    """List keys (never the keys themselves: id, prefix, kind and dates)."""
    with write(ctx) as db:
        rows = service.list_keys(db, email)
    out = [
        {
            "id": r.id,
            "name": r.name,
            "prefix": r.prefix,
            "kind": r.kind,
            "email": r.email,
            "created_at": r.created_at,
            "last_used_at": r.last_used_at,
            "revoked_at": r.revoked_at,
        }
        for r in rows
    ]
    if as_json:
        print_json(out)
    else:
        print_table(
            "API keys",
            ["id", "name", "prefix", "kind", "email", "created", "last used", "revoked"],
            [list(r.values()) for r in out],
        )


@keys.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    """Revoke KEY_ID (as `keys list` shows it); it stops working on the next request."""
    with write(ctx) as db:
        key = service.revoke_key(db, key_id)
        out = key.id
    print(f"revoked {out}")
