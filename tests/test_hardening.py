"""Hostile and unusual inputs: bytes that are not UTF-8, preflights, races, and settings that
would quietly widen who can sign in. None of them may answer 500 or slip past the audit."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from service.config import Config, ConfigError, RateLimit
from tests.conftest import Browser, Service
from tests.issuer import Issuer


async def raw_request(service: Service, head: bytes) -> tuple[int, bytes]:
    """Send request bytes as they are (clients refuse to send headers that are not UTF-8)."""
    url = urlsplit(service.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def make_admin(db: asyncpg.Pool, browser: Browser, issuer: Issuer, email: str) -> int:
    user_id: int = (await browser.sign_in(issuer, email=email))["user"]["id"]
    await db.execute("UPDATE users SET admin = true WHERE id = $1", user_id)
    return user_id


async def test_a_user_agent_that_is_not_utf8_is_stored_cleaned_and_the_action_audited(
    service: Service, browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await make_admin(db, browser, issuer, "boss@gmail.com")
    victim = await db.fetchval("INSERT INTO users (email) VALUES ('v@gmail.com') RETURNING id")
    host = urlsplit(service.base_url).netloc
    cookie = browser.cookie("session_id")
    head = (
        f"DELETE /api/admin/users/{victim} HTTP/1.1\r\nHost: {host}\r\n"
        f"Origin: {service.base_url}\r\nCookie: session_id={cookie}\r\n"
    )

    status, answer = await raw_request(service, head.encode() + b"User-Agent: evil\xffagent\r\n")

    assert status == 204, answer
    agent = await db.fetchval(
        "SELECT user_agent FROM auth_events WHERE kind = 'admin_user_deleted'"
    )
    assert agent == "evil?agent"


async def test_a_session_cookie_that_is_not_utf8_is_not_signed_in(service: Service) -> None:
    host = urlsplit(service.base_url).netloc
    status, answer = await raw_request(
        service,
        f"GET /api/user HTTP/1.1\r\nHost: {host}\r\n".encode() + b"Cookie: session_id=ab\xffcd\r\n",
    )
    assert status == 401, answer
    assert b'"not_signed_in"' in answer


async def test_admin_emails_grant_admin_only_where_google_owns_the_address(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(admin_emails=frozenset({"boss@corp.example", "boss@gmail.com"}))

    # A personal Google account can verify any address; only Workspace (hd) owns corp.example.
    personal = await service.browser().sign_in(issuer, email="boss@corp.example")
    gmail = await service.browser().sign_in(issuer, email="boss@gmail.com")

    assert personal["user"]["admin"] is False
    assert gmail["user"]["admin"] is True


async def test_a_workspace_token_for_an_admin_email_is_admin(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(admin_emails=frozenset({"boss@corp.example"}))

    signed_in = await service.browser().sign_in(
        issuer, email="boss@corp.example", hd="corp.example"
    )

    assert signed_in["user"]["admin"] is True


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"PUBLIC_URL": "https://app.example.com"}, "PUBLIC_URL"),
        ({"TRUSTED_PROXIES": "10.0.0.1"}, "TRUSTED_PROXIES"),
        ({"SESSION_ABSOLUTE_TIMEOUT": "99999999999999"}, "SESSION_ABSOLUTE_TIMEOUT"),
        ({"SESSION_IDLE_TIMEOUT": "99999999999999"}, "SESSION_IDLE_TIMEOUT"),
    ],
)
def test_settings_that_would_expose_the_dev_login_or_overflow_are_refused(
    variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Config.from_env({"DEV_LOGIN": "1", **variables})


def test_allowed_origins_are_compared_in_the_form_browsers_send() -> None:
    config = Config.from_env(
        {"GOOGLE_CLIENT_ID": "x", "ALLOWED_ORIGINS": "https://App.Example.com:443/"}
    )
    assert config.allowed_origins == ("https://app.example.com",)


async def test_cors_preflights_reach_the_admin_api(start_service: Any, browser: Browser) -> None:
    service = await start_service(allowed_origins=("http://admin.example.com",))
    response = await service.browser().request(
        "OPTIONS",
        "/api/admin/users/1",
        headers={
            "Origin": "http://admin.example.com",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == "http://admin.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_cross_site_login_posts_do_not_spend_the_login_budget(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(login_rate_limit=RateLimit(2, 60))
    browser = service.browser()
    for _ in range(5):
        refused = await browser.post(
            "/api/login", json={"credential": "x"}, origin="https://evil.example"
        )
        assert refused.status == 403

    await browser.sign_in(issuer)


async def test_a_path_too_long_for_the_file_system_is_just_a_client_route(
    service: Service, browser: Browser
) -> None:
    response = await browser.get("/" + "a" * 300)
    assert response.status in (200, 404)  # index.html, or 404 when the frontend is not built
    assert response.status != 503


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada, bob = service.browser(), service.browser()
    ada_id = await make_admin(db, ada, issuer, "ada@gmail.com")
    bob_id = await make_admin(db, bob, issuer, "bob@gmail.com")

    results = await asyncio.gather(
        ada.request("PATCH", f"/api/admin/users/{bob_id}", json={"admin": False}),
        bob.request("PATCH", f"/api/admin/users/{ada_id}", json={"admin": False}),
    )

    statuses = sorted(response.status for response in results)
    assert statuses in ([200, 403], [200, 409]), statuses
    assert await db.fetchval("SELECT count(*) FROM users WHERE admin AND NOT disabled") == 1


async def test_the_login_budget_is_shared_by_every_instance(
    start_service: Any, issuer: Issuer
) -> None:
    limit = RateLimit(3, 60)
    first = await start_service(login_rate_limit=limit)
    second = await start_service(login_rate_limit=limit)
    for service in (first, second, first):
        await service.browser().sign_in(issuer)

    refused = await second.browser().post("/api/login", json={"credential": "x"})

    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
