"""The HTTP surface: CSRF, CORS, the login rate limit, proxies, headers, errors, config, nonces."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.config import RateLimit
from tests.conftest import Browser, Service
from tests.issuer import CLIENT_ID, Issuer

APP_ORIGIN = "http://app.example.com"
FOREIGN_ORIGIN = "https://evil.example.net"
FORWARDED_IP = "203.0.113.7"
JSON = {"Content-Type": "application/json"}
OTHER_FORWARDED_IP = "198.51.100.23"


async def error_code(response: aiohttp.ClientResponse) -> str:
    """The `error` of a JSON error body, checking the body is exactly {"error", "message"}."""
    assert response.content_type == "application/json", response.content_type
    body = await response.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    code: str = body["error"]
    return code


def cross_site_origin(kind: str, service: Service) -> str | None:
    """An Origin header value (None: no header) that is not the service's own origin."""
    port = service.config.port
    return {
        "missing": None,
        "null": "null",
        "foreign": FOREIGN_ORIGIN,
        "same_host_other_port": f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",
    }[kind]


# --- CSRF -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "null", "foreign", "same_host_other_port"])
async def test_login_from_another_site_is_refused_and_signs_nobody_in(
    kind: str, service: Service, browser: Browser, issuer: Issuer
) -> None:
    nonce = await browser.new_nonce()
    credential = issuer.token(nonce=nonce)

    response = await browser.post(
        "/api/login", origin=cross_site_origin(kind, service), json={"credential": credential}
    )

    assert response.status == 403
    assert await error_code(response) == "csrf"
    assert browser.cookie("session_id") is None
    assert (await browser.get("/api/user")).status == 401
    # The same request from the service's own page would have worked.
    accepted = await browser.post("/api/login", json={"credential": credential})
    assert accepted.status == 200, await accepted.text()


@pytest.mark.parametrize("kind", ["missing", "null", "foreign", "same_host_other_port"])
async def test_login_nonce_from_another_site_is_refused_and_sets_no_cookie(
    kind: str, service: Service, browser: Browser
) -> None:
    response = await browser.post("/api/login/nonce", origin=cross_site_origin(kind, service))

    assert response.status == 403
    assert await error_code(response) == "csrf"
    assert "Set-Cookie" not in response.headers
    assert browser.nonce_cookies() == {}


@pytest.mark.parametrize("kind", ["missing", "null", "foreign", "same_host_other_port"])
async def test_logout_from_another_site_is_refused_and_the_session_stays_alive(
    kind: str, service: Service, browser: Browser, issuer: Issuer
) -> None:
    await browser.sign_in(issuer)

    response = await browser.post("/api/logout", origin=cross_site_origin(kind, service))

    assert response.status == 403
    assert await error_code(response) == "csrf"
    assert browser.cookie("session_id")
    assert (await browser.get("/api/user")).status == 200


async def test_request_without_origin_but_sec_fetch_site_same_origin_is_accepted(
    browser: Browser, issuer: Issuer
) -> None:
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    nonce_response = await browser.post("/api/login/nonce", origin=None, headers=same_origin)
    assert nonce_response.status == 200, await nonce_response.text()
    nonce = (await nonce_response.json())["nonce"]

    login = await browser.post(
        "/api/login",
        origin=None,
        headers=same_origin,
        json={"credential": issuer.token(nonce=nonce)},
    )
    assert login.status == 200, await login.text()
    assert (await browser.get("/api/user")).status == 200

    logout = await browser.post("/api/logout", origin=None, headers=same_origin)
    assert logout.status == 204
    assert (await browser.get("/api/user")).status == 401


@pytest.mark.parametrize("site", ["cross-site", "same-site", "none"])
async def test_request_without_origin_from_another_site_per_sec_fetch_site_is_refused(
    site: str, browser: Browser
) -> None:
    response = await browser.post("/api/login/nonce", origin=None, headers={"Sec-Fetch-Site": site})

    assert response.status == 403
    assert await error_code(response) == "csrf"


async def test_a_foreign_origin_is_refused_even_when_sec_fetch_site_claims_same_origin(
    browser: Browser,
) -> None:
    response = await browser.post(
        "/api/login/nonce", origin=FOREIGN_ORIGIN, headers={"Sec-Fetch-Site": "same-origin"}
    )

    assert response.status == 403
    assert await error_code(response) == "csrf"


async def test_an_origin_in_allowed_origins_is_accepted(start_service: Any) -> None:
    service = await start_service(allowed_origins=(APP_ORIGIN,))
    browser = service.browser()

    allowed = await browser.post("/api/login/nonce", origin=APP_ORIGIN)
    refused = await browser.post("/api/login/nonce", origin=FOREIGN_ORIGIN)

    assert allowed.status == 200, await allowed.text()
    assert refused.status == 403
    assert await error_code(refused) == "csrf"


async def test_csrf_compares_origin_with_public_url_not_the_host_header(
    start_service: Any,
) -> None:
    service = await start_service(public_url="http://public.example.com")
    browser = service.browser()
    own_host = service.base_url  # http://127.0.0.1:PORT, what the Host header says
    assert own_host.startswith("http://127.0.0.1:")

    by_host = await browser.post("/api/login/nonce", origin=own_host)
    by_public_url = await browser.post("/api/login/nonce", origin="http://public.example.com")

    assert by_host.status == 403
    assert await error_code(by_host) == "csrf"
    assert by_public_url.status == 200, await by_public_url.text()


# --- CORS -----------------------------------------------------------------------------------


async def test_cors_preflight_from_an_allowed_origin_allows_credentials(
    start_service: Any,
) -> None:
    service = await start_service(allowed_origins=(APP_ORIGIN,))
    browser = service.browser()

    response = await browser.request(
        "OPTIONS",
        "/api/login",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()


async def test_cors_get_from_an_allowed_origin_carries_the_cors_headers(
    start_service: Any,
) -> None:
    service = await start_service(allowed_origins=(APP_ORIGIN,))
    browser = service.browser()

    response = await browser.get("/api/config", headers={"Origin": APP_ORIGIN})

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_cors_gives_a_foreign_origin_no_allow_origin(start_service: Any) -> None:
    service = await start_service(allowed_origins=(APP_ORIGIN,))
    browser = service.browser()

    simple = await browser.get("/api/config", headers={"Origin": FOREIGN_ORIGIN})
    preflight = await browser.request(
        "OPTIONS",
        "/api/login",
        headers={"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "POST"},
    )

    assert simple.status == 200
    assert "Access-Control-Allow-Origin" not in simple.headers
    assert "Access-Control-Allow-Credentials" not in simple.headers
    assert preflight.status < 500
    assert "Access-Control-Allow-Origin" not in preflight.headers


async def test_without_allowed_origins_no_origin_gets_cors_headers(browser: Browser) -> None:
    response = await browser.get("/api/config", headers={"Origin": APP_ORIGIN})

    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


# --- Rate limit -----------------------------------------------------------------------------


def assert_retry_after(response: aiohttp.ClientResponse, period: int) -> None:
    value = response.headers.get("Retry-After", "")
    assert re.fullmatch(r"[1-9][0-9]*", value), value
    assert 1 <= int(value) <= period


async def test_the_login_after_the_limit_is_refused_429_with_retry_after(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(login_rate_limit=RateLimit(3, 60))
    browser = service.browser()
    for _ in range(3):
        await browser.sign_in(issuer)

    nonce = await browser.new_nonce()
    response = await browser.post("/api/login", json={"credential": issuer.token(nonce=nonce)})

    assert response.status == 429
    assert await error_code(response) == "rate_limited"
    assert_retry_after(response, 60)
    assert "Set-Cookie" not in response.headers


async def test_failed_login_attempts_count_against_the_rate_limit(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(login_rate_limit=RateLimit(3, 60))
    browser = service.browser()
    for body in ({}, {"credential": ""}, {"credential": 42}):
        failed = await browser.post("/api/login", json=body)
        assert failed.status == 400
        assert await error_code(failed) == "missing_credential"

    nonce = await browser.new_nonce()
    response = await browser.post("/api/login", json={"credential": issuer.token(nonce=nonce)})

    assert response.status == 429
    assert await error_code(response) == "rate_limited"
    assert_retry_after(response, 60)
    assert (await browser.get("/api/user")).status == 401


async def test_other_endpoints_are_not_rate_limited(start_service: Any, issuer: Issuer) -> None:
    service = await start_service(login_rate_limit=RateLimit(3, 60))
    browser = service.browser()
    for _ in range(6):
        assert (await browser.post("/api/login/nonce")).status == 200
        assert (await browser.get("/api/config")).status == 200
        assert (await browser.get("/api/user")).status == 401
    # The login budget is untouched by all that.
    for _ in range(3):
        await browser.sign_in(issuer)
    assert (await browser.post("/api/login", json={})).status == 429
    # And an exhausted login budget does not spill over.
    assert (await browser.post("/api/login/nonce")).status == 200
    assert (await browser.get("/api/config")).status == 200
    assert (await browser.get("/api/me")).status == 200
    assert (await browser.post("/api/logout")).status == 204


# --- Trusted proxies ------------------------------------------------------------------------


async def sign_in_forwarded_for(browser: Browser, issuer: Issuer, ip: str) -> None:
    headers = {"X-Forwarded-For": ip}
    nonce_response = await browser.post("/api/login/nonce", headers=headers)
    assert nonce_response.status == 200, await nonce_response.text()
    nonce = (await nonce_response.json())["nonce"]
    login = await browser.post(
        "/api/login", headers=headers, json={"credential": issuer.token(nonce=nonce)}
    )
    assert login.status == 200, await login.text()


async def test_a_trusted_proxys_forwarded_ip_is_the_sessions_ip(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(trusted_proxies=("127.0.0.1",))
    browser = service.browser()

    await sign_in_forwarded_for(browser, issuer, FORWARDED_IP)

    me = await browser.get("/api/me", headers={"X-Forwarded-For": FORWARDED_IP})
    assert me.status == 200, await me.text()
    assert (await me.json())["session"]["ip"] == FORWARDED_IP


@pytest.mark.parametrize(
    ("trusted", "headers"),
    [
        (("10.0.0.1",), {"X-Forwarded-For": FORWARDED_IP}),  # a peer that is not the proxy
        (("10.0.0.1",), {}),
        (("127.0.0.1",), {}),  # the proxy, but without the header it must add
        (("127.0.0.1",), {"X-Forwarded-For": f"{OTHER_FORWARDED_IP}, {FORWARDED_IP}"}),  # appended
    ],
)
async def test_strict_proxy_mode_refuses_what_did_not_come_through_the_proxy(
    start_service: Any, trusted: tuple[str, ...], headers: dict[str, str]
) -> None:
    service = await start_service(trusted_proxies=trusted)
    browser = service.browser()

    for method, path in [("GET", "/api/user"), ("GET", "/api/config"), ("POST", "/api/login")]:
        response = await browser.request(method, path, headers=headers, json={})
        assert response.status == 400, (path, await response.text())
        assert await error_code(response) == "bad_request"
    # The probes answer whoever asks: load balancers reach the service directly.
    for probe in ("/healthz", "/readyz"):
        assert (await browser.get(probe, headers=headers)).status == 200


async def test_forwarded_for_is_ignored_without_trusted_proxies(
    browser: Browser, issuer: Issuer
) -> None:
    await sign_in_forwarded_for(browser, issuer, FORWARDED_IP)

    me = await browser.get("/api/me", headers={"X-Forwarded-For": FORWARDED_IP})
    assert me.status == 200
    assert (await me.json())["session"]["ip"] == "127.0.0.1"


async def test_the_rate_limit_keys_on_the_forwarded_ip_behind_a_trusted_proxy(
    start_service: Any,
) -> None:
    service = await start_service(trusted_proxies=("127.0.0.1",), login_rate_limit=RateLimit(2, 60))
    browser = service.browser()

    async def attempt(ip: str) -> int:
        response = await browser.post("/api/login", headers={"X-Forwarded-For": ip}, json={})
        return response.status

    assert [await attempt(FORWARDED_IP) for _ in range(3)] == [400, 400, 429]
    assert [await attempt(OTHER_FORWARDED_IP) for _ in range(3)] == [400, 400, 429]


async def test_an_untrusted_forwarded_for_cannot_buy_a_fresh_rate_limit_budget(
    start_service: Any,
) -> None:
    service = await start_service(login_rate_limit=RateLimit(2, 60))
    browser = service.browser()
    statuses = []
    for ip in (FORWARDED_IP, OTHER_FORWARDED_IP, "192.0.2.99"):
        response = await browser.post("/api/login", headers={"X-Forwarded-For": ip}, json={})
        statuses.append(response.status)

    assert statuses == [400, 400, 429]


async def test_one_ipv6_host_rotating_through_its_64_shares_one_budget(
    start_service: Any,
) -> None:
    service = await start_service(trusted_proxies=("127.0.0.1",), login_rate_limit=RateLimit(2, 60))
    browser = service.browser()

    async def attempt(ip: str) -> int:
        response = await browser.post("/api/login", headers={"X-Forwarded-For": ip}, json={})
        return response.status

    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"]
    assert [await attempt(ip) for ip in same_64] == [400, 400, 429]
    # The next /64 over is another client; an IPv4-mapped address is its IPv4 address.
    assert [await attempt("2001:db8:1:3::1") for _ in range(3)] == [400, 400, 429]
    assert await attempt("::ffff:203.0.113.9") == 400
    assert await attempt("203.0.113.9") == 400
    assert await attempt("::ffff:203.0.113.9") == 429


async def test_the_ipv6_prefix_of_a_budget_is_configurable(start_service: Any) -> None:
    service = await start_service(
        trusted_proxies=("127.0.0.1",),
        login_rate_limit=RateLimit(1, 60),
        login_rate_limit_ipv6_prefix=128,
    )
    browser = service.browser()

    for ip in ("2001:db8::1", "2001:db8::2"):
        response = await browser.post("/api/login", headers={"X-Forwarded-For": ip}, json={})
        assert response.status == 400


async def test_repeated_failures_from_one_source_are_one_counted_event(
    start_service: Any, db: asyncpg.Pool, issuer: Issuer
) -> None:
    service = await start_service(trusted_proxies=("127.0.0.1",))
    browser = service.browser()

    async def fail(ip: str, email: str | None = None) -> None:
        # Without a nonce cookie, a valid token fails with invalid_nonce, naming its email.
        body = {"credential": issuer.token(email=email)} if email else {}
        response = await browser.post("/api/login", headers={"X-Forwarded-For": ip}, json=body)
        assert response.status in (400, 401)

    for _ in range(5):
        await fail(FORWARDED_IP)
    for host in range(1, 6):  # one IPv6 client rotating through its /64
        await fail(f"2001:db8:1:2::{host}")
    await fail(FORWARDED_IP, "alice@gmail.com")
    await fail(FORWARDED_IP, "mallory@gmail.com")  # behind the same NAT: not alice's event
    await fail(OTHER_FORWARDED_IP)

    rows = await db.fetch(
        """
        SELECT detail->>'source' AS source, detail->>'error' AS error, detail->>'email' AS email,
               (detail->>'count')::int AS count
        FROM auth_events WHERE kind = 'login_failed' ORDER BY id
        """
    )
    assert [tuple(row) for row in rows] == [
        (FORWARDED_IP, "missing_credential", None, 5),
        ("2001:db8:1:2::/64", "missing_credential", None, 5),
        (FORWARDED_IP, "invalid_nonce", "alice@gmail.com", 1),
        (FORWARDED_IP, "invalid_nonce", "mallory@gmail.com", 1),
        (OTHER_FORWARDED_IP, "missing_credential", None, 1),
    ]


# --- Headers --------------------------------------------------------------------------------


async def test_every_api_response_is_no_store_and_nosniff(browser: Browser) -> None:
    responses = {
        200: await browser.get("/api/config"),
        401: await browser.get("/api/user"),
        404: await browser.get("/api/no-such-thing"),
        405: await browser.get("/api/login"),
        400: await browser.post("/api/login", json=[]),
        403: await browser.post("/api/login/nonce", origin=None),
    }
    nonce = await browser.post("/api/login/nonce")

    for status, response in [*responses.items(), (200, nonce)]:
        assert response.status == status, (response.url, response.status)
        assert response.headers.get("Cache-Control") == "no-store", response.url
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url
        assert "Strict-Transport-Security" not in response.headers, response.url


async def test_hsts_is_sent_when_the_public_url_is_https(start_service: Any) -> None:
    service = await start_service(public_url="https://sessions.example.com")
    browser = service.browser()

    for path in ("/api/config", "/api/user", "/api/no-such-thing", "/healthz"):
        response = await browser.get(path)
        hsts = response.headers.get("Strict-Transport-Security", "")
        match = re.search(r"max-age=(\d+)", hsts)
        assert match and int(match[1]) > 0, (path, hsts)


# --- Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/no-such-thing"), ("POST", "/api/no-such-thing"), ("GET", "/api/user/extra")],
)
async def test_unknown_api_paths_are_404_not_found(
    method: str, path: str, browser: Browser
) -> None:
    response = await browser.request(method, path)

    assert response.status == 404
    assert await error_code(response) == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/login", "POST"),
        ("GET", "/api/logout", "POST"),
        ("POST", "/api/user", "GET"),
        ("PUT", "/api/config", "GET"),
    ],
)
async def test_a_wrong_method_is_405_with_an_allow_header(
    method: str, path: str, allowed: str, browser: Browser
) -> None:
    response = await browser.request(method, path)

    assert response.status == 405
    assert await error_code(response) == "method_not_allowed"
    assert allowed in {m.strip() for m in response.headers["Allow"].split(",")}


async def test_every_error_is_a_json_error_and_message_and_never_a_500(browser: Browser) -> None:
    nonce = await browser.new_nonce()
    requests: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/api/user", {}, 401, "not_signed_in"),
        ("GET", "/api/me", {}, 401, "not_signed_in"),
        ("GET", "/api/nope", {}, 404, "not_found"),
        ("DELETE", "/api/user", {}, 405, "method_not_allowed"),
        ("POST", "/api/login", {"origin": None}, 403, "csrf"),
        ("POST", "/api/login", {"data": b"credential=x"}, 400, "bad_content_type"),
        ("POST", "/api/login", {"data": b"{not json", "headers": JSON}, 400, "bad_json"),
        ("POST", "/api/login", {"data": b"\xff\xfe", "headers": JSON}, 400, "bad_json"),
        ("POST", "/api/login", {"json": ["credential"]}, 400, "bad_json"),
        ("POST", "/api/login", {"json": None}, 400, "bad_content_type"),  # no body at all
        ("POST", "/api/login", {"json": {"credential": "not.a.jwt"}}, 401, "malformed_token"),
        ("POST", "/api/login", {"json": {"credential": "a" * 2000}}, 401, "malformed_token"),
        (
            "POST",
            "/api/login",
            {"json": {"credential": "x" * (70 * 1024)}},
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/api/login",
            {"json": {"credential": f"e30.{nonce}.sig"}},
            401,
            "malformed_token",
        ),
        ("GET", "/api/user", {"headers": {"Cookie": "session_id=forged"}}, 401, "not_signed_in"),
    ]
    for method, path, kwargs, status, code in requests:
        response = await browser.request(method, path, **kwargs)
        assert response.status == status, (method, path, response.status, await response.text())
        assert await error_code(response) == code, (method, path)


async def test_a_body_over_the_size_limit_is_413_payload_too_large(browser: Browser) -> None:
    response = await browser.post("/api/login", json={"credential": "x" * (70 * 1024)})

    assert response.status == 413
    assert await error_code(response) == "payload_too_large"


# --- Config and nonce -----------------------------------------------------------------------


async def test_config_gives_the_first_client_id_and_googles_script(start_service: Any) -> None:
    service = await start_service(google_client_ids=("first.apps.googleusercontent.com", CLIENT_ID))
    browser = service.browser()

    response = await browser.get("/api/config")

    assert response.status == 200
    assert await response.json() == {
        "google_client_id": "first.apps.googleusercontent.com",
        "gis_script_url": "https://accounts.google.com/gsi/client",
        "dev_login": False,
    }


async def test_login_nonce_is_the_hash_of_an_httponly_lax_cookie(browser: Browser) -> None:
    response = await browser.post("/api/login/nonce")

    assert response.status == 200
    nonce = (await response.json())["nonce"]
    [cookie] = response.cookies.values()
    assert cookie.key.startswith("login_nonce_")
    assert cookie.value
    digest = hashlib.sha256(cookie.value.encode()).digest()
    assert nonce == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert "=" not in nonce
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["max-age"] == "600"
    assert cookie["path"] == "/"
    assert browser.nonce_cookies() == {cookie.key: cookie.value}
    # Each request gets a fresh secret.
    again = await browser.post("/api/login/nonce")
    assert (await again.json())["nonce"] != nonce
