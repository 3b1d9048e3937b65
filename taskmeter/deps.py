"""FastAPI dependencies: the store, the caller, and the caller's read scope.

request ─▶ PrincipalDep ─▶ ScopeDep ─▶ repository query ─▶ response
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from sqlalchemy.exc import OperationalError

from taskmeter.errors import ErrorResponse, Unauthorized
from taskmeter.identity.principal import Principal, Scope, authenticate, read_scope
from taskmeter.store import Store

log = logging.getLogger("taskmeter.auth")

__all__ = ["AUTH_RESPONSES", "PrincipalDep", "ScopeDep", "StoreDep"]

# Declared for the OpenAPI document (the seeds' two security schemes, either one will do);
# the credential itself is parsed by `authenticate` from the raw headers.
_bearer = HTTPBearer(
    scheme_name="BearerAuth",
    bearerFormat="JWT",
    auto_error=False,
    description="JWT authentication token",
)
_api_key = APIKeyHeader(
    name="X-Api-Key",
    scheme_name="ApiKeyAuth",
    auto_error=False,
    description="Neo API key (neo_sk_* prefix)",
)

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Unauthorized"},
    403: {"model": ErrorResponse, "description": "Forbidden"},
    429: {"model": ErrorResponse, "description": "Too many failed authentications"},
    500: {"model": ErrorResponse, "description": "Internal server error"},
}


# Dependencies that do no I/O are coroutines: FastAPI runs a plain function in the thread
# pool, a hand-off to another thread and back on every request.
async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_principal(
    request: Request,
    _bearer_credential: Annotated[Any, Depends(_bearer)],
    _key_credential: Annotated[Any, Depends(_api_key)],
) -> Principal:
    state = request.app.state
    api_key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization")
    address = request.client.host if request.client else "unknown"
    credential = api_key if api_key is not None else authorization
    state.auth_limiter.check(address, credential)
    try:
        principal = authenticate(
            state.store, state.verifier, api_key=api_key, authorization=authorization
        )
    except OperationalError:
        cached = _cached_principal(request, api_key, authorization)
        if cached is None:
            raise
        request.state.principal = cached
        return cached
    except Unauthorized as exc:
        state.auth_limiter.failed(address, credential)
        # A fingerprint lets an operator correlate repeated failures; the credential stays out.
        fingerprint = state.auth_limiter.fingerprint(credential) if credential else "none"
        log.info(
            "authentication failed from %s: %s (credential #%s)",
            address,
            exc.detail,
            fingerprint[:12],
        )
        raise
    if state.ingest_log is not None:
        state.principal_cache[_credential_key(api_key, authorization)] = (
            principal,
            time.monotonic(),
        )
    request.state.principal = principal
    return principal


# With the ingest log, writes go on while the store is down; their callers' credentials cannot
# be looked up then, so a credential that authenticated in the last TASKMETER_AUTH_CACHE_S
# seconds is taken as it was, for the write endpoints only (docs/decisions.md).
_LOGGED_WRITES = ("/api/v1/usage/events", "/v1/traces")


def _credential_key(api_key: str | None, authorization: str | None) -> str:
    return hashlib.sha256(f"{api_key}\n{authorization}".encode()).hexdigest()


def _cached_principal(
    request: Request, api_key: str | None, authorization: str | None
) -> Principal | None:
    state = request.app.state
    if state.ingest_log is None or request.url.path not in _LOGGED_WRITES:
        return None
    found = state.principal_cache.get(_credential_key(api_key, authorization))
    if found is None:
        return None
    principal, at = found
    if time.monotonic() - at > state.settings.auth_cache_s:
        return None
    log.warning("the store is unavailable: a cached credential admitted a write")
    return principal  # type: ignore[no-any-return]


async def get_scope(principal: Annotated[Principal, Depends(get_principal)]) -> Scope:
    return read_scope(principal)


StoreDep = Annotated[Store, Depends(get_store)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ScopeDep = Annotated[Scope, Depends(get_scope)]
