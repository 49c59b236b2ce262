"""Postgres refusing, slow or read-only: clients get a 503 with a code saying which, never a 500,
and nothing waits longer than the timeouts it was given."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conftest import Browser
from tests.issuer import Issuer

# A role of the test's own, so that limits set on it touch nothing else on the server.
RoleUrl = Callable[..., Awaitable[str]]


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def role_url(database_url: str, db: asyncpg.Pool) -> AsyncIterator[RoleUrl]:
    """Makes a login role with the given settings (ALTER ROLE ... SET); yields its URL."""
    roles: list[str] = []

    async def make(**settings: str) -> str:
        role = f"service_fault_{uuid.uuid4().hex[:8]}"
        roles.append(role)
        await db.execute(f"CREATE ROLE {role} LOGIN")
        await db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        for name, value in settings.items():
            await db.execute(f"ALTER ROLE {role} SET {name} = '{value}'")
        return as_user(database_url, role)

    yield make
    for role in roles:
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


async def error_of(browser: Browser, method: str, path: str) -> tuple[int, str]:
    response = await browser.request(method, path)
    body = await response.json()
    return response.status, body.get("error", "")


async def test_a_role_out_of_connections_is_503_database_busy_and_readyz_says_so(
    start_service: Any, role_url: RoleUrl, issuer: Issuer, db: asyncpg.Pool
) -> None:
    url = await role_url()
    service = await start_service(database_url=url)
    browser = service.browser()
    await browser.sign_in(issuer)
    role = urlsplit(url).username

    # The pool's connections die and no new one is allowed: the pool must grow and cannot.
    await db.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")
    # Until none is left: a connection that was being made as the limit fell outlives the
    # first round (it was not in pg_stat_activity yet).
    for _ in range(100):
        if not await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
            role,
        ):
            break
        await asyncio.sleep(0.05)

    seen = [await error_of(browser, "GET", "/api/user") for _ in range(3)]
    # The first request may still meet the terminated connection; after that, the limit.
    assert set(seen) <= {(503, "database_unavailable"), (503, "database_busy")}, seen
    assert seen[-1] == (503, "database_busy")
    assert await error_of(browser, "GET", "/readyz") == (503, "database_busy")

    await db.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
    assert (await browser.get("/api/user")).status == 200
    assert (await browser.get("/readyz")).status == 200


@pytest.mark.parametrize("where", ["client", "server"])
async def test_a_statement_past_its_timeout_is_503_database_timeout_and_is_cancelled(
    where: str, start_service: Any, role_url: RoleUrl, issuer: Issuer, db: asyncpg.Pool
) -> None:
    """DB_STATEMENT_TIMEOUT (the client cancels), or a statement_timeout an operator set."""
    if where == "client":
        url, overrides = await role_url(), {"db_statement_timeout": 0.3}
    else:
        url, overrides = await role_url(statement_timeout="300ms"), {}
    service = await start_service(database_url=url, **overrides)
    browser = service.browser()
    await browser.sign_in(issuer)

    # Logging out deletes the session row, which waits for this lock.
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        started = time.monotonic()
        assert await error_of(browser, "POST", "/api/logout") == (503, "database_timeout")
        waited = time.monotonic() - started
        # Cancelled on the server too: nothing of the service still waits for the lock.
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
            urlsplit(url).username,
        )

    assert 0.3 <= waited < 5
    assert waiting == 0
    assert (await browser.post("/api/logout")).status == 204
    assert (await browser.get("/api/user")).status == 401


async def test_waiting_for_a_pooled_connection_is_bounded_by_the_acquire_timeout(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(db_pool_size=1, db_acquire_timeout=0.2)
    browser, other = service.browser(), service.browser()
    await browser.sign_in(issuer)
    await other.sign_in(issuer, email="other@gmail.com")

    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        # This logout holds the pool's one connection while it waits for the lock...
        logout = asyncio.create_task(browser.post("/api/logout"))
        await wait_until_waiting_for_a_lock(db)
        # ...so this request cannot get one.
        started = time.monotonic()
        assert await error_of(other, "GET", "/api/user") == (503, "database_timeout")
        assert time.monotonic() - started < 5
    assert (await logout).status == 204
    assert (await other.get("/api/user")).status == 200


async def wait_until_waiting_for_a_lock(db: asyncpg.Pool) -> None:
    for _ in range(500):
        if await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement ever waited for the lock")


async def test_a_read_only_database_is_503_database_read_only_for_writes_and_readyz(
    start_service: Any, role_url: RoleUrl, issuer: Issuer
) -> None:
    """What a pool left on a standby after a failover sees."""
    primary = await start_service(session_idle_timeout=2)
    browser = primary.browser()
    await browser.sign_in(issuer)
    standby = await start_service(
        database_url=await role_url(default_transaction_read_only="on"), session_idle_timeout=2
    )
    on_standby = standby.browser()
    on_standby.session.cookie_jar.update_cookies({"session_id": browser.cookie("session_id") or ""})

    assert await error_of(on_standby, "GET", "/readyz") == (503, "database_read_only")
    # A session check that must write last_seen_at (touched at most once a second here).
    await asyncio.sleep(1.1)
    assert await error_of(on_standby, "GET", "/api/user") == (503, "database_read_only")
    # Signing in writes from its first step (the rate limit).
    nonce = await on_standby.new_nonce()
    login = await on_standby.post("/api/login", json={"credential": issuer.token(nonce=nonce)})
    assert login.status == 503
    assert (await login.json())["error"] == "database_read_only"


async def test_a_lock_timeout_is_503_database_busy(
    start_service: Any, role_url: RoleUrl, issuer: Issuer, db: asyncpg.Pool
) -> None:
    """An operator's lock_timeout (or a deadlock, or a serialization failure): retry later."""
    service = await start_service(database_url=await role_url(lock_timeout="100ms"))
    browser = service.browser()
    await browser.sign_in(issuer)

    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        assert await error_of(browser, "POST", "/api/logout") == (503, "database_busy")

    assert (await browser.post("/api/logout")).status == 204
