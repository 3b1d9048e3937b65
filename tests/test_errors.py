"""One error model: 400/401/403/404/405/500 all answer the seeds' ErrorResponse."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from fastapi.testclient import TestClient
from sqlalchemy import text

from taskmeter.app import create_app
from taskmeter.config import Settings
from taskmeter.deps import StoreDep
from taskmeter.store import Store
from tests.factories import Factory
from tests.spec import assert_error_response


def _app_with_probe_routes(settings: Settings, store: Store) -> TestClient:
    """The real app plus routes that fail on purpose, to reach the handlers."""
    app = create_app(settings, store=store)

    @app.get("/probe/limit")
    def limited(limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/probe/crash")
    def crash() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    @app.get("/probe/sql")
    def bad_sql(store: StoreDep) -> None:
        with store.read() as db:
            db.execute(text("SELECT no_such_column FROM users"))

    return TestClient(app, raise_server_exceptions=False)


def test_every_error_status_has_the_error_response_shape(
    settings: Settings, store: Store, factory: Factory
) -> None:
    member = factory.person(team="acme", role="admin")
    with _app_with_probe_routes(settings, store) as client:
        for path, status, code in [
            ("/probe/limit?limit=0", 400, "invalid_request"),
            ("/probe/limit?limit=abc", 400, "invalid_request"),
            ("/api/v1/user", 401, "unauthorized"),
            ("/no/such/route", 404, "not_exists"),
            ("/probe/crash", 500, "internal"),
            ("/probe/sql", 500, "internal"),
        ]:
            answer = client.get(path)
            assert answer.status_code == status, (path, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert_error_response(answer.json(), code=code)
            if status == 500:
                assert len(answer.json()["error_id"]) == 32
                assert "passwd" not in answer.text and "no_such_column" not in answer.text
            else:
                assert "error_id" not in answer.json()
        assert client.get("/probe/limit?limit=7").json() == {"limit": 7}
        answer = client.post("/api/v1/user", headers=member.headers)
        assert answer.status_code == 405
        assert_error_response(answer.json())
        # Allow names every route at the path, not only the first that matched it
        answer = client.options("/api/v1/usage/caps", headers=member.headers)
        assert answer.status_code == 405
        assert {"GET", "PUT"} <= set(answer.headers["allow"].split(", "))
        answer = client.get("/api/v1/user", headers={"X-Api-Key": factory.service_key()})
        assert answer.status_code == 403
        assert_error_response(answer.json(), code="forbidden")


def test_openapi_is_3_1_and_never_mentions_422(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "422" not in str(document)
    assert "ErrorResponse" in document["components"]["schemas"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "Neo API key (neo_sk_* prefix)",
    }
    assert schemes["BearerAuth"]["scheme"] == "bearer"


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readiness_reports_an_unreachable_store() -> None:
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(settings)
    # No lifespan (no `with`): the migration would fail first, which is serve's job to report.
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/readyz")
    client.close()
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert_error_response(answer.json(), code="unavailable")
