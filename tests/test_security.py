"""Security: failed-authentication limits, and secrets never in logs or error bodies."""

from __future__ import annotations

import logging
import time

import jwt
import pytest
from fastapi.testclient import TestClient

from taskmeter.app import create_app
from taskmeter.config import Settings
from taskmeter.identity import service
from taskmeter.store import Store
from tests.events import StreamEvents
from tests.factories import Factory
from tests.spec import assert_error_response

SECRET = "s" * 40


def _client(store: Store, database_url: str, **settings: object) -> TestClient:
    return TestClient(
        create_app(Settings(database_url=database_url, **settings), store=store),
        raise_server_exceptions=False,
    )


def test_failed_authentications_are_limited_per_address(
    store: Store, database_url: str, factory: Factory
) -> None:
    ada = factory.person()
    with _client(
        store, database_url, auth_failures_per_minute=5, auth_failures_per_key_per_minute=100
    ) as client:
        for n in range(5):
            bad = {"X-Api-Key": f"neo_sk_{n:032d}"}
            assert client.get("/api/v1/user", headers=bad).status_code == 401
        answer = client.get("/api/v1/user", headers={"X-Api-Key": "neo_sk_" + "9" * 32})
        assert answer.status_code == 429
        assert_error_response(answer.json(), code="rate_limited")
        assert 1 <= int(answer.headers["retry-after"]) <= 61
        # The address is held off entirely for the window, valid key or not.
        assert client.get("/api/v1/user", headers=ada.headers).status_code == 429


def test_a_failing_credential_is_limited_on_its_own(
    store: Store, database_url: str, factory: Factory
) -> None:
    ada = factory.person()
    with _client(
        store, database_url, auth_failures_per_minute=1000, auth_failures_per_key_per_minute=3
    ) as client:
        wrong = {"X-Api-Key": "neo_sk_" + "w" * 32}
        assert [client.get("/api/v1/user", headers=wrong).status_code for _ in range(4)] == [
            401,
            401,
            401,
            429,
        ]
        assert client.get("/api/v1/user", headers=ada.headers).status_code == 200


def test_secrets_never_reach_logs_or_error_bodies(
    store: Store, database_url: str, factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    ada = factory.person("ada@example.com")
    revoked = factory.person("gone@example.com")
    with store.write() as db:
        for key in service.list_keys(db, "gone@example.com"):
            service.revoke_key(db, key.id)
    service_key = factory.service_key()
    good_token = jwt.encode({"email": "ada@example.com", "exp": int(time.time()) + 60}, SECRET)
    expired = jwt.encode({"email": "ada@example.com", "exp": int(time.time()) - 60}, SECRET)
    forged = jwt.encode({"email": "ada@example.com", "exp": int(time.time()) + 60}, "f" * 40)
    secrets = [
        ada.key,
        revoked.key,
        service_key,
        good_token,
        expired,
        forged,
        SECRET,
        "neo_sk_" + "z" * 32,
    ]
    caplog.set_level(logging.DEBUG)
    bodies = []
    with _client(store, database_url, jwt_secret=SECRET) as client:
        requests = [
            {"X-Api-Key": ada.key},
            {"X-Api-Key": revoked.key},
            {"X-Api-Key": service_key},
            {"X-Api-Key": "neo_sk_" + "z" * 32},
            {"Authorization": f"Bearer {good_token}"},
            {"Authorization": f"Bearer {expired}"},
            {"Authorization": f"Bearer {forged}"},
            {"X-Api-Key": ada.key, "Authorization": f"Bearer {forged}"},
        ]
        for headers in requests:
            for path in ("/api/v1/user", "/api/v1/usage/tasks", "/api/v1/usage/summary"):
                bodies.append(client.get(path, headers=headers).text)
        s = StreamEvents()
        bodies.append(
            client.post(
                "/api/v1/usage/events",
                headers={"X-Api-Key": service_key},
                json={"events": [s.started(0, user="nobody@example.com")]},
            ).text
        )
        bodies.append(
            client.post(
                "/v1/traces",
                headers={"X-Api-Key": ada.key, "content-type": "application/json"},
                content=b"{broken",
            ).text
        )
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
        for record in caplog.records
    )
    failures = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(failures) >= 10, "failed authentications are logged for operators"
    for secret in secrets:
        assert secret not in logged, "a credential reached the logs"
        assert all(secret not in body for body in bodies), "a credential reached a response"
