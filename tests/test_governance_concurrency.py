"""No overspend by concurrency: 50 simultaneous authorizations of 1 credit against 10 credits
of headroom allow exactly 10 — through one server, `serve --workers 2`, and two replicas on one
PostgreSQL. Each authorization counts its payer's open holds under the payer's row locks."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from taskmeter.cli import app
from tests.factories import Factory
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
