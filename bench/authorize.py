"""Authorize benchmark: p50/p99 of `POST /api/v1/usage/authorize` over HTTP on a generated store,
beside task-by-id's p50/p99 measured in the same run, rounds alternating.

    python bench/generate.py --store postgresql --streams 1000000      # once
    python bench/authorize.py bench/.data/postgresql-1000000.json --requests 400

Authorizes as a service key for the large team's admin (the team with a tenth of the load),
holding 0.001 credits, against a member cap, the team's monthly cap and the team's credit
account (a year of history); each reservation is released after it is timed, untimed, so every
authorization sees the same holds. Task by id is read as that admin. The target: authorize's p99
within 1.5x of task-by-id's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import percentile, start_serve, stop_serve

from taskmeter.config import normalise_database_url
from taskmeter.governance.caps import CapTarget, parse_limit, set_cap
from taskmeter.identity import service
from taskmeter.pricing.credits import grant_credits
from taskmeter.store import Store
from taskmeter.store.tables import Membership, Team

ADMIN = "admin@bench.example"


def prepare(url: str) -> str:
    """A service key, credits and caps for the large team's admin (idempotent enough to rerun)."""
    store = Store(normalise_database_url(url))
    try:
        with store.write() as db:
            user = service.find_user(db, ADMIN)
            membership = db.get(Membership, user.id)
            assert membership is not None, f"{ADMIN} is in no team"
            team_id = membership.team_id
            team = db.get(Team, team_id)
            assert team is not None
            grant_credits(db, amount_nano=parse_limit("1000000000"), team_name=team.name)
            for target, period in (
                (CapTarget("member", user_id=user.id, team_id=team_id), "day"),
                (CapTarget("team", team_id=team_id), "month"),
            ):
                set_cap(db, target, period=period, tz="Europe/Berlin",
                        limit_nano=parse_limit("100000000"))  # fmt: skip
            return service.create_key(db, service="bench-authorize").plaintext
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--requests", type=int, default=400, help="of each, over all rounds")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    manifest: dict[str, Any] = json.loads(args.manifest.read_text())
    service_key = prepare(manifest["url"])
    task_path = f"/api/v1/usage/tasks/{manifest['admin_task']}"
    body = {"user": ADMIN, "estimate_credits": "0.001", "task_id": manifest["admin_task"]}
    times: dict[str, list[float]] = {"task by id": [], "authorize": []}
    with tempfile.TemporaryDirectory() as workdir:
        server, base = start_serve(manifest["url"], Path(workdir))
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                admin = {"X-Api-Key": manifest["admin_key"]}
                svc = {"X-Api-Key": service_key}

                def read() -> None:
                    assert client.get(task_path, headers=admin).status_code == 200

                def authorize() -> str:
                    answer = client.post("/api/v1/usage/authorize", headers=svc, json=body)
                    assert answer.status_code == 200, answer.text
                    return str(answer.json()["reservation_id"])

                for _ in range(30):  # warm-up
                    read()
                    client.delete(f"/api/v1/usage/reservations/{authorize()}", headers=svc)
                per_round = max(1, args.requests // args.rounds)
                for _ in range(args.rounds):
                    for _ in range(per_round):
                        start = time.perf_counter()
                        read()
                        times["task by id"].append((time.perf_counter() - start) * 1000)
                    for _ in range(per_round):
                        start = time.perf_counter()
                        reservation = authorize()
                        times["authorize"].append((time.perf_counter() - start) * 1000)
                        client.delete(f"/api/v1/usage/reservations/{reservation}", headers=svc)
        finally:
            stop_serve(server)
    p99 = {}
    for name, values in times.items():
        values.sort()
        p99[name] = percentile(values, 0.99)
        print(f"{name:12} p50 {percentile(values, 0.5):7.2f} ms  p99 {p99[name]:7.2f} ms  "
              f"({len(values)} requests)")  # fmt: skip
    print(f"authorize p99 / task-by-id p99 = {p99['authorize'] / p99['task by id']:.2f}")


if __name__ == "__main__":
    main()
