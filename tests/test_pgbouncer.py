"""Behind PgBouncer in transaction mode (Debian's pgbouncer, started by the test): sign-in,
session checks and the session cache work, and the statement and acquire timeouts still bound
every request."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest

from service.session_cache import FRESH_FOR
from tests.issuer import Issuer
from tests.test_database_faults import wait_until_waiting_for_a_lock

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def pgbouncer(database_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the test database; yields its URL."""
    assert Path(PGBOUNCER).is_file(), "make test installs pgbouncer (apt) when it is missing"
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir:  # the embedded server: only its own user may use its socket
        backend = f"host={socket_dir} port={parts.port or 5432}"
        user = pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name
    else:
        backend = f"host={parts.hostname} port={parts.port or 5432}"
        user = "nobody"  # pgbouncer refuses to run as root
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as directory:
        config = Path(directory) / "pgbouncer.ini"
        config.write_text(
            f"""
[databases]
* = {backend} user={parts.username or "postgres"}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 10
max_client_conn = 500
logfile =
pidfile =
"""
        )
        shutil.chown(directory, user)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        process = subprocess.Popen(  # noqa: S603 - our own arguments
            [runuser, "-u", user, "--", PGBOUNCER, str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, process)
            yield urlunsplit(("postgresql", f"postgres@127.0.0.1:{port}", parts.path, "", ""))
        finally:
            process.terminate()
            process.communicate(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"pgbouncer exited: {output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("pgbouncer never listened")


async def start_behind(start_service: Any, url: str, **overrides: Any) -> Any:
    # Prepared statements do not survive from one transaction to the next there.
    return await start_service(database_url=url, db_statement_cache_size=0, **overrides)


async def test_sign_in_and_session_checks_work_through_pgbouncer(
    pgbouncer: str, start_service: Any, issuer: Issuer
) -> None:
    service = await start_behind(start_service, pgbouncer)
    browsers = [service.browser() for _ in range(5)]
    for index, browser in enumerate(browsers):
        await browser.sign_in(issuer, email=f"user{index}@gmail.com")

    responses = await asyncio.gather(*(b.get("/api/user") for b in browsers for _ in range(20)))

    assert {r.status for r in responses} == {200}
    assert (await browsers[0].post("/api/logout")).status == 204
    assert (await browsers[0].get("/api/user")).status == 401
    assert (await service.browser().get("/readyz")).status == 200


async def test_the_statement_timeout_cancels_a_query_through_pgbouncer(
    pgbouncer: str, start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_behind(start_service, pgbouncer, db_statement_timeout=0.3)
    browser = service.browser()
    await browser.sign_in(issuer)

    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        started = time.monotonic()
        logout = await browser.post("/api/logout")
        waited = time.monotonic() - started
        # Cancelled on the server: nothing still waits for the lock.
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )

    assert (logout.status, (await logout.json())["error"]) == (503, "database_timeout")
    assert 0.3 <= waited < 5
    assert waiting == 0
    # The server connection PgBouncer lent is clean for the next client.
    assert (await browser.post("/api/logout")).status == 204
    assert (await browser.get("/api/user")).status == 401


async def test_the_acquire_timeout_bounds_waiting_for_a_connection_through_pgbouncer(
    pgbouncer: str, start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_behind(start_service, pgbouncer, db_pool_size=1, db_acquire_timeout=0.2)
    first, second = service.browser(), service.browser()
    await first.sign_in(issuer)
    await second.sign_in(issuer, email="other@gmail.com")

    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        logout = asyncio.create_task(first.post("/api/logout"))
        await wait_until_waiting_for_a_lock(db)
        started = time.monotonic()
        check = await second.get("/api/user")
        waited = time.monotonic() - started

    assert (check.status, (await check.json())["error"]) == (503, "database_timeout")
    assert waited < 5
    assert (await logout).status == 204


async def test_the_session_cache_works_through_pgbouncer(
    pgbouncer: str, start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_behind(start_service, pgbouncer, session_cache=True)
    ada, bob = service.browser(), service.browser()
    await ada.sign_in(issuer, email="ada@gmail.com")
    await bob.sign_in(issuer, email="bob@gmail.com")
    for browser in (ada, bob):
        assert (await browser.get("/api/user")).status == 200

    # Only Postgres says both are idle now: answers from memory say otherwise.
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '1 day'")
    assert (await ada.get("/api/user")).status == 200
    # A revocation by SQL is read through PgBouncer like any other change.
    await db.execute(
        "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = $1)",
        "bob@gmail.com",
    )
    await asyncio.sleep(FRESH_FOR * 1.2)
    assert (await bob.get("/api/user")).status == 401
    assert (await ada.get("/api/user")).status == 200
