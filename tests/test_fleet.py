"""A fleet as production runs it: three instances of two gunicorn workers each on one database.
A change made anywhere (plain SQL, or the API on one instance) holds on every worker of every
instance once the freshness bound has passed after its commit."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.session_cache import FRESH_FOR
from tests.conftest import Browser
from tests.issuer import CLIENT_ID, Issuer
from tests.test_instances import start_instance, wait_ready

INSTANCES = 3
WORKERS = 2
# Requests per instance and client, each on a new connection, so that every worker of an
# instance (the kernel hands each connection to one of them) serves some of them.
SAMPLES = 12


@pytest.fixture
async def fleet(
    database_url: str, issuer: Issuer, unused_tcp_port_factory: Any, db: asyncpg.Pool
) -> AsyncIterator[list[str]]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GOOGLE_CLIENT_ID": CLIENT_ID,
        "GOOGLE_CERTS_URL": issuer.certs_url,
        "COOKIE_SECURE": "false",
        "WORKERS": str(WORKERS),
        "LOGIN_RATE_LIMIT": "10000/minute",
    }
    ports = [unused_tcp_port_factory() for _ in range(INSTANCES)]
    processes = [await start_instance(env, port) for port in ports]
    try:
        await asyncio.gather(*(wait_ready(port) for port in ports))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await process.communicate()


async def statuses(cookie: str, instance: str) -> set[int]:
    """What every worker of `instance` answers GET /api/user with this cookie."""
    browser = Browser(instance, "Mozilla/5.0 TestBrowser", force_close=True)
    browser.session.cookie_jar.update_cookies({"session_id": cookie})
    try:
        return {(await browser.get("/api/user")).status for _ in range(SAMPLES)}
    finally:
        await browser.session.close()


async def test_a_change_anywhere_holds_on_every_worker_of_every_instance(
    fleet: list[str], issuer: Issuer, db: asyncpg.Pool
) -> None:
    people = ["ada", "bob", "carol", "dan"]
    cookies = {}
    for person in people:
        browser = Browser(fleet[0], "Mozilla/5.0 TestBrowser")
        await browser.sign_in(issuer, email=f"{person}@gmail.com")
        cookies[person] = browser.cookie("session_id") or ""
        await browser.session.close()
    for person in people:  # every worker of every instance now holds every session
        for instance in fleet:
            assert await statuses(cookies[person], instance) == {200}

    await db.execute(
        "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = $1)",
        "ada@gmail.com",
    )
    await db.execute("UPDATE users SET disabled = true WHERE email = 'bob@gmail.com'")
    carol = Browser(fleet[1], "Mozilla/5.0 TestBrowser")
    carol.session.cookie_jar.update_cookies({"session_id": cookies["carol"]})
    assert (await carol.post("/api/logout")).status == 204
    await carol.session.close()
    await asyncio.sleep(FRESH_FOR * 1.2)

    expected = {"ada": {401}, "bob": {403}, "carol": {401}, "dan": {200}}
    for person, answer in expected.items():
        for instance in fleet:
            assert await statuses(cookies[person], instance) == answer, (person, instance)
