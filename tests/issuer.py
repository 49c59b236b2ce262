"""A local stand-in for Google's token issuer: its own RSA key, certs served like Google's.

Tokens are minted with PyJWT, independently of the service's code; the service verifies them
with the real google-auth verifier, fetching the certs over HTTP from this app.
"""

from __future__ import annotations

import datetime
import time
from functools import cache
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CLIENT_ID = "test-client.apps.googleusercontent.com"
KEY_ID = "test-key-1"


@cache
def signing_key(name: str = "issuer") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local-issuer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


class Issuer:
    """Serves `{kid: certificate}` at /oauth2/v1/certs with a Cache-Control lifetime."""

    def __init__(self) -> None:
        self.key = signing_key()
        self.certs = {KEY_ID: certificate_pem(self.key)}
        self.cert_fetches = 0
        self.certs_url = ""  # set once the server listens
        self.app = web.Application()
        self.app.router.add_get("/oauth2/v1/certs", self._serve_certs)

    async def _serve_certs(self, request: web.Request) -> web.Response:
        self.cert_fetches += 1
        return web.json_response(
            self.certs, headers={"Cache-Control": "public, max-age=3600, must-revalidate"}
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Google's claims for a verified user; an override of None drops that claim."""
        now = int(time.time())
        email = overrides.get("email", "someone@gmail.com")
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "azp": CLIENT_ID,
            "aud": CLIENT_ID,
            "sub": "sub-" + email,
            "email": email,
            "email_verified": True,
            "name": "Some One",
            "picture": "https://example.com/picture.png",
            "iat": now,
            "nbf": now - 5,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        *,
        key: Any = None,
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        return jwt.encode(
            self.claims(**claims),
            self.key if key is None else key,
            algorithm=algorithm,
            headers={"kid": KEY_ID, **(headers or {})},
        )
