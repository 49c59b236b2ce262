"""Fuzzing what clients send (cookies, headers, query strings, JSON bodies) with hypothesis:
whatever arrives, the answer is the documented status with a JSON error, never a 500."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Browser, Service
from tests.issuer import Issuer

# One running service serves every example of a test: the examples share its fixtures.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: CI is not a lottery
)

# What may stand in an HTTP header value: visible Latin-1 and spaces, never CR or LF.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300
)
cookie_names = st.sampled_from(
    ["session_id", "login_nonce_", "login_nonce_18c0000000a_abcdef", "__Host-session_id", "x"]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";=,"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=200),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)


async def assert_json_error(response: aiohttp.ClientResponse, statuses: set[int]) -> None:
    assert response.status in statuses, (response.status, await response.text())
    if response.status >= 400:
        assert response.content_type == "application/json"
        assert set(await response.json()) == {"error", "message"}


@pytest.fixture
async def admin(service: Service, issuer: Issuer, db: asyncpg.Pool) -> Browser:
    browser = service.browser()
    await browser.sign_in(issuer, email="boss@gmail.com")
    await db.execute("UPDATE users SET admin = true")
    return browser


@FUZZ
@given(cookies=st.lists(st.tuples(cookie_names, header_text), max_size=6))
async def test_any_cookie_header_is_401_not_signed_in(
    service: Service, cookies: list[tuple[str, str]]
) -> None:
    header = "; ".join(f"{name}={value}" for name, value in cookies)
    browser = service.browser()
    try:
        response = await browser.get("/api/user", headers={"Cookie": header})
    finally:
        await browser.session.close()
        service.browsers.remove(browser)

    await assert_json_error(response, {401})


@FUZZ
@given(
    cookies=st.lists(st.tuples(cookie_names, header_text), max_size=6),
    credential=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.hex()),
)
async def test_any_sign_in_attempt_is_a_4xx(
    service: Service, cookies: list[tuple[str, str]], credential: str
) -> None:
    header = "; ".join(f"{name}={value}" for name, value in cookies)
    browser = service.browser()
    try:
        response = await browser.post(
            "/api/login", json={"credential": credential}, headers={"Cookie": header}
        )
    finally:
        await browser.session.close()
        service.browsers.remove(browser)

    await assert_json_error(response, {400, 401})


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["Origin", "Sec-Fetch-Site", "Content-Type", "User-Agent", "X-Forwarded-For", "Accept"]
        ),
        header_text,
        max_size=4,
    )
)
async def test_any_headers_on_a_login_are_a_4xx(browser: Browser, headers: dict[str, str]) -> None:
    response = await browser.request(
        "POST", "/api/login", origin=None, data=b'{"credential": "x"}', headers=headers
    )

    await assert_json_error(response, {400, 401, 403})


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["query", "offset", "limit", "x"]), header_text))
async def test_any_query_string_on_a_paged_list_is_200_or_400(
    admin: Browser, params: dict[str, str]
) -> None:
    response = await admin.get("/api/admin/users", params=params)

    await assert_json_error(response, {200, 400})


@FUZZ
@given(body=json_values)
async def test_any_json_body_is_answered_with_a_4xx_or_success(admin: Browser, body: Any) -> None:
    for method, path, ok in [
        ("POST", "/api/login", set()),
        ("POST", "/api/customer", {201}),
        ("PATCH", "/api/admin/users/1", {200}),
        ("POST", "/api/admin/users", {201}),
    ]:
        response = await admin.request(method, path, json=body)
        await assert_json_error(response, {400, 401, 404, 409} | ok)


@FUZZ
@given(body=st.binary(max_size=500))
async def test_any_bytes_as_a_json_body_are_a_4xx(browser: Browser, body: bytes) -> None:
    response = await browser.post(
        "/api/login", data=body, headers={"Content-Type": "application/json"}
    )

    await assert_json_error(response, {400, 401})


async def test_json_nested_deeper_than_the_parser_goes_is_400(browser: Browser) -> None:
    deep = "[" * 30_000 + "]" * 30_000  # under the 64 KiB body limit
    response = await browser.post(
        "/api/login", data=deep, headers={"Content-Type": "application/json"}
    )

    await assert_json_error(response, {400})
    assert (await response.json())["error"] == "bad_json"
