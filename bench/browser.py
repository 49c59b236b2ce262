"""The bench's side of HTTP: signing in through the real API as a browser does, checked GETs."""

from __future__ import annotations

import aiohttp

from bench.issuer import Issuer, nonce_for

SESSION_COOKIE = "session_id"  # COOKIE_SECURE=false
NONCE_COOKIE_PREFIX = "login_nonce_"  # one cookie per nonce, named for when it was issued


def cookie(client: aiohttp.ClientSession, name: str) -> str | None:
    for morsel in client.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def sign_in(client: aiohttp.ClientSession, base: str, issuer: Issuer, email: str) -> str:
    """The browser's flow through the real API: a nonce, a token carrying it, the login."""
    origin = {"Origin": base}
    async with client.post(f"{base}/api/login/nonce", headers=origin) as response:
        assert response.status == 200, await response.text()
        nonce = (await response.json())["nonce"]
    secrets_held = [m.value for m in client.cookie_jar if m.key.startswith(NONCE_COOKIE_PREFIX)]
    if nonce not in [nonce_for(secret) for secret in secrets_held]:
        raise RuntimeError("the harness's idea of the login nonce differs from the service's")
    body = {"credential": issuer.token(email, nonce)}
    async with client.post(f"{base}/api/login", json=body, headers=origin) as response:
        if response.status != 200:
            raise RuntimeError(f"sign-in failed: {response.status} {await response.text()}")
    token = cookie(client, SESSION_COOKIE)
    assert token is not None, "no session cookie after signing in"
    return token


async def expect(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> bytes:
    async with client.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {body[:300]!r}")
        return body
