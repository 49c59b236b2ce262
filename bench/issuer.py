"""A local stand-in for Google's token issuer, as tests/issuer.py does it: an RSA key, its
certificate served as `{kid: PEM}` with Google's `Cache-Control`, tokens minted with PyJWT.

It counts every certs fetch, so the bench can show the service fetches once per worker lifetime
rather than once per sign-in.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CLIENT_ID = "bench-client.apps.googleusercontent.com"
KEY_ID = "bench-key-1"
CERTS_PATH = "/oauth2/v1/certs"
CACHE_CONTROL = "public, max-age=3600"


def nonce_for(secret: str) -> str:
    """The token's `nonce` claim for a login-nonce cookie: base64url(sha256(secret)), unpadded.

    Written out here rather than imported from the service, so a bug there would show.
    """
    digest = hashlib.sha256(secret.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def claims(email: str, nonce: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "https://accounts.google.com",
        "azp": CLIENT_ID,
        "aud": CLIENT_ID,
        "sub": "bench-sub-" + email,
        "email": email,
        "email_verified": True,
        "name": "Bench User",
        "picture": "https://example.com/picture.png",
        "nonce": nonce,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
    }


def mint(key: Any, email: str, nonce: str) -> str:
    return jwt.encode(claims(email, nonce), key, algorithm="RS256", headers={"kid": KEY_ID})


def mint_pairs(private_pem: bytes, emails: list[str], start: int, count: int) -> list[str]:
    """`count` lines of "cookie token": a nonce cookie (name=secret, named as the service names
    them: for when it was issued, now) and a token carrying its nonce; runs in a worker process.
    """
    key = serialization.load_pem_private_key(private_pem, password=None)
    lines = []
    for index in range(start, start + count):
        secret = secrets.token_urlsafe(32)
        token = mint(key, emails[index % len(emails)], nonce_for(secret))
        name = f"login_nonce_{int(time.time() * 1_000_000):x}_{secrets.token_hex(3)}"
        lines.append(f"{name}={secret} {token}")
    return lines


class Issuer:
    """Serves the certs over HTTP on a loopback port; `fetches` holds the time of each fetch."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.certs = {KEY_ID: _certificate_pem(self.key)}
        self.fetches: list[float] = []
        self.certs_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(CERTS_PATH, self._serve_certs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.certs_url = f"http://127.0.0.1:{port}{CERTS_PATH}"
        return self.certs_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_certs(self, request: web.Request) -> web.Response:
        self.fetches.append(time.monotonic())
        return web.json_response(self.certs, headers={"Cache-Control": CACHE_CONTROL})

    def fetches_between(self, start: float, end: float) -> int:
        return sum(start <= at <= end for at in self.fetches)

    def token(self, email: str, nonce: str) -> str:
        return mint(self.key, email, nonce)


def _certificate_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-issuer")])
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
