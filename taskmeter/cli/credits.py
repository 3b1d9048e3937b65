"""`taskmeter credits grant|reset`: the credit accounts of users and teams."""

from __future__ import annotations

from typing import Annotated

import typer

from taskmeter.cli.common import JsonOption, fail, print_json, write
from taskmeter.pricing.credits import grant_credits, parse_credit_amount, reset_credits
from taskmeter.timeutil import parse_instant

credits = typer.Typer(
    help="Grant credits to an account, or reset its usage count.", no_args_is_help=True
)

UserOption = typer.Option("--user", help="The user's account.")
TeamOption = typer.Option("--team", help="The team's account.")


@credits.command("grant")
def credits_grant(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="Credits to grant, e.g. 100 or 2.5.")],
    user: Annotated[str | None, UserOption] = None,
    team: Annotated[str | None, TeamOption] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="When the grant expires (RFC 3339 or date).")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Grant AMOUNT credits to a user's or a team's account."""
    try:
        expires_at = parse_instant(expires) if expires else None
    except ValueError:
        fail(f"--expires {expires!r} is not a date or RFC 3339 time")
    with write(ctx) as db:
        grant = grant_credits(
            db,
            amount_nano=parse_credit_amount(amount),
            user_email=user,
            team_name=team,
            expires_at=expires_at,
        )
        out = {
            "id": grant.id,
            "account": f"user {user}" if user else f"team {team}",
            "amount": amount.strip(),
            "granted_at": grant.granted_at,
            "expires_at": grant.expires_at,
        }
    if as_json:
        print_json(out)
    else:
        suffix = f", expiring {expires_at.isoformat()}" if expires_at else ""
        print(f"granted {out['amount']} credits to {out['account']}{suffix}")


@credits.command("reset")
def credits_reset(
    ctx: typer.Context,
    user: Annotated[str | None, UserOption] = None,
    team: Annotated[str | None, TeamOption] = None,
    as_json: bool = JsonOption,
) -> None:
    """Count an account's credit usage afresh from now."""
    with write(ctx) as db:
        at = reset_credits(db, user_email=user, team_name=team)
    account = f"user {user}" if user else f"team {team}"
    if as_json:
        print_json({"account": account, "reset_at": at})
    else:
        print(f"reset credit usage of {account} at {at.isoformat()}")
