"""What travels through the ingest log: one message a validated batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskmeter import jsonio
from taskmeter.identity.principal import Principal

__all__ = ["LoggedBatch", "batch_id", "decode", "encode"]

VERSION = 1


@dataclass(frozen=True)
class LoggedBatch:
    principal: Principal
    events: list[Any]


def _principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "via": principal.via,
        "key_id": principal.key_id,
        "user_id": principal.user_id,
        "email": principal.email,
        "service_name": principal.service_name,
    }


def batch_id(principal: Principal, keys: Sequence[tuple[str, str]]) -> str:
    """The batch's message id: its writer and its (stream, event) ids, so the same batch sent
    again (a client's retry) has the same id, and JetStream's duplicate window drops it."""
    digest = hashlib.sha256()
    digest.update(f"{principal.service_name or ''}|{principal.user_id or ''}\n".encode())
    for stream_id, event_id in sorted(keys):
        digest.update(f"{stream_id}/{event_id}\n".encode())
    return digest.hexdigest()[:32]


def encode(principal: Principal, events: Sequence[Any]) -> bytes:
    document = {"v": VERSION, "principal": _principal_json(principal), "events": list(events)}
    try:
        return jsonio.dump_bytes(document)
    except TypeError:
        # A string orjson refuses (a lone surrogate the endpoint read with the standard
        # library): escaped, as the standard library writes it.
        return json.dumps(document).encode()


def decode(data: bytes) -> LoggedBatch:
    try:
        document = jsonio.loads(data)
    except ValueError:
        document = json.loads(data)
    if document.get("v") != VERSION:
        raise ValueError(f"unknown ingest log message version {document.get('v')!r}")
    p = document["principal"]
    principal = Principal(
        via=p["via"],
        key_id=p["key_id"],
        user_id=p["user_id"],
        email=p["email"],
        service_name=p["service_name"],
    )
    return LoggedBatch(principal, document["events"])
