"""Sessions: the middleware, the cookie, expiry, revocation, fixation, logout and the purge."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service import cookies, nonces
from service.app import create_app
from service.sessions import hash_token, purge_expired
from tests.conftest import Browser, Service, service_config
from tests.issuer import Issuer

# --- helpers -------------------------------------------------------------------------------


def set_nonce_cookie_header(
    response: aiohttp.ClientResponse, prefix: str
) -> tuple[str, dict[str, str]]:
    """The name of the one nonce cookie `response` sets, and its attributes (as below)."""
    names = [
        header.partition("=")[0]
        for header in response.headers.getall("Set-Cookie", [])
        if header.startswith(prefix)
    ]
    assert len(names) == 1, names
    return names[0], set_cookie_header(response, names[0])


def set_cookie_header(response: aiohttp.ClientResponse, name: str) -> dict[str, str]:
    """The attributes of the raw Set-Cookie header for `name` (lower-cased keys; flags map to "").

    The cookie's own value is under "value". Exactly one such header must be present.
    """
    found = []
    for header in response.headers.getall("Set-Cookie", []):
        first, *attributes = (part.strip() for part in header.split(";"))
        key, _, value = first.partition("=")
        if key == name:
            parsed = {"value": value.strip('"')}
            for attribute in attributes:
                attr, _, attr_value = attribute.partition("=")
                parsed[attr.strip().lower()] = attr_value.strip()
            found.append(parsed)
    assert len(found) == 1, response.headers.getall("Set-Cookie", [])
    return found[0]


async def get_with_token(service: Service, path: str, cookie: str) -> aiohttp.ClientResponse:
    """A request from a brand-new browser carrying only an explicit Cookie header."""
    return await service.browser().get(path, headers={"Cookie": cookie})


async def session_rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM sessions ORDER BY created_at")


async def user_id(db: asyncpg.Pool, email: str) -> int:
    found: int = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    return found


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    assert (await response.json())["error"] == code


# --- no session ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/user", "/api/me"])
async def test_no_cookie_is_not_signed_in(browser: Browser, path: str) -> None:
    response = await browser.get(path)

    await assert_error(response, 401, "not_signed_in")
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/api/user", "/api/me"])
async def test_unknown_cookie_is_not_signed_in(service: Service, path: str) -> None:
    token = secrets.token_urlsafe(32)

    response = await get_with_token(service, path, f"session_id={token}")

    await assert_error(response, 401, "not_signed_in")


async def test_a_real_token_under_another_cookie_name_is_not_accepted(
    browser: Browser, issuer: Issuer, service: Service
) -> None:
    await browser.sign_in(issuer)
    token = browser.cookie("session_id")

    response = await get_with_token(service, "/api/user", f"session={token}")

    await assert_error(response, 401, "not_signed_in")


def test_a_remembered_cookie_header_gives_what_aiohttp_parses_and_no_secret_is_kept() -> None:
    plain = service_config("postgresql://unused", "http://unused", 8000)
    secure = dataclasses.replace(plain, cookie_secure=True)
    header = 'theme=dark; session_id=plain-token; __Host-session_id="secure-token"; other=1'
    for _ in range(2):  # the second time from memory
        request = make_mocked_request("GET", "/api/user", headers={"Cookie": header})
        for config in (plain, secure):
            expected = request.cookies[config.session_cookie_name]
            assert cookies.session_token_hash(request, config) == hash_token(expected)
    empty = make_mocked_request("GET", "/", headers={"Cookie": "session_id=; a=b"})
    assert cookies.session_token_hash(empty, plain) is None

    assert cookies._recent, "nothing remembered"
    for n in range(3 * cookies.RECENT_COOKIE_HEADERS):
        request = make_mocked_request("GET", "/", headers={"Cookie": f"session_id=token-{n}"})
        assert cookies.session_token_hash(request, plain) == hash_token(f"token-{n}")
    remembered = repr(cookies._recent)
    assert len(cookies._recent) <= cookies.RECENT_COOKIE_HEADERS
    assert "token-" not in remembered and "plain-token" not in remembered


async def test_every_api_response_is_no_store(browser: Browser, issuer: Issuer) -> None:
    responses = [
        await browser.get("/api/user"),  # 401
        await browser.get("/api/config"),  # 200, public
        await browser.post("/api/login/nonce"),  # 200, sets a cookie
        await browser.post("/api/login", json={}),  # 400
        await browser.get("/api/no-such-route"),  # 404
        await browser.get("/api/logout"),  # 405
    ]
    await browser.sign_in(issuer)
    responses += [
        await browser.get("/api/user"),
        await browser.get("/api/me"),
        await browser.post("/api/logout"),  # 204
    ]

    assert [r.status for r in responses] == [401, 200, 200, 400, 404, 405, 200, 200, 204]
    for response in responses:
        assert response.headers.get("Cache-Control") == "no-store", response.url


# --- expiry ----------------------------------------------------------------------------------


async def test_idle_session_expires_while_an_active_one_stays_alive(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    # Idle timeout 2s, so last_seen_at is written when over 1s old.
    service = await start_service(session_idle_timeout=2)
    idle, active = service.browser(), service.browser()
    await idle.sign_in(issuer, email="idle@gmail.com")
    await active.sign_in(issuer, email="active@gmail.com")
    idle_token = idle.cookie("session_id")
    started = time.monotonic()

    # The active browser keeps asking for longer than the idle timeout.
    statuses = []
    while time.monotonic() - started < 3.0:
        await asyncio.sleep(0.5)
        statuses.append((await active.get("/api/user")).status)
    assert len(statuses) >= 5
    assert set(statuses) == {200}

    # The idle browser's session is refused by the check itself (its row is still there).
    assert time.monotonic() - started > 2.5
    response = await get_with_token(service, "/api/user", f"session_id={idle_token}")
    await assert_error(response, 401, "not_signed_in")
    assert await db.fetchval(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = $1",
        "idle@gmail.com",
    )
    assert (await active.get("/api/me")).status == 200


async def test_absolute_timeout_ends_a_session_despite_activity(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(session_absolute_timeout=2)
    browser = service.browser()
    nonce = await browser.new_nonce()
    login = await browser.post(
        "/api/login", json={"credential": issuer.token(email="a@gmail.com", nonce=nonce)}
    )
    assert login.status == 200, await login.text()
    assert set_cookie_header(login, "session_id")["max-age"] == "2"
    token = browser.cookie("session_id")
    started = time.monotonic()

    while time.monotonic() - started < 1.2:
        response = await get_with_token(service, "/api/user", f"session_id={token}")
        assert response.status == 200
        await asyncio.sleep(0.3)
    await asyncio.sleep(2.5 - (time.monotonic() - started))
    # Fresh activity does not help either: the absolute limit is on expires_at.
    await db.execute("UPDATE sessions SET last_seen_at = now()")

    # The token is sent by hand: the client's jar drops the cookie itself after Max-Age.
    response = await get_with_token(service, "/api/user", f"session_id={token}")
    await assert_error(response, 401, "not_signed_in")


async def test_cookie_max_age_is_the_absolute_timeout(start_service: Any, issuer: Issuer) -> None:
    service = await start_service(session_absolute_timeout=7200)
    browser = service.browser()
    nonce = await browser.new_nonce()

    login = await browser.post(
        "/api/login", json={"credential": issuer.token(email="a@gmail.com", nonce=nonce)}
    )

    assert login.status == 200, await login.text()
    assert set_cookie_header(login, "session_id")["max-age"] == "7200"


async def test_session_expires_at_is_the_absolute_timeout_from_creation(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(session_absolute_timeout=7200)
    await service.browser().sign_in(issuer)

    lifetime = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) FROM sessions")

    assert float(lifetime) == pytest.approx(7200, abs=1)


# --- last_seen_at ----------------------------------------------------------------------------


async def last_seen(db: asyncpg.Pool) -> Any:
    return await db.fetchval("SELECT last_seen_at FROM sessions")


async def test_quick_requests_do_not_write_last_seen_at(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.sign_in(issuer)
    before = await last_seen(db)

    assert (await browser.get("/api/user")).status == 200
    assert (await browser.get("/api/me")).status == 200

    assert await last_seen(db) == before


@pytest.mark.parametrize(
    ("idle_timeout", "fresh_age", "stale_age"),
    [
        (1800, 45, 75),  # touch interval capped at 60s
        (4, 1, 3),  # touch interval idle/2 = 2s
    ],
)
async def test_last_seen_at_is_written_once_per_touch_interval(
    start_service: Any,
    issuer: Issuer,
    db: asyncpg.Pool,
    idle_timeout: int,
    fresh_age: int,
    stale_age: int,
) -> None:
    # The database's own touch (the cache keeps its own clock, and a write of last_seen_at
    # alone is no news to it: tests/test_session_cache.py).
    service = await start_service(session_idle_timeout=idle_timeout, session_cache=False)
    browser = service.browser()
    await browser.sign_in(issuer)

    # Younger than the interval: the request is served and last_seen_at is left alone.
    aged = await db.fetchval(
        "UPDATE sessions SET last_seen_at = now() - make_interval(secs => $1)"
        " RETURNING last_seen_at",
        fresh_age,
    )
    assert (await browser.get("/api/user")).status == 200
    assert await last_seen(db) == aged

    # Older than the interval (but not idle-expired): the request moves it to now.
    aged = await db.fetchval(
        "UPDATE sessions SET last_seen_at = now() - make_interval(secs => $1)"
        " RETURNING last_seen_at",
        stale_age,
    )
    assert (await browser.get("/api/user")).status == 200
    moved = await last_seen(db)
    assert moved > aged
    assert await db.fetchval("SELECT now() - $1::timestamptz < interval '5 seconds'", moved)
    assert (await browser.get("/api/me")).status == 200
    assert await last_seen(db) == moved


# --- revocation ------------------------------------------------------------------------------


async def test_deleting_the_session_rows_signs_out_on_the_next_request(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop, phone = service.browser(), service.browser()
    await laptop.sign_in(issuer, email="ada@gmail.com")
    await phone.sign_in(issuer, email="ada@gmail.com")
    assert (await laptop.get("/api/user")).status == 200
    assert (await phone.get("/api/user")).status == 200

    await db.execute("DELETE FROM sessions WHERE user_id = $1", await user_id(db, "ada@gmail.com"))

    await assert_error(await laptop.get("/api/user"), 401, "not_signed_in")
    await assert_error(await phone.get("/api/me"), 401, "not_signed_in")


async def test_disabling_the_user_refuses_the_next_request(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.sign_in(issuer, email="ada@gmail.com")
    assert (await browser.get("/api/user")).status == 200

    await db.execute("UPDATE users SET disabled = true WHERE email = 'ada@gmail.com'")

    await assert_error(await browser.get("/api/user"), 403, "user_disabled")
    await assert_error(await browser.get("/api/me"), 403, "user_disabled")
    await db.execute("UPDATE users SET disabled = false WHERE email = 'ada@gmail.com'")
    assert (await browser.get("/api/user")).status == 200


async def test_revoking_one_users_sessions_leaves_other_users_signed_in(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada, bob = service.browser(), service.browser()
    await ada.sign_in(issuer, email="ada@gmail.com")
    await bob.sign_in(issuer, email="bob@gmail.com")

    await db.execute("DELETE FROM sessions WHERE user_id = $1", await user_id(db, "ada@gmail.com"))

    assert (await ada.get("/api/user")).status == 401
    assert (await bob.get("/api/user")).status == 200


# --- fixation --------------------------------------------------------------------------------


@pytest.mark.parametrize("second_email", ["a@gmail.com", "b@gmail.com"])
async def test_signing_in_again_replaces_the_session(
    service: Service, browser: Browser, issuer: Issuer, db: asyncpg.Pool, second_email: str
) -> None:
    await browser.sign_in(issuer, email="a@gmail.com")
    old_token = browser.cookie("session_id")
    old_session = (await (await browser.get("/api/me")).json())["session"]["id"]
    a_id = await user_id(db, "a@gmail.com")

    await browser.sign_in(issuer, email=second_email)

    new_token = browser.cookie("session_id")
    assert new_token
    assert new_token != old_token
    rows = await session_rows(db)
    assert [str(row["id"]) for row in rows if str(row["id"]) == old_session] == []
    assert len(rows) == 1
    assert rows[0]["user_id"] == await user_id(db, second_email)
    stale = await get_with_token(service, "/api/user", f"session_id={old_token}")
    await assert_error(stale, 401, "not_signed_in")
    current = await browser.get("/api/user")
    assert current.status == 200
    assert (await current.json())["email"] == second_email
    events = await db.fetch(
        "SELECT user_id, detail->>'session_id' AS session_id, detail->>'reason' AS reason"
        " FROM auth_events WHERE kind = 'session_revoked'"
    )
    assert len(events) == 1
    assert events[0]["user_id"] == a_id
    assert events[0]["session_id"] == old_session
    assert events[0]["reason"] == "replaced_by_login"


async def test_signing_in_on_another_browser_keeps_the_first_session(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop, phone = service.browser(), service.browser()
    await laptop.sign_in(issuer, email="a@gmail.com")
    await phone.sign_in(issuer, email="a@gmail.com")

    assert (await laptop.get("/api/user")).status == 200
    assert (await phone.get("/api/user")).status == 200
    assert len(await session_rows(db)) == 2
    assert not await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'session_revoked'")


# --- logout ----------------------------------------------------------------------------------


def assert_clears_cookie(response: aiohttp.ClientResponse, name: str, *, secure: bool) -> None:
    cookie = set_cookie_header(response, name)
    assert cookie["value"] == ""
    assert cookie["max-age"] == "0"
    assert cookie["path"] == "/"
    assert "httponly" in cookie
    assert ("secure" in cookie) is secure
    assert "domain" not in cookie


async def test_logout_ends_the_session(
    service: Service, browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.sign_in(issuer, email="a@gmail.com")
    token = browser.cookie("session_id")
    session_id = (await (await browser.get("/api/me")).json())["session"]["id"]

    response = await browser.post("/api/logout")

    assert response.status == 204
    assert_clears_cookie(response, "session_id", secure=False)
    assert await session_rows(db) == []
    assert browser.cookie("session_id") is None
    await assert_error(await browser.get("/api/user"), 401, "not_signed_in")
    stale = await get_with_token(service, "/api/user", f"session_id={token}")
    await assert_error(stale, 401, "not_signed_in")
    events = await db.fetch(
        "SELECT user_id, detail->>'session_id' AS session_id FROM auth_events WHERE kind = 'logout'"
    )
    assert len(events) == 1
    assert events[0]["user_id"] == await user_id(db, "a@gmail.com")
    assert events[0]["session_id"] == session_id


async def test_logout_ends_only_this_browsers_session(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop, phone = service.browser(), service.browser()
    await laptop.sign_in(issuer, email="a@gmail.com")
    await phone.sign_in(issuer, email="a@gmail.com")

    assert (await laptop.post("/api/logout")).status == 204

    assert (await laptop.get("/api/user")).status == 401
    assert (await phone.get("/api/user")).status == 200
    assert len(await session_rows(db)) == 1


async def test_logout_is_idempotent(
    service: Service, browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    without_session = await service.browser().post("/api/logout")
    assert without_session.status == 204
    assert_clears_cookie(without_session, "session_id", secure=False)

    unknown = await service.browser().post(
        "/api/logout", headers={"Cookie": f"session_id={secrets.token_urlsafe(32)}"}
    )
    assert unknown.status == 204
    assert_clears_cookie(unknown, "session_id", secure=False)

    await browser.sign_in(issuer)
    token = browser.cookie("session_id")
    assert (await browser.post("/api/logout")).status == 204
    again = await service.browser().post("/api/logout", headers={"Cookie": f"session_id={token}"})
    assert again.status == 204
    assert_clears_cookie(again, "session_id", secure=False)
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'logout'") == 1


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_logout_only_answers_post(browser: Browser, issuer: Issuer, method: str) -> None:
    await browser.sign_in(issuer)

    response = await browser.request(method, "/api/logout")

    await assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert (await browser.get("/api/user")).status == 200


# --- secure cookies --------------------------------------------------------------------------


async def secure_sign_in(browser: Browser, issuer: Issuer, email: str) -> aiohttp.ClientResponse:
    """The login flow in secure mode, passing the __Host- nonce cookie back by hand."""
    nonce_response = await browser.post("/api/login/nonce")
    assert nonce_response.status == 200
    name, nonce_cookie = set_nonce_cookie_header(nonce_response, "__Host-login_nonce_")
    assert "secure" in nonce_cookie
    assert "httponly" in nonce_cookie
    assert nonce_cookie["path"] == "/"
    assert "domain" not in nonce_cookie
    nonce = (await nonce_response.json())["nonce"]
    return await browser.post(
        "/api/login",
        json={"credential": issuer.token(email=email, nonce=nonce)},
        headers={"Cookie": f"{name}={nonce_cookie['value']}"},
    )


async def test_secure_mode_uses_a_host_prefixed_secure_cookie(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(cookie_secure=True)
    browser = service.browser()

    login = await secure_sign_in(browser, issuer, "a@gmail.com")

    assert login.status == 200, await login.text()
    cookie = set_cookie_header(login, "__Host-session_id")
    assert "secure" in cookie
    assert "httponly" in cookie
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert "domain" not in cookie
    assert not [h for h in login.headers.getall("Set-Cookie") if h.startswith("session_id=")]
    token = cookie["value"]
    assert token
    # Over plain http the client keeps the Secure cookie to itself...
    assert (await browser.get("/api/user")).status == 401
    # ...so it is sent by hand, as a browser would over https.
    response = await get_with_token(service, "/api/user", f"__Host-session_id={token}")
    assert response.status == 200, await response.text()
    assert (await response.json())["email"] == "a@gmail.com"


async def test_secure_mode_refuses_the_plain_cookie_name(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(cookie_secure=True)
    login = await secure_sign_in(service.browser(), issuer, "a@gmail.com")
    assert login.status == 200, await login.text()
    token = set_cookie_header(login, "__Host-session_id")["value"]

    response = await get_with_token(service, "/api/user", f"session_id={token}")

    await assert_error(response, 401, "not_signed_in")


async def test_secure_mode_refuses_the_plain_nonce_cookie_name(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(cookie_secure=True)
    browser = service.browser()
    nonce_response = await browser.post("/api/login/nonce")
    name, cookie = set_nonce_cookie_header(nonce_response, "__Host-login_nonce_")
    nonce = (await nonce_response.json())["nonce"]

    login = await browser.post(
        "/api/login",
        json={"credential": issuer.token(email="a@gmail.com", nonce=nonce)},
        headers={"Cookie": f"{name.removeprefix('__Host-')}={cookie['value']}"},
    )

    await assert_error(login, 401, "invalid_nonce")


async def test_secure_mode_logout_clears_the_secure_cookie(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(cookie_secure=True)
    browser = service.browser()
    login = await secure_sign_in(browser, issuer, "a@gmail.com")
    token = set_cookie_header(login, "__Host-session_id")["value"]

    response = await browser.post("/api/logout", headers={"Cookie": f"__Host-session_id={token}"})

    assert response.status == 204
    assert_clears_cookie(response, "__Host-session_id", secure=True)
    assert await session_rows(db) == []
    stale = await get_with_token(service, "/api/user", f"__Host-session_id={token}")
    assert stale.status == 401


# --- purge -----------------------------------------------------------------------------------


class CountingPool:
    """The real pool, with the status of every `execute` kept (to see the batches)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statuses: list[str] = []

    async def execute(self, query: str, *args: Any) -> str:
        status: str = await self.pool.execute(query, *args)
        self.statuses.append(status)
        return status


async def make_user(db: asyncpg.Pool, email: str = "u@gmail.com") -> int:
    new_id: int = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    return new_id


async def insert_session(db: asyncpg.Pool, user: int) -> uuid.UUID:
    session_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO sessions (token_hash, user_id, expires_at)
        VALUES ($1, $2, now() + interval '1 day') RETURNING id
        """,
        secrets.token_bytes(32),
        user,
    )
    return session_id


async def test_purge_deletes_only_dead_sessions_in_batches(db: asyncpg.Pool) -> None:
    user = await make_user(db)
    ids = [await insert_session(db, user) for _ in range(8)]
    expired, idle, alive = ids[:3], ids[3:5], ids[5:]
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", expired
    )
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '1801 seconds' WHERE id = ANY($1)",
        idle,
    )
    # Alive: one idle but inside the timeout, one about to expire, one fresh.
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '1700 seconds' WHERE id = $1",
        alive[0],
    )
    await db.execute(
        "UPDATE sessions SET expires_at = now() + interval '1 minute' WHERE id = $1", alive[1]
    )
    counting = CountingPool(db)

    purged = await purge_expired(counting, idle_timeout=1800, batch=2)  # type: ignore[arg-type]

    assert purged == 5
    deletes = [s for s in counting.statuses if s.startswith("DELETE")]
    # 3 expired, then 2 idle: each kind in batches of at most 2, until a batch comes up short.
    assert deletes == ["DELETE 2", "DELETE 1", "DELETE 2", "DELETE 0"]
    left = {row["id"] for row in await db.fetch("SELECT id FROM sessions")}
    assert left == set(alive)
    assert await purge_expired(db, idle_timeout=1800, batch=2) == 0


async def test_purge_stops_after_an_exact_multiple_of_the_batch(db: asyncpg.Pool) -> None:
    user = await make_user(db)
    for _ in range(4):
        await insert_session(db, user)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")

    assert await purge_expired(db, idle_timeout=1800, batch=2) == 4
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_purge_judges_idleness_by_the_given_timeout(db: asyncpg.Pool) -> None:
    user = await make_user(db)
    session_id = await insert_session(db, user)
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '1 hour'")

    assert await purge_expired(db, idle_timeout=7200) == 0
    assert await db.fetchval("SELECT id FROM sessions") == session_id
    assert await purge_expired(db, idle_timeout=1800) == 1
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_purge_deletes_spent_nonces_only_once_expired(db: asyncpg.Pool) -> None:
    await db.execute(
        """
        INSERT INTO spent_nonces (nonce, expires_at) VALUES
            ('old', now() - interval '1 second'), ('live', now() + interval '1 hour')
        """
    )

    await nonces.purge_spent(db)

    assert [row["nonce"] for row in await db.fetch("SELECT nonce FROM spent_nonces")] == ["live"]


def purge_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__name__", "") == "purge_forever"
    ]


async def test_background_purge_runs_with_the_app_and_stops_with_it(
    database_url: str, issuer: Issuer, db: asyncpg.Pool
) -> None:
    user = await make_user(db)
    await insert_session(db, user)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    # AUDIT_RETENTION_DAYS is 90 by default.
    await db.execute(
        """
        INSERT INTO auth_events (kind, at) VALUES
            ('login_ok', now() - interval '91 days'), ('login_ok', now() - interval '89 days')
        """
    )
    assert purge_tasks() == []
    runner = web.AppRunner(create_app(service_config(database_url, issuer.certs_url, 8080)))

    await runner.setup()
    try:
        tasks = purge_tasks()
        assert len(tasks) == 1
        for _ in range(100):  # the first purge runs at startup; wait up to 5s for it
            if not await db.fetchval("SELECT count(*) FROM sessions"):
                break
            await asyncio.sleep(0.05)
        assert await db.fetchval("SELECT count(*) FROM sessions") == 0
        for _ in range(100):  # events are purged after sessions
            if await db.fetchval("SELECT count(*) FROM auth_events") == 1:
                break
            await asyncio.sleep(0.05)
        assert await db.fetchval("SELECT count(*) FROM auth_events") == 1
        assert await db.fetchval("SELECT now() - at < interval '90 days' FROM auth_events")
    finally:
        await runner.cleanup()

    assert tasks[0].cancelled()
    assert purge_tasks() == []
