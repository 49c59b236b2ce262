"""Dev login (DEV_LOGIN=1): a local stand-in for Google, for offline use and tests.

It signs Google-shaped ID tokens with a key made at startup, serves their certs in Google's
format, and serves a small script with the same interface as Google's client library, so the
frontend runs its real sign-in code. The token verifier trusts this key beside Google's.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import time
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from service.access import public
from service.config import CONFIG
from service.errors import BadRequest
from service.payload import read_json_object

CLIENT_SCRIPT = Path(__file__).parent / "static" / "dev-login-client.js"
CLIENT_SCRIPT_PATH = "/api/dev-login/client.js"  # where /api/config points the frontend
TOKEN_LIFETIME = 3600

routes = web.RouteTableDef()


class DevIssuer:
    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = f"dev-login-{secrets.token_hex(8)}"
        self.certs = {self.key_id: _self_signed_certificate(key)}
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(key_pem, self.key_id)

    def sign(self, *, email: str, audience: str, nonce: str | None) -> str:
        now = int(time.time())
        local_part, _, domain = email.partition("@")
        claims: dict[str, object] = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": audience,
            # Stable per address, as Google's `sub` is per account.
            "sub": "dev-" + hashlib.sha256(email.lower().encode()).hexdigest()[:24],
            "email": email,
            "email_verified": True,
            "name": local_part,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME,
        }
        if domain.lower() != "gmail.com":
            claims["hd"] = domain.lower()  # as for a Google Workspace account
        if nonce:
            claims["nonce"] = nonce
        token: bytes = jwt.encode(self._signer, claims)
        return token.decode()


def _self_signed_certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-login")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


DEV_ISSUER = web.AppKey("dev_issuer", DevIssuer)


@routes.get("/dev-login/certs")
@public
async def get_certs(request: web.Request) -> web.Response:
    return web.json_response(
        request.config_dict[DEV_ISSUER].certs, headers={"Cache-Control": "public, max-age=3600"}
    )


@routes.get("/dev-login/client.js")
@public
async def get_client_script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CLIENT_SCRIPT, headers={"Content-Type": "text/javascript"})


@routes.post("/dev-login/token")
@public
async def create_token(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    email = body.get("email")
    nonce = body.get("nonce")
    if not isinstance(email, str) or email.count("@") != 1 or not email.partition("@")[2]:
        raise BadRequest("invalid_email", "'email' must be an email address.")
    if nonce is not None and not isinstance(nonce, str):
        raise BadRequest("invalid_nonce", "'nonce' must be a string.")
    config = request.config_dict[CONFIG]
    credential = request.config_dict[DEV_ISSUER].sign(
        email=email.strip(), audience=config.client_ids[0], nonce=nonce
    )
    return web.json_response({"credential": credential})
