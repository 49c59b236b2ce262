"""Several instances on one database: sessions and revocations hold across them, and instances
starting together apply each migration once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from service import schema
from tests.conftest import Browser, Service
from tests.issuer import Issuer

ROOT = Path(__file__).parent.parent


async def two_instances(start_service: Any) -> tuple[Service, Service]:
    """Two instances as production runs them, with their session caches."""
    return await start_service(session_cache=True), await start_service(session_cache=True)


def same_cookie(browser: Browser, other: Service) -> Browser:
    """`other`'s browser holding the cookie `browser` got (as a load balancer would route it)."""
    moved = other.browser()
    moved.session.cookie_jar.update_cookies({"session_id": browser.cookie("session_id") or ""})
    return moved


async def test_a_session_made_on_one_instance_works_on_the_other(
    start_service: Any, issuer: Issuer
) -> None:
    first, second = await two_instances(start_service)
    browser = first.browser()
    await browser.sign_in(issuer, email="ada@gmail.com")

    response = await same_cookie(browser, second).get("/api/user")

    assert response.status == 200
    assert (await response.json())["email"] == "ada@gmail.com"


async def test_logout_on_one_instance_is_refused_on_the_other(
    start_service: Any, issuer: Issuer
) -> None:
    first, second = await two_instances(start_service)
    browser = first.browser()
    await browser.sign_in(issuer)
    elsewhere = same_cookie(browser, second)
    assert (await elsewhere.get("/api/user")).status == 200

    assert (await browser.post("/api/logout")).status == 204

    await elsewhere.answers_within(401, 1)


async def test_admin_revocation_and_disabling_on_one_instance_hold_on_the_other(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    first, second = await two_instances(start_service)
    admin = first.browser()
    await admin.sign_in(issuer, email="boss@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE email = 'boss@gmail.com'")
    ada, bob = first.browser(), first.browser()
    ada_id = (await ada.sign_in(issuer, email="ada@gmail.com"))["user"]["id"]
    await bob.sign_in(issuer, email="bob@gmail.com")
    ada_elsewhere, bob_elsewhere = same_cookie(ada, second), same_cookie(bob, second)
    for client in (ada_elsewhere, bob_elsewhere):
        assert (await client.get("/api/user")).status == 200
    bob_session = (await (await bob.get("/api/me")).json())["session"]["id"]

    revoked = await admin.request("DELETE", f"/api/admin/sessions/{bob_session}")
    disabled = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True})

    assert (revoked.status, disabled.status) == (204, 200)
    # The other instance hears of it through Postgres within 50 ms (test_session_cache.py).
    await bob_elsewhere.answers_within(401, 1)
    await ada_elsewhere.answers_within(401, 1)


async def test_a_user_disabled_with_sql_is_refused_by_every_instance(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    first, second = await two_instances(start_service)
    browser = first.browser()
    await browser.sign_in(issuer, email="ada@gmail.com")
    elsewhere = same_cookie(browser, second)
    for client in (browser, elsewhere):
        assert (await client.get("/api/user")).status == 200

    await db.execute("UPDATE users SET disabled = true WHERE email = 'ada@gmail.com'")

    for client in (browser, elsewhere):
        await client.answers_within(403, 1)


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(300):  # 30 s
            try:
                async with client.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the instance on port {port} never became ready")


async def start_instance(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "service", "serve"),
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_instances_starting_together_apply_each_migration_once_and_stop_cleanly(
    empty_database_url: str, unused_tcp_port_factory: Any
) -> None:
    ports = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    env = {**os.environ, "DATABASE_URL": empty_database_url, "DEV_LOGIN": "1", "WORKERS": "2"}
    processes = [await start_instance(env, port) for port in ports]
    try:
        await asyncio.gather(*(wait_ready(port) for port in ports))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [(await process.communicate())[0].decode() for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    logs = "\n".join(outputs)
    for revision in ("0001", "0002"):
        assert logs.count(f"-> {revision},") == 1, logs
    # Each instance says what it may ask of Postgres: 2 workers x (a pool of 10 + a listener).
    assert logs.count("Postgres connections: up to 22 (WORKERS=2 x 11 per worker)") == 2, logs
    conn = await asyncpg.connect(empty_database_url)
    try:
        versions = await conn.fetch("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    assert [row["version_num"] for row in versions] == [schema.head_revision()]
