"""The per-worker session cache: it answers from memory, hears every change made anywhere
within 50 ms of its commit, acts on the worker's own changes at once, and fails closed."""

from __future__ import annotations

import asyncio
import secrets
import statistics
from typing import Any

import asyncpg
import pytest

from service.session_cache import SessionCache
from service.sessions import hash_token
from tests.conftest import Browser, Service, service_config
from tests.issuer import Issuer

BOUND = 0.050  # seconds from a commit to the first refusal


def twin(browser: Browser, service: Service) -> Browser:
    """Another client holding the same session cookie."""
    other = service.browser()
    other.session.cookie_jar.update_cookies({"session_id": browser.cookie("session_id") or ""})
    return other


async def signed_in(service: Service, issuer: Issuer, email: str = "ada@gmail.com") -> Browser:
    browser = service.browser()
    await browser.sign_in(issuer, email=email)
    assert (await browser.get("/api/user")).status == 200  # now cached
    return browser


@pytest.fixture
async def service(start_service: Any) -> Service:
    """The service as production runs it, with the session cache."""
    started: Service = await start_service(session_cache=True)
    return started


async def test_a_cached_session_is_answered_from_memory(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    cached = await start_service(session_cache=True)
    uncached = await start_service(session_cache=False)
    browsers = [
        await signed_in(cached, issuer, "ada@gmail.com"),
        await signed_in(uncached, issuer, "bob@gmail.com"),
    ]

    # A write of last_seen_at alone notifies no cache: only the database now says "idle".
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '1 day'")

    assert (await browsers[0].get("/api/user")).status == 200
    assert (await browsers[1].get("/api/user")).status == 401


async def test_plain_sql_revocation_is_heard_within_50_ms(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    delays = []
    for _ in range(10):
        browser = await signed_in(service, issuer)
        await db.execute("DELETE FROM sessions")
        delays.append(await browser.answers_within(401, 2))

    assert statistics.median(delays) < BOUND, delays
    assert max(delays) < 4 * BOUND, delays  # room for a busy machine, never seconds


async def test_a_user_disabled_with_sql_is_refused_within_50_ms(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser = await signed_in(service, issuer)

    await db.execute("UPDATE users SET disabled = true")

    assert await browser.answers_within(403, 2) < 4 * BOUND


async def test_this_workers_own_revocations_hold_at_the_very_next_request(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada = await signed_in(service, issuer)
    ada_elsewhere = twin(ada, service)
    assert (await ada.post("/api/logout")).status == 204
    assert (await ada_elsewhere.get("/api/user")).status == 401

    admin = await signed_in(service, issuer, "boss@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE email = 'boss@gmail.com'")
    bob = await signed_in(service, issuer, "bob@gmail.com")
    carol = await signed_in(service, issuer, "carol@gmail.com")
    bob_session = (await (await bob.get("/api/me")).json())["session"]["id"]
    carol_id = (await (await carol.get("/api/user")).json())["id"]

    await admin.answers_within(200, 2, "/api/admin/users")  # the promotion above was plain SQL
    assert (await admin.request("DELETE", f"/api/admin/sessions/{bob_session}")).status == 204
    assert (await bob.get("/api/user")).status == 401
    changed = await admin.request("PATCH", f"/api/admin/users/{carol_id}", json={"disabled": True})
    assert changed.status == 200
    assert (await carol.get("/api/user")).status == 401


async def listener_pid(db: asyncpg.Pool, other_than: int = 0) -> int:
    """The worker's listening connection, once it is there."""
    for _ in range(100):
        pid: int | None = await db.fetchval(
            """
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND query LIKE 'LISTEN %session_cache_%'
              AND pid <> $1
            """,
            other_than,
        )
        if pid is not None:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("no listening connection")


async def test_revocations_made_while_the_listener_is_down_still_hold(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser = await signed_in(service, issuer)

    await db.execute("SELECT pg_terminate_backend($1)", await listener_pid(db))
    await db.execute("DELETE FROM sessions")

    assert await browser.answers_within(401, 2) < 4 * BOUND


async def test_the_cache_is_trusted_again_once_the_listener_is_back(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    old = await listener_pid(db)
    await db.execute("SELECT pg_terminate_backend($1)", old)
    await listener_pid(db, other_than=old)
    await asyncio.sleep(0.1)  # its first heartbeat
    browser = await signed_in(service, issuer)

    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '1 day'")

    assert (await browser.get("/api/user")).status == 200  # from memory again


async def test_the_cache_forgets_a_user_whose_last_session_went(
    db: asyncpg.Pool, database_url: str, issuer: Issuer
) -> None:
    cache = SessionCache(db, database_url, service_config(database_url, issuer.certs_url, 8080))
    cache.healthy = True  # as if its listener had just proven it hears every change
    user = await db.fetchval("INSERT INTO users (email) VALUES ('u@gmail.com') RETURNING id")
    tokens = [secrets.token_urlsafe(32) for _ in range(2)]
    for token in tokens:
        await db.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at)"
            " VALUES ($1, $2, now() + interval '1 day')",
            hash_token(token),
            user,
        )
        assert await cache.lookup(token) is not None
    assert cache.size == (2, 1)

    for token, left in zip(tokens, [(1, 1), (0, 0)], strict=True):
        cache._on_notification(None, 0, "session_changes", "s:" + hash_token(token).hex())
        assert cache.size == left
