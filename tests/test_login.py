"""Signing in with a Google ID token: the happy path, the cookie, and what is stored."""

from __future__ import annotations

import hashlib

import asyncpg

from tests.conftest import Browser, Service
from tests.issuer import Issuer


async def test_sign_in_sets_a_session_cookie_and_returns_the_user(
    browser: Browser, issuer: Issuer
) -> None:
    nonce = await browser.new_nonce()
    token = issuer.token(email="ada@gmail.com", name="Ada", nonce=nonce)

    response = await browser.post("/api/login", json={"credential": token, "select_by": "btn"})

    assert response.status == 200, await response.text()
    user = (await response.json())["user"]
    assert user["email"] == "ada@gmail.com"
    assert user["username"] == "ada@gmail.com"
    assert user["name"] == "Ada"
    assert user["admin"] is False
    cookie = response.cookies["session_id"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "86400"
    assert not cookie["secure"]
    me = await browser.get("/api/user")
    assert me.status == 200, await me.text()
    assert (await me.json())["email"] == "ada@gmail.com"


async def test_only_the_hash_of_the_session_token_is_stored(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.sign_in(issuer)
    token = browser.cookie("session_id")
    assert token

    rows = await db.fetch("SELECT token_hash FROM sessions")
    assert [row["token_hash"] for row in rows] == [hashlib.sha256(token.encode()).digest()]
    dump = await db.fetchval("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM sessions) t")
    assert token not in dump


async def test_me_shows_the_current_session(
    browser: Browser, issuer: Issuer, service: Service
) -> None:
    await browser.sign_in(issuer)

    response = await browser.get("/api/me")

    assert response.status == 200
    body = await response.json()
    assert body["user"]["email"] == "someone@gmail.com"
    assert body["session"]["ip"] == "127.0.0.1"
    assert body["session"]["user_agent"].startswith("Mozilla/5.0")
    assert response.headers["Cache-Control"] == "no-store"
