"""API keys: `neo_sk_` + 32 CSPRNG characters, stored only as a SHA-256 hash.

A plain SHA-256 is the right hash here: the key carries ~190 bits of entropy, so there is
nothing for a slow password hash to protect, and lookups stay one indexed equality.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "NewKey", "generate_key", "hash_key", "hashes_match", "is_well_formed"]

KEY_PREFIX = "neo_sk_"
KEY_BODY_LENGTH = 32
ALPHABET = string.ascii_letters + string.digits
_WELL_FORMED = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9]{{{KEY_BODY_LENGTH}}}$")
# What `keys list` shows of a key: enough to recognise it, far too little to use it.
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 4


@dataclass(frozen=True)
class NewKey:
    id: str
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def hashes_match(stored_hash: str, candidate_hash: str) -> bool:
    return hmac.compare_digest(stored_hash.encode(), candidate_hash.encode())


def is_well_formed(candidate: str) -> bool:
    return bool(_WELL_FORMED.match(candidate))


def generate_key() -> NewKey:
    plaintext = KEY_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(KEY_BODY_LENGTH))
    return NewKey(
        id="key_" + secrets.token_hex(8),
        plaintext=plaintext,
        prefix=plaintext[:SHOWN_PREFIX_LENGTH],
        key_hash=hash_key(plaintext),
    )
