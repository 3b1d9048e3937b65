"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

    secret   = "whsec_" + base64(24 random bytes)             one per endpoint
    signed   = f"{webhook-id}.{webhook-timestamp}.{body}"     the exact bytes sent
    header   = "v1," + base64(HMAC-SHA256(secret bytes, signed))

Every attempt is signed afresh with its own timestamp (receivers refuse old timestamps), over
the same body and `webhook-id`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "new_secret", "signature", "signed_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret


def new_secret() -> str:
    """A fresh endpoint secret, `whsec_` + base64 of 24 bytes from the CSPRNG."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }
