"""No overspend by concurrency: 50 simultaneous authorizations of 1 credit against 10 credits
of headroom allow exactly 10 — through one server, `serve --workers 2`, and two replicas on one
PostgreSQL. Each authorization counts its payer's open holds under the payer's row locks."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from taskmeter.app import create_app
from taskmeter.cli import app
from taskmeter.config import Settings, normalise_database_url
from taskmeter.identity import service
from taskmeter.pricing.credits import NANO, grant_credits
from taskmeter.store import Store
from taskmeter.store.migrate import upgrade
from taskmeter.store.tables import RESERVATIONS
from tests.factories import Factory
from tests.pg_instance import PgInstance, pg_bin
from tests.processes import serve, stop

ATTEMPTS = 50
HEADROOM = 10


def _race(bases: list[str], key: str) -> list[int]:
    start = threading.Barrier(ATTEMPTS)

    def one(n: int) -> int:
        with httpx.Client(base_url=bases[n % len(bases)], timeout=60) as client:
            start.wait()
            response = client.post(
                "/api/v1/usage/authorize",
                headers={"X-Api-Key": key},
                json={"user": "dev@acme.test", "estimate_credits": 1},
            )
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(ATTEMPTS) as pool:
        return list(pool.map(one, range(ATTEMPTS)))


def _org(factory: Factory, cli: CliRunner) -> str:
    factory.person("admin@acme.test", team="acme", role="admin")
    factory.person("dev@acme.test", team="acme")
    for args in (
        ["credits", "grant", "--team", "acme", "1000"],
        # The member's cap leaves 10 credits of headroom; the team's account many more.
        ["caps", "set", "--team", "acme", "--user", "dev@acme.test", "--limit", str(HEADROOM)],
    ):
        assert cli.invoke(app, args).exit_code == 0
    return factory.service_key()


def test_fifty_authorizations_against_ten_credits_allow_ten(
    live_server: str, factory: Factory, cli: CliRunner
) -> None:
    key = _org(factory, cli)
    statuses = _race([live_server], key)
    assert statuses.count(200) == HEADROOM, statuses
    assert statuses.count(402) == ATTEMPTS - HEADROOM
    # A refusal holds nothing: on PostgreSQL the reservation is written by the statement that
    # reads the state, and the refusal must roll it back.
    with factory.store.read() as db:
        held = db.scalar(select(func.count()).select_from(RESERVATIONS))
    assert held == HEADROOM


@pytest.mark.parametrize("layout", ["workers", "replicas"])
def test_no_overspend_across_processes(
    layout: str, database_url: str, factory: Factory, cli: CliRunner, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql") and layout == "replicas":
        pytest.skip("two replicas on one store: the PostgreSQL deployment")
    key = _org(factory, cli)
    processes = []
    try:
        if layout == "workers":
            process, base = serve(database_url, tmp_path, {"TASKMETER_WORKERS": "2"})
            processes.append(process)
            bases = [base]
        else:
            bases = []
            for _ in range(2):
                process, base = serve(database_url, tmp_path)
                processes.append(process)
                bases.append(base)
        statuses = _race(bases, key)
    finally:
        for process in processes:
            stop(process)
    assert statuses.count(200) == HEADROOM, statuses
    assert statuses.count(402) == ATTEMPTS - HEADROOM


def test_authorize_survives_a_restart_of_postgresql(tmp_path: Path) -> None:
    """authorize's connections are not pinged before use: the first on a connection the
    server dropped is rerun on a fresh one, not answered 503."""
    if pg_bin() is None:
        pytest.skip("no PostgreSQL server binaries to start a throwaway instance")
    pg = PgInstance()
    try:
        store = Store(normalise_database_url(pg.url))
        upgrade(store.write_engine)
        with store.write() as db:
            service.create_user(db, "dev@example.com")
            grant_credits(db, amount_nano=10 * NANO, user_email="dev@example.com")
            key = service.create_key(db, service="platform").plaintext
        store.dispose()
        app = create_app(Settings(database_url=pg.url))
        with TestClient(app) as client:
            body = {"user": "dev@example.com", "estimate_credits": 1}
            headers = {"X-Api-Key": key}
            for _ in range(3):  # the pool holds connections now
                answer = client.post("/api/v1/usage/authorize", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
            pg.stop()
            pg.start()
            pg.wait_ready()
            answer = client.post("/api/v1/usage/authorize", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
    finally:
        pg.destroy()
