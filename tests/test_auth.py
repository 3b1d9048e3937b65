"""Authentication and scope: API keys, JWTs, and who may read what."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from taskmeter.app import create_app
from taskmeter.config import Settings
from taskmeter.errors import Forbidden
from taskmeter.identity import service
from taskmeter.identity.jwt import JwtVerifier
from taskmeter.identity.principal import Scope, authenticate, read_scope
from taskmeter.store import Store
from taskmeter.store.tables import ApiKey
from tests.factories import Factory
from tests.spec import assert_error_response

SECRET = "s" * 40


def test_key_works_until_revoked(client: TestClient, factory: Factory, store: Store) -> None:
    ada = factory.person("ada@example.com")
    answer = client.get("/api/v1/user", headers=ada.headers)
    assert answer.status_code == 200
    assert answer.json() == {"id": ada.id, "email": "ada@example.com", "role": "user", "team": None}
    # Keys are also accepted as bearer tokens.
    assert (
        client.get("/api/v1/user", headers={"Authorization": f"Bearer {ada.key}"}).json()["email"]
        == "ada@example.com"
    )
    with store.read() as db:
        key = db.scalars(select(ApiKey)).one()
        assert key.last_used_at is not None
    with store.write() as db:
        service.revoke_key(db, key.id)
    answer = client.get("/api/v1/user", headers=ada.headers)
    assert answer.status_code == 401
    assert_error_response(answer.json(), code="unauthorized")
    assert "revoked" in answer.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Api-Key": "neo_sk_" + "a" * 32},
        {"X-Api-Key": "neo_sk_short"},
        {"X-Api-Key": "' OR 1=1 --"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
    ],
)
def test_missing_or_bad_credentials_are_401(
    client: TestClient, factory: Factory, headers: dict[str, str]
) -> None:
    factory.person()
    answer = client.get("/api/v1/user", headers=headers)
    assert answer.status_code == 401
    assert_error_response(answer.json(), code="unauthorized")


def test_team_roles_and_scopes(
    client: TestClient, factory: Factory, store: Store, settings: Settings
) -> None:
    admin = factory.person("boss@acme.io", team="acme", role="admin")
    member = factory.person("m@acme.io", team="acme", role="member")
    viewer = factory.person("v@acme.io", team="acme", role="viewer")
    solo = factory.person("solo@x.io")
    assert client.get("/api/v1/user", headers=member.headers).json()["team"] == {
        "id": 1,
        "name": "acme",
        "role": "member",
    }

    verifier = JwtVerifier(settings)

    def scope_of(person: Any) -> Scope:
        return read_scope(authenticate(store, verifier, api_key=person.key, authorization=None))

    team_scope = scope_of(admin)
    assert (team_scope.kind, team_scope.key, team_scope.team_id) == ("team", "t1", 1)
    assert team_scope.is_team_admin
    solo_scope = scope_of(solo)
    assert (solo_scope.kind, solo_scope.key, solo_scope.user_id) == ("solo", f"u{solo.id}", solo.id)
    for person in (member, viewer):
        with pytest.raises(Forbidden):
            scope_of(person)
    with pytest.raises(Forbidden):
        read_scope(authenticate(store, verifier, api_key=factory.service_key(), authorization=None))


def test_scopes_cannot_be_forged() -> None:
    with pytest.raises(TypeError):
        Scope(kind="team", key="t1", user_id=1, team_id=1)


def test_service_key_is_not_a_user(client: TestClient, factory: Factory) -> None:
    answer = client.get("/api/v1/user", headers={"X-Api-Key": factory.service_key()})
    assert answer.status_code == 403
    assert_error_response(answer.json(), code="forbidden")


# --- JWT -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    return {"email": "Jo@Example.com", "exp": int(time.time()) + 300, **extra}


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, path


def _jwt_client(store: Store, database_url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=database_url, **settings), store=store)
    return TestClient(app, raise_server_exceptions=False)


def _status(client: TestClient, token: str) -> int:
    answer = client.get("/api/v1/user", headers={"Authorization": f"Bearer {token}"})
    if answer.status_code != 200:
        assert_error_response(answer.json(), code="unauthorized")
    return answer.status_code


def test_hs256_tokens(store: Store, database_url: str, factory: Factory) -> None:
    factory.person("jo@example.com")
    with _jwt_client(
        store, database_url, jwt_secret=SECRET, jwt_issuer="https://idp", jwt_audience="taskmeter"
    ) as client:
        good = _claims(iss="https://idp", aud="taskmeter")
        assert _status(client, jwt.encode(good, SECRET, algorithm="HS256")) == 200
        assert (
            client.get(
                "/api/v1/user",
                headers={"Authorization": f"Bearer {jwt.encode(good, SECRET, algorithm='HS256')}"},
            ).json()["email"]
            == "jo@example.com"
        )
        expired = {**good, "exp": int(time.time()) - 3600}
        assert _status(client, jwt.encode(expired, SECRET, algorithm="HS256")) == 401
        not_yet = {**good, "nbf": int(time.time()) + 3600}
        assert _status(client, jwt.encode(not_yet, SECRET, algorithm="HS256")) == 401
        assert _status(client, jwt.encode(good, "x" * 40, algorithm="HS256")) == 401
        wrong_aud = {**good, "aud": "someone-else"}
        assert _status(client, jwt.encode(wrong_aud, SECRET, algorithm="HS256")) == 401
        wrong_iss = {**good, "iss": "https://evil"}
        assert _status(client, jwt.encode(wrong_iss, SECRET, algorithm="HS256")) == 401
        no_exp = {k: v for k, v in good.items() if k != "exp"}
        assert _status(client, jwt.encode(no_exp, SECRET, algorithm="HS256")) == 401
        unknown = {**good, "email": "ghost@example.com"}
        assert _status(client, jwt.encode(unknown, SECRET, algorithm="HS256")) == 401
        no_email = {k: v for k, v in good.items() if k != "email"}
        assert _status(client, jwt.encode(no_email, SECRET, algorithm="HS256")) == 401
        unsigned = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(good).encode()) + "."
        assert _status(client, unsigned) == 401


def test_rs256_and_algorithm_confusion(
    store: Store, database_url: str, factory: Factory, rsa_key: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    factory.person("jo@example.com")
    private, public_path = rsa_key
    with _jwt_client(store, database_url, jwt_public_key_file=public_path) as client:
        assert _status(client, jwt.encode(_claims(), private, algorithm="RS256")) == 200
        # HS256 signed with the public key's PEM as the HMAC secret must not pass.
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        payload = _b64(json.dumps(_claims()).encode())
        signature = hmac.new(
            public_path.read_bytes(), f"{header}.{payload}".encode(), hashlib.sha256
        ).digest()
        assert _status(client, f"{header}.{payload}.{_b64(signature)}") == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert _status(client, jwt.encode(_claims(), other, algorithm="RS256")) == 401
        assert _status(client, jwt.encode(_claims(), SECRET, algorithm="HS256")) == 401


def test_es256_from_a_jwks_file(
    store: Store, database_url: str, factory: Factory, tmp_path: Path
) -> None:
    factory.person("jo@example.com")
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    with _jwt_client(store, database_url, jwks_file=jwks, jwt_email_claim="upn") as client:
        token = jwt.encode(
            {"upn": "jo@example.com", "exp": int(time.time()) + 60},
            private,
            algorithm="ES256",
            headers={"kid": "k1"},
        )
        assert _status(client, token) == 200
        wrong_kid = jwt.encode(
            {"upn": "jo@example.com", "exp": int(time.time()) + 60},
            private,
            algorithm="ES256",
            headers={"kid": "k2"},
        )
        assert _status(client, wrong_kid) == 401


def test_without_a_jwt_key_bearer_jwts_are_refused(client: TestClient, factory: Factory) -> None:
    factory.person("jo@example.com")
    answer = client.get(
        "/api/v1/user",
        headers={"Authorization": f"Bearer {jwt.encode(_claims(), SECRET, algorithm='HS256')}"},
    )
    assert answer.status_code == 401
    assert "not configured" in answer.json()["message"]


def test_short_jwt_secrets_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Settings(jwt_secret="short")
