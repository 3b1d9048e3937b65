"""The operator CLI, through the CLI runner, on both stores: success and failure paths."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from taskmeter.cli import app
from taskmeter.identity.keys import is_well_formed
from taskmeter.store import Store
from taskmeter.store.tables import ApiKey, CreditGrant, Team, User


def run(cli: CliRunner, *args: str, ok: bool = True) -> tuple[str, str]:
    result = cli.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
    else:
        assert result.exit_code != 0, (args, result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected a one-line error, got {result.stderr!r}"
        assert lines[0].startswith("error: ") or "Usage" in result.stderr
    return result.stdout, result.stderr


def test_users_create_and_duplicate(cli: CliRunner, store: Store) -> None:
    out, _ = run(cli, "users", "create", "Ada@Example.COM", "--neo-cost-rate", "0.25", "--json")
    assert json.loads(out) == {
        "id": 1,
        "email": "ada@example.com",
        "role": "user",
        "neo_cost_rate": "0.25",
    }
    _, err = run(cli, "users", "create", "ada@example.com", ok=False)
    assert "already exists" in err
    _, err = run(cli, "users", "create", "not-an-email", ok=False)
    assert "not an email" in err
    _, err = run(cli, "users", "create", "x@example.com", "--neo-cost-rate", "-1", ok=False)
    assert "≥ 0" in err
    with store.read() as db:
        assert db.scalars(select(User.email)).all() == ["ada@example.com"]
    out, _ = run(cli, "users", "list", "--json")
    assert [u["email"] for u in json.loads(out)] == ["ada@example.com"]


def test_teams_create_add_remove_and_their_failures(cli: CliRunner, store: Store) -> None:
    for email in ("a@x.io", "b@x.io", "c@x.io"):
        run(cli, "users", "create", email)
    _, err = run(cli, "teams", "create", "acme", "--admin", "nobody@x.io", ok=False)
    assert "no user" in err
    out, _ = run(cli, "teams", "create", "acme", "--admin", "A@x.io", "--json")
    assert json.loads(out)["name"] == "acme"
    _, err = run(cli, "teams", "create", "acme", "--admin", "b@x.io", ok=False)
    assert "already exists" in err
    _, err = run(cli, "teams", "create", "other", "--admin", "a@x.io", ok=False)
    assert "one team" in err
    _, err = run(cli, "teams", "add-member", "acme", "b@x.io", "--role", "boss", ok=False)
    assert "role" in err
    _, err = run(cli, "teams", "add-member", "nope", "b@x.io", "--role", "member", ok=False)
    assert "no team" in err
    _, err = run(cli, "teams", "add-member", "acme", "z@x.io", "--role", "member", ok=False)
    assert "no user" in err
    run(cli, "teams", "add-member", "acme", "b@x.io", "--role", "viewer")
    _, err = run(cli, "teams", "add-member", "acme", "b@x.io", "--role", "member", ok=False)
    assert "one team" in err
    _, err = run(cli, "teams", "remove-member", "acme", "c@x.io", ok=False)
    assert "not a member" in err
    run(cli, "teams", "remove-member", "acme", "b@x.io")
    run(cli, "teams", "add-member", "acme", "b@x.io", "--role", "member")
    out, _ = run(cli, "teams", "list", "--json")
    assert json.loads(out) == [
        {
            "id": 1,
            "name": "acme",
            "members": [
                {"email": "a@x.io", "role": "admin"},
                {"email": "b@x.io", "role": "member"},
            ],
        }
    ]
    with store.read() as db:
        assert db.scalars(select(Team.name)).all() == ["acme"]


def test_keys_create_list_revoke(cli: CliRunner, store: Store) -> None:
    run(cli, "users", "create", "k@x.io")
    out, _ = run(cli, "keys", "create", "k@x.io", "--name", "laptop")
    key = out.strip()
    assert out == key + "\n" and is_well_formed(key)
    out, _ = run(cli, "keys", "create", "--service", "ingestor")
    service_key = out.strip()
    assert is_well_formed(service_key) and service_key != key
    _, err = run(cli, "keys", "create", "nobody@x.io", ok=False)
    assert "no user" in err
    _, err = run(cli, "keys", "create", ok=False)
    assert "either" in err
    _, err = run(cli, "keys", "create", "k@x.io", "--service", "x", ok=False)
    assert "either" in err

    out, _ = run(cli, "keys", "list", "--json")
    listed = json.loads(out)
    assert [k["kind"] for k in listed] == ["user", "service"]
    assert set(listed[0]) >= {
        "id",
        "name",
        "prefix",
        "kind",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert key not in out and service_key not in out
    assert listed[0]["prefix"] == key[:11] and listed[0]["name"] == "laptop"
    out, _ = run(cli, "keys", "list", "k@x.io", "--json")
    assert len(json.loads(out)) == 1
    run(cli, "keys", "list")  # the table form

    run(cli, "keys", "revoke", listed[0]["id"])
    _, err = run(cli, "keys", "revoke", listed[0]["id"], ok=False)
    assert "already revoked" in err
    _, err = run(cli, "keys", "revoke", "key_nope", ok=False)
    assert "no key" in err
    with store.read() as db:
        stored = db.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        assert all(k.key_hash not in (key, service_key) and len(k.key_hash) == 64 for k in stored)
        assert stored[0].revoked_at is not None and stored[1].revoked_at is None


def test_credits_grant_and_reset(cli: CliRunner, store: Store) -> None:
    run(cli, "users", "create", "c@x.io")
    run(cli, "teams", "create", "t1", "--admin", "c@x.io")
    out, _ = run(
        cli, "credits", "grant", "--team", "t1", "12.5", "--expires", "2099-01-01", "--json"
    )
    assert json.loads(out)["expires_at"] == "2099-01-01T00:00:00Z"
    run(cli, "credits", "grant", "--user", "c@x.io", "0.000000001")
    for bad in ("0", "-3", "abc", "0.0000000001", "NaN"):
        _, err = run(cli, "credits", "grant", "--user", "c@x.io", bad, ok=False)
    _, err = run(cli, "credits", "grant", "5", ok=False)
    assert "exactly one" in err
    _, err = run(cli, "credits", "grant", "--user", "c@x.io", "--team", "t1", "5", ok=False)
    _, err = run(cli, "credits", "grant", "--team", "t1", "5", "--expires", "2001-01-01", ok=False)
    assert "past" in err
    _, err = run(cli, "credits", "grant", "--team", "t1", "5", "--expires", "soon", ok=False)
    _, err = run(cli, "credits", "grant", "--team", "nope", "5", ok=False)
    assert "no team" in err
    out, _ = run(cli, "credits", "reset", "--team", "t1", "--json")
    assert json.loads(out)["reset_at"].endswith("Z")
    run(cli, "credits", "reset", "--user", "c@x.io")
    _, err = run(cli, "credits", "reset", "--user", "zz@x.io", ok=False)
    with store.read() as db:
        grants = db.scalars(select(CreditGrant).order_by(CreditGrant.id)).all()
        assert [g.amount_nano for g in grants] == [12_500_000_000, 1]
        assert db.scalars(select(Team.credits_reset_at)).one() is not None
        assert db.scalars(select(User.credits_reset_at)).one() is not None


def test_db_upgrade(cli: CliRunner) -> None:
    out, _ = run(cli, "db", "upgrade")
    assert "latest schema" in out


def test_unreachable_store_is_a_one_line_error(tmp_path: object) -> None:
    runner = CliRunner(env={"TASKMETER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    _, err = run(runner, "users", "list", ok=False)
    assert "cannot use the store" in err
