"""The per-worker session cache: it answers from memory, and every change made anywhere is
refused once the worker has read the change log in a pass that started after the change:
FRESH_FOR after its commit everywhere, at once on the worker that made it. It fails closed.

Bounds are proven by causality, never by a stopwatch: a request sent FRESH_FOR after a commit
(however late the machine runs it) needs a pass that started after that commit.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.config import Config
from service.session_cache import APPLICATION_NAME, FRESH_FOR, RECONNECT_AFTER, SessionCache
from service.sessions import hash_token
from tests.conftest import Browser, Service, service_config
from tests.issuer import Issuer


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


async def make_the_database_say_idle(db: asyncpg.Pool) -> None:
    """A write of last_seen_at alone logs no change: only Postgres now says "idle", so a 200
    after this came from memory."""
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '1 day'")


async def after_the_bound() -> None:
    await asyncio.sleep(FRESH_FOR * 1.2)


PASS_TIMEOUT = Config.session_cache_pass_timeout  # production's


@pytest.fixture
async def service(start_service: Any) -> Service:
    """The service as production runs it, with the session cache."""
    started: Service = await start_service(session_cache=True, session_cache_fresh_for=FRESH_FOR)
    return started


async def cache_backend(db: asyncpg.Pool) -> int:
    """The pid of the Postgres backend of the (one) service's cache connection."""
    for _ in range(200):
        pid: int | None = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME
        )
        if pid is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the cache has no connection")


async def test_a_cached_session_is_answered_from_memory(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    cached = await start_service(session_cache=True, session_cache_fresh_for=FRESH_FOR)
    uncached = await start_service(session_cache=False)
    browsers = [
        await signed_in(cached, issuer, "ada@gmail.com"),
        await signed_in(uncached, issuer, "bob@gmail.com"),
    ]

    await make_the_database_say_idle(db)

    assert (await browsers[0].get("/api/user")).status == 200
    assert (await browsers[1].get("/api/user")).status == 401


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("DELETE FROM sessions", 401),
        ("DELETE FROM sessions WHERE user_id = (SELECT id FROM users)", 401),
        ("UPDATE sessions SET expires_at = now()", 401),
        ("UPDATE users SET disabled = true", 403),
        ("DELETE FROM users", 401),
        ("TRUNCATE sessions", 401),
    ],
)
async def test_a_change_by_plain_sql_is_refused_once_the_bound_has_passed(
    service: Service, issuer: Issuer, db: asyncpg.Pool, change: str, status: int
) -> None:
    browser = await signed_in(service, issuer)

    await db.execute(change)
    await after_the_bound()

    assert (await browser.get("/api/user")).status == status


async def test_many_sql_revocations_in_a_row_are_each_refused(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    for _ in range(10):
        browser = await signed_in(service, issuer)
        await db.execute("DELETE FROM sessions")
        await after_the_bound()
        assert (await browser.get("/api/user")).status == 401


async def test_this_workers_own_revocations_hold_at_the_very_next_request(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    # A window so long that only the worker's knowing about its own change can explain a 401.
    service = await start_service(session_cache_fresh_for=3600)
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

    # The promotion was plain SQL: it held once a pass started after it, which the sign-ins
    # since (changes of this worker's own) made sure of.
    assert (await admin.request("DELETE", f"/api/admin/sessions/{bob_session}")).status == 204
    assert (await bob.get("/api/user")).status == 401
    changed = await admin.request("PATCH", f"/api/admin/users/{carol_id}", json={"disabled": True})
    assert changed.status == 200
    assert (await carol.get("/api/user")).status == 401


async def test_purges_and_other_users_changes_leave_a_cached_session_in_memory(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada = await signed_in(service, issuer)
    bob = await signed_in(service, issuer, "bob@gmail.com")
    assert (await bob.post("/api/logout")).status == 204
    await db.execute("UPDATE users SET name = 'Robert' WHERE email = 'bob@gmail.com'")

    await make_the_database_say_idle(db)
    await after_the_bound()

    assert (await ada.get("/api/user")).status == 200  # still from memory


async def test_a_killed_cache_connection_fails_closed_then_recovers(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser = await signed_in(service, issuer)

    await db.execute("SELECT pg_terminate_backend($1)", await cache_backend(db))
    await db.execute("DELETE FROM sessions")
    await after_the_bound()

    assert (await browser.get("/api/user")).status == 401
    # After one failed pass it connects again, and answers from memory again.
    again = await signed_in(service, issuer)
    await asyncio.sleep(RECONNECT_AFTER)
    assert (await again.get("/api/user")).status == 200
    await make_the_database_say_idle(db)
    assert (await again.get("/api/user")).status == 200


@pytest.fixture
async def stall(db: asyncpg.Pool) -> AsyncIterator[Any]:
    """Stops the cache's Postgres backend (SIGSTOP): its connection stays open, and answers
    nothing, as a hung server or a stuck network would; continued at the end."""
    stopped: list[int] = []

    async def stop() -> None:
        pid = await cache_backend(db)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    yield stop
    for pid in stopped:
        os.kill(pid, signal.SIGCONT)


async def test_a_stalled_cache_connection_fails_closed_and_revocations_made_meanwhile_hold(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool, stall: Any
) -> None:
    service = await start_service(
        session_cache_fresh_for=FRESH_FOR, session_cache_pass_timeout=PASS_TIMEOUT
    )
    ada = await signed_in(service, issuer)
    bob = await signed_in(service, issuer, "bob@gmail.com")

    await stall()
    await db.execute(
        "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = $1)",
        "ada@gmail.com",
    )
    await after_the_bound()

    # The pass gets no answer: after its timeout the cache gives up and asks the pool.
    assert (await ada.get("/api/user")).status == 401
    assert (await bob.get("/api/user")).status == 200


async def test_the_cache_forgets_a_user_whose_last_session_went(
    db: asyncpg.Pool, database_url: str, issuer: Issuer
) -> None:
    config = service_config(database_url, issuer.certs_url, 8080, session_cache=True)
    cache = SessionCache(db, config)
    assert await cache.start()  # the first pass: the horizon
    user = await db.fetchval("INSERT INTO users (email) VALUES ('u@gmail.com') RETURNING id")
    tokens = [secrets.token_urlsafe(32) for _ in range(2)]
    for token in tokens:
        await db.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at)"
            " VALUES ($1, $2, now() + interval '1 day')",
            hash_token(token),
            user,
        )
        assert await cache.lookup(hash_token(token), checked_at=0) is not None
    assert cache.size == (2, 1)

    for token, left in zip(tokens, [(1, 1), (0, 0)], strict=True):
        await db.execute("DELETE FROM sessions WHERE token_hash = $1", hash_token(token))
        assert await cache.start()  # a pass reads the change
        assert cache.size == left
    await cache.close()


async def test_a_session_answered_from_memory_is_kept_alive_in_postgres(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(session_idle_timeout=2)  # last_seen_at written every second
    browser = await signed_in(service, issuer)
    written = await db.fetchval("SELECT last_seen_at FROM sessions")

    await asyncio.sleep(1.1)
    assert (await browser.get("/api/user")).status == 200

    assert await db.fetchval("SELECT last_seen_at FROM sessions") > written


async def test_a_change_committed_by_a_transaction_open_across_a_pass_is_read(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    """The oldest transaction still open at a pass (the snapshot's xmin itself) commits after
    it: the next pass must read its row, though its id is below the pass's own."""
    browser = await signed_in(service, issuer)
    async with db.acquire() as conn:
        revoking = conn.transaction()
        await revoking.start()
        await conn.execute("DELETE FROM sessions")  # takes a transaction id, commits later
        await after_the_bound()
        assert (await browser.get("/api/user")).status == 200  # a pass while it is open
        await revoking.commit()
    await after_the_bound()

    assert (await browser.get("/api/user")).status == 401
