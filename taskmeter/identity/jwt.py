"""Bearer JWT verification: HS256 with a shared secret, RS256/ES256 with a key or a JWKS file.

The accepted algorithm is decided by the key we hold, never by the token: a token that names
`none`, or HS256 while we only hold a public key (the classic confusion attack), is refused.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from taskmeter.config import Settings

__all__ = ["JwtError", "JwtVerifier"]

LEEWAY_S = 10


class JwtError(Exception):
    """The token is not acceptable; the message is safe to show the client."""


def _algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    raise ValueError("JWT public keys must be RSA or EC (P-256)")


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.email_claim = settings.jwt_email_claim
        self.public_key: Any = None
        self.public_algorithm: str | None = None
        self.jwks: dict[str, tuple[Any, str]] = {}
        if settings.jwt_public_key_file is not None:
            self.public_key = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            self.public_algorithm = _algorithm_for(self.public_key)
        if settings.jwks_file is not None:
            for entry in json.loads(settings.jwks_file.read_text())["keys"]:
                jwk = jwt.PyJWK(entry)
                self.jwks[str(entry.get("kid", ""))] = (jwk.key, _algorithm_for(jwk.key))

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks)

    def _key_for(self, header: dict[str, Any]) -> tuple[Any, str]:
        alg = header.get("alg")
        if alg == "HS256" and self.secret:
            return self.secret, "HS256"
        if self.jwks:
            kid = str(header.get("kid", ""))
            if kid in self.jwks and self.jwks[kid][1] == alg:
                return self.jwks[kid]
        if self.public_algorithm is not None and self.public_algorithm == alg:
            return self.public_key, self.public_algorithm
        raise JwtError(f"token algorithm {alg!r} is not accepted")

    def email_of(self, token: str) -> str:
        """Verify `token` and return the email it names, lower-cased."""
        if not self.configured:
            raise JwtError("JWT authentication is not configured on this server")
        try:
            header = jwt.get_unverified_header(token)
            key, algorithm = self._key_for(header)
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={
                    "require": ["exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise JwtError("token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise JwtError(f"invalid token: {exc}") from exc
        email = claims.get(self.email_claim)
        if not isinstance(email, str) or "@" not in email:
            raise JwtError(f"token has no {self.email_claim!r} claim naming a user")
        return email.strip().lower()
