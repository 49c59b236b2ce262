"""POST /api/login's refusals: bad tokens, nonces, domains, bodies and certs, never a 500.

Every refusal answers JSON with exactly `error` and `message`, sets no session cookie, creates
no session row, and is recorded as a `login_failed` auth event; the token itself is never
stored or logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import ClientResponse, web

from service.auth import GoogleCerts, ServiceUnavailable
from service.auth import _lifetime as certs_lifetime
from service.nonces import nonce_for
from tests.conftest import Browser, Service
from tests.issuer import KEY_ID, Issuer, signing_key

SESSION_COOKIE = "session_id"
# The service's allowance, in seconds, on exp, iat and nbf: tokens 2 s inside it are accepted
# and 3 s outside it refused (the margins cover the test's own run time).
SKEW = 10


# -- helpers ----------------------------------------------------------------------------------


async def post_credential(browser: Browser, credential: Any, **kwargs: Any) -> ClientResponse:
    return await browser.post("/api/login", json={"credential": credential}, **kwargs)


async def attempt(browser: Browser, issuer: Issuer, **claims: Any) -> tuple[ClientResponse, str]:
    """A login with a fresh nonce; `claims` (nonce included) override the token's claims."""
    nonce = await browser.new_nonce()
    token = issuer.token(**{"nonce": nonce, **claims})
    return await post_credential(browser, token), token


async def assert_error(response: ClientResponse, status: int, code: str) -> None:
    """A JSON error answer with exactly `error` and `message`, and no session cookie."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert SESSION_COOKIE not in response.cookies
    set_cookies = response.headers.getall("Set-Cookie", [])
    assert not any(header.startswith(f"{SESSION_COOKIE}=") for header in set_cookies)


async def assert_refused(
    response: ClientResponse, db: asyncpg.Pool, status: int, code: str, *, sessions: int = 0
) -> None:
    """An error answer, no session row beyond `sessions`, and a `login_failed` event for it."""
    await assert_error(response, status, code)
    assert await db.fetchval("SELECT count(*) FROM sessions") == sessions
    event = await db.fetchrow(
        "SELECT kind, user_id, detail->>'error' AS error FROM auth_events ORDER BY id DESC LIMIT 1"
    )
    assert event is not None
    assert (event["kind"], event["user_id"], event["error"]) == ("login_failed", None, code)


async def assert_accepted(response: ClientResponse, email: str) -> None:
    assert response.status == 200, await response.text()
    assert (await response.json())["user"]["email"] == email
    assert response.cookies[SESSION_COOKIE].value


async def dump_database(db: asyncpg.Pool) -> str:
    """Every row of every table in the public schema, as text."""
    tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {"users", "sessions", "auth_events", "spent_nonces"} <= {t["tablename"] for t in tables}
    parts = []
    for table in tables:
        name = table["tablename"].replace('"', '""')
        parts.append(
            await db.fetchval(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM \"{name}\" t")  # noqa: S608
        )
    return "\n".join(parts)


def secret_parts(token: str) -> list[str]:
    """The token, and each segment after its header (unique to it) on its own."""
    return [token, *(segment for segment in token.split(".")[1:] if len(segment) >= 8)]


# -- token failures ---------------------------------------------------------------------------


async def test_expired_token_is_refused_with_token_expired(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    now = int(time.time())
    response, _ = await attempt(
        browser, issuer, iat=now - 3700, nbf=now - 3700, exp=now - (SKEW + 3)
    )
    await assert_refused(response, db, 401, "token_expired")


async def test_token_with_a_future_iat_is_refused_with_token_used_too_early(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    now = int(time.time())
    response, _ = await attempt(browser, issuer, iat=now + SKEW + 3, nbf=None)
    await assert_refused(response, db, 401, "token_used_too_early")


async def test_token_with_a_future_nbf_is_refused_with_token_used_too_early(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    now = int(time.time())
    response, _ = await attempt(browser, issuer, nbf=now + SKEW + 3)
    await assert_refused(response, db, 401, "token_used_too_early")


async def test_token_for_another_audience_is_refused_with_invalid_audience(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, aud="other-app.apps.googleusercontent.com")
    await assert_refused(response, db, 401, "invalid_audience")


async def test_token_from_another_issuer_is_refused_with_invalid_issuer(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, iss="https://evil.example.com")
    await assert_refused(response, db, 401, "invalid_issuer")


async def test_token_without_issuer_is_refused_with_invalid_issuer(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, iss=None)
    await assert_refused(response, db, 401, "invalid_issuer")


async def test_token_signed_by_another_key_with_googles_kid_is_refused_with_invalid_signature(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, key=signing_key("attacker"))
    await assert_refused(response, db, 401, "invalid_signature")


async def test_token_with_a_tampered_payload_is_refused_with_invalid_signature(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    nonce = await browser.new_nonce()
    header, _, signature = issuer.token(nonce=nonce).split(".")
    _, forged_payload, _ = issuer.token(
        key=signing_key("attacker"), nonce=nonce, email="admin@gmail.com"
    ).split(".")
    response = await post_credential(browser, f"{header}.{forged_payload}.{signature}")
    await assert_refused(response, db, 401, "invalid_signature")


async def test_token_with_an_unknown_kid_is_refused_with_unknown_key(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, headers={"kid": "no-such-key"})
    await assert_refused(response, db, 401, "unknown_key")


async def test_unsigned_token_with_alg_none_is_refused_with_unsupported_algorithm(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, key="", algorithm="none")
    await assert_refused(response, db, 401, "unsupported_algorithm")


async def test_hs256_token_is_refused_with_unsupported_algorithm(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, key=secrets.token_hex(32), algorithm="HS256")
    await assert_refused(response, db, 401, "unsupported_algorithm")


async def test_token_with_unverified_email_is_refused_with_email_not_verified(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, email_verified=False)
    await assert_refused(response, db, 401, "email_not_verified")


async def test_token_without_nonce_claim_is_refused_with_invalid_nonce(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, nonce=None)
    await assert_refused(response, db, 401, "invalid_nonce")


async def test_token_with_another_nonce_is_refused_with_invalid_nonce(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, nonce="not-this-browsers-nonce")
    await assert_refused(response, db, 401, "invalid_nonce")


async def test_token_with_a_non_string_nonce_is_refused_with_invalid_nonce(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.new_nonce()
    response = await post_credential(browser, issuer.token(nonce=12345))
    await assert_refused(response, db, 401, "invalid_nonce")


async def test_token_sent_without_a_nonce_cookie_is_refused_with_invalid_nonce(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    victim, attacker = service.browser(), service.browser()
    nonce = await victim.new_nonce()  # the cookie stays in the victim's browser

    response = await post_credential(attacker, issuer.token(nonce=nonce))

    await assert_refused(response, db, 401, "invalid_nonce")


async def test_token_sent_with_another_browsers_nonce_cookie_is_refused_with_invalid_nonce(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    victim, attacker = service.browser(), service.browser()
    nonce = await victim.new_nonce()
    await attacker.new_nonce()

    response = await post_credential(attacker, issuer.token(nonce=nonce))

    await assert_refused(response, db, 401, "invalid_nonce")


async def test_replayed_token_with_its_captured_nonce_cookie_is_refused_with_nonce_replayed(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    victim = service.browser()
    nonce = await victim.new_nonce()
    captured = victim.nonce_cookie()
    token = issuer.token(nonce=nonce)
    await assert_accepted(await post_credential(victim, token), "someone@gmail.com")
    assert victim.nonce_cookies() == {}  # the login deleted it

    # An attacker who captured the token and the nonce cookie replays both from elsewhere.
    attacker = service.browser("curl/8.0")
    response = await post_credential(attacker, token, headers={"Cookie": captured})

    await assert_refused(response, db, 401, "nonce_replayed", sessions=1)
    assert attacker.cookie(SESSION_COOKIE) is None


async def test_replay_in_the_same_browser_with_the_nonce_cookie_put_back_is_refused(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    nonce = await browser.new_nonce()
    secret = browser.nonce_cookies()
    token = issuer.token(nonce=nonce)
    await assert_accepted(await post_credential(browser, token), "someone@gmail.com")
    first_session = browser.cookie(SESSION_COOKIE)

    browser.session.cookie_jar.update_cookies(secret)
    response = await post_credential(browser, token)

    await assert_refused(response, db, 401, "nonce_replayed", sessions=1)
    assert browser.cookie(SESSION_COOKIE) == first_session


async def test_two_tabs_on_the_login_page_each_keep_their_nonce(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    first_tab = await browser.new_nonce()
    second_tab = await browser.new_nonce()
    assert len(browser.nonce_cookies()) == 2

    for nonce in (first_tab, second_tab):
        await assert_accepted(
            await post_credential(browser, issuer.token(nonce=nonce)), "someone@gmail.com"
        )
    # Each was spent and its cookie deleted; the second sign-in ended the first session.
    assert browser.nonce_cookies() == {}
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    assert await db.fetchval("SELECT count(*) FROM spent_nonces") == 2


async def test_a_browser_keeps_its_five_newest_nonces(browser: Browser, issuer: Issuer) -> None:
    nonces = [await browser.new_nonce() for _ in range(7)]

    assert len(browser.nonce_cookies()) == 5
    for oldest in nonces[:2]:
        response = await post_credential(browser, issuer.token(nonce=oldest))
        assert (await response.json())["error"] == "invalid_nonce"
    await assert_accepted(
        await post_credential(browser, issuer.token(nonce=nonces[2])), "someone@gmail.com"
    )


@pytest.mark.parametrize(
    "name",
    [
        "login_nonce_{601 seconds ago}_abcdef",  # past its 10 minutes
        "login_nonce_{60 seconds ahead}_abcdef",
        "login_nonce_nothex_abcdef",
        "login_nonce_{now}_abc/ef",  # a name no response could delete
        "login_nonce_{now}_ABCDEF",
        "login_nonce",  # the cookie of versions with a single nonce
    ],
)
async def test_a_nonce_cookie_too_old_or_misnamed_is_not_accepted(
    name: str, browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    issued = {"{601 seconds ago}": -601, "{60 seconds ahead}": 60, "{now}": 0}
    for placeholder, offset in issued.items():
        name = name.replace(placeholder, f"{int((time.time() + offset) * 1_000_000):x}")
    secret = "s" * 43

    response = await post_credential(
        browser,
        issuer.token(nonce=nonce_for(secret)),
        headers={"Cookie": f"{name}={secret}"},
    )

    await assert_refused(response, db, 401, "invalid_nonce")


async def test_cookies_named_like_nonces_but_not_ours_are_ignored_not_a_500(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    stamp = f"{int(time.time() * 1_000_000):x}"
    planted = "; ".join(f"login_nonce_{stamp}_a/b{i}=x" for i in range(6))

    nonce = await browser.post("/api/login/nonce", headers={"Cookie": planted})
    assert nonce.status == 200, await nonce.text()
    secret = "s" * 43
    login = await post_credential(
        browser,
        issuer.token(nonce=nonce_for(secret)),
        headers={"Cookie": f"{planted}; login_nonce_{stamp}_a/b={secret}"},
    )

    await assert_refused(login, db, 401, "invalid_nonce")


async def test_a_nonce_issued_by_an_instance_whose_clock_runs_a_little_ahead_is_accepted(
    browser: Browser, issuer: Issuer
) -> None:
    secret = "s" * 43
    name = f"login_nonce_{int((time.time() + 20) * 1_000_000):x}_abcdef"

    response = await post_credential(
        browser, issuer.token(nonce=nonce_for(secret)), headers={"Cookie": f"{name}={secret}"}
    )

    await assert_accepted(response, "someone@gmail.com")


async def test_concurrent_replays_of_one_token_sign_in_exactly_once(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    victim = service.browser()
    nonce = await victim.new_nonce()
    cookie = {"Cookie": victim.nonce_cookie()}
    token = issuer.token(nonce=nonce)
    attackers = [service.browser(f"attacker/{i}") for i in range(5)]

    responses = await asyncio.gather(
        *(post_credential(attacker, token, headers=cookie) for attacker in attackers)
    )

    assert sorted(r.status for r in responses) == [200, 401, 401, 401, 401]
    for response in responses:
        if response.status != 200:
            await assert_error(response, 401, "nonce_replayed")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


@pytest.mark.parametrize(
    "email", ["a\u0000b@gmail.com", "\ud800@gmail.com"], ids=["nul", "lone_surrogate"]
)
async def test_a_token_whose_email_postgres_cannot_store_is_malformed_not_a_500(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool, email: str
) -> None:
    response, _ = await attempt(browser, issuer, email=email)

    await assert_refused(response, db, 401, "malformed_token")


async def test_a_name_or_picture_postgres_cannot_store_is_left_out(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, name="Ada\u0000", picture="\ud800")

    await assert_accepted(response, "someone@gmail.com")
    assert tuple(await db.fetchrow("SELECT name, picture FROM users")) == ("", "")


@pytest.mark.parametrize(
    "credential",
    [
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "...",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # a JSON header, then a payload that is not
        "W10.e30.c2ln",  # a header that is a JSON array
        "bm90IGpzb24.e30.c2ln",  # a header that is not JSON
        "/w.e30.c2ln",  # a header that is not UTF-8
        "é.é.é",
        "\ud800.\ud800.\ud800",
    ],
    ids=[
        "no-dots",
        "two-segments",
        "four-segments",
        "empty-segments",
        "not-base64",
        "payload-not-json",
        "header-array",
        "header-not-json",
        "header-not-utf8",
        "non-ascii",
        "lone-surrogate",
    ],
)
async def test_malformed_credential_is_refused_with_malformed_token(
    browser: Browser, db: asyncpg.Pool, credential: str
) -> None:
    await browser.new_nonce()
    response = await post_credential(browser, credential)
    await assert_refused(response, db, 401, "malformed_token")


async def test_token_with_a_deeply_nested_header_is_refused_with_malformed_token(
    browser: Browser, db: asyncpg.Pool
) -> None:
    header = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).rstrip(b"=").decode()
    await browser.new_nonce()
    response = await post_credential(browser, f"{header}.e30.c2ln")
    await assert_refused(response, db, 401, "malformed_token")


async def test_token_with_a_deeply_nested_payload_is_refused_with_malformed_token(
    browser: Browser, db: asyncpg.Pool
) -> None:
    # An unsigned token: the payload is parsed before its signature is checked.
    payload = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).rstrip(b"=").decode()
    await browser.new_nonce()
    response = await post_credential(browser, f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln")
    await assert_refused(response, db, 401, "malformed_token")


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_signed_token_with_a_non_numeric_time_claim_is_refused_with_malformed_token(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool, claim: str
) -> None:
    response, _ = await attempt(browser, issuer, **{claim: "soon"})
    await assert_refused(response, db, 401, "malformed_token")


async def test_signed_token_with_an_out_of_range_exp_is_refused_with_malformed_token(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    response, _ = await attempt(browser, issuer, exp=1e308)
    await assert_refused(response, db, 401, "malformed_token")


async def test_token_expired_within_the_clock_skew_is_still_accepted(
    browser: Browser, issuer: Issuer
) -> None:
    now = int(time.time())
    response, _ = await attempt(browser, issuer, iat=now - 3600, nbf=None, exp=now - (SKEW - 2))
    await assert_accepted(response, "someone@gmail.com")


async def test_token_with_iat_ahead_within_the_clock_skew_is_still_accepted(
    browser: Browser, issuer: Issuer
) -> None:
    now = int(time.time())
    response, _ = await attempt(browser, issuer, iat=now + SKEW - 2, nbf=None)
    await assert_accepted(response, "someone@gmail.com")


async def test_token_with_nbf_ahead_within_the_clock_skew_is_still_accepted(
    browser: Browser, issuer: Issuer
) -> None:
    now = int(time.time())
    response, _ = await attempt(browser, issuer, nbf=now + SKEW - 2)
    await assert_accepted(response, "someone@gmail.com")


# -- allowed domains and emails ---------------------------------------------------------------


async def test_allowed_domain_accepts_a_token_with_that_hd_claim(
    start_service: Any, issuer: Issuer
) -> None:
    service = await start_service(allowed_domains=frozenset({"example.org"}))
    response, _ = await attempt(service.browser(), issuer, email="x@example.org", hd="example.org")
    await assert_accepted(response, "x@example.org")


async def test_allowed_domain_refuses_an_email_in_that_domain_without_hd_claim(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(allowed_domains=frozenset({"example.org"}))
    response, _ = await attempt(service.browser(), issuer, email="x@example.org")
    await assert_refused(response, db, 403, "not_allowed")
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_allowed_domain_refuses_a_token_with_another_hd_claim(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(allowed_domains=frozenset({"example.org"}))
    response, _ = await attempt(service.browser(), issuer, email="x@example.org", hd="evil.org")
    await assert_refused(response, db, 403, "not_allowed")


async def test_allowed_emails_accepts_a_listed_email_and_refuses_others(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(allowed_emails=frozenset({"ada@gmail.com"}))

    listed, _ = await attempt(service.browser(), issuer, email="Ada@Gmail.com")
    await assert_accepted(listed, "Ada@Gmail.com")
    other, _ = await attempt(service.browser(), issuer, email="bob@gmail.com")
    await assert_refused(other, db, 403, "not_allowed", sessions=1)


async def test_allowed_domains_and_emails_together_accept_a_match_on_either(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(
        allowed_domains=frozenset({"example.org"}), allowed_emails=frozenset({"ada@gmail.com"})
    )

    by_domain, _ = await attempt(service.browser(), issuer, email="x@example.org", hd="example.org")
    await assert_accepted(by_domain, "x@example.org")
    by_email, _ = await attempt(service.browser(), issuer, email="ada@gmail.com")
    await assert_accepted(by_email, "ada@gmail.com")
    neither, _ = await attempt(service.browser(), issuer, email="bob@example.org")
    await assert_refused(neither, db, 403, "not_allowed", sessions=2)


# -- malformed bodies -------------------------------------------------------------------------


async def test_text_plain_body_is_refused_with_bad_content_type(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    nonce = await browser.new_nonce()
    body = json.dumps({"credential": issuer.token(nonce=nonce)})
    response = await browser.post("/api/login", data=body, headers={"Content-Type": "text/plain"})
    await assert_refused(response, db, 400, "bad_content_type")


async def test_form_body_is_refused_with_bad_content_type(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    nonce = await browser.new_nonce()
    response = await browser.post("/api/login", data={"credential": issuer.token(nonce=nonce)})
    await assert_refused(response, db, 400, "bad_content_type")


async def test_invalid_json_is_refused_with_bad_json(browser: Browser, db: asyncpg.Pool) -> None:
    response = await browser.post(
        "/api/login", data='{"credential": ', headers={"Content-Type": "application/json"}
    )
    await assert_refused(response, db, 400, "bad_json")


async def test_body_that_is_not_utf8_is_refused_with_bad_json(
    browser: Browser, db: asyncpg.Pool
) -> None:
    response = await browser.post(
        "/api/login", data=b'{"credential": "\xff"}', headers={"Content-Type": "application/json"}
    )
    await assert_refused(response, db, 400, "bad_json")


@pytest.mark.parametrize("body", ["[]", '["credential"]', '"credential"', "42", "null"])
async def test_json_that_is_not_an_object_is_refused_with_bad_json(
    browser: Browser, db: asyncpg.Pool, body: str
) -> None:
    response = await browser.post(
        "/api/login", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_refused(response, db, 400, "bad_json")


async def test_deeply_nested_json_is_refused_with_bad_json(
    browser: Browser, db: asyncpg.Pool
) -> None:
    body = '{"credential": ' + "[" * 20_000 + "]" * 20_000 + "}"
    response = await browser.post(
        "/api/login", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_refused(response, db, 400, "bad_json")


async def test_json_with_a_huge_integer_is_refused_with_bad_json(
    browser: Browser, db: asyncpg.Pool
) -> None:
    body = '{"credential": ' + "1" * 5000 + "}"
    response = await browser.post(
        "/api/login", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_refused(response, db, 400, "bad_json")


async def test_body_without_credential_is_refused_with_missing_credential(
    browser: Browser, db: asyncpg.Pool
) -> None:
    response = await browser.post("/api/login", json={"select_by": "btn"})
    await assert_refused(response, db, 400, "missing_credential")


@pytest.mark.parametrize("credential", ["", "   "], ids=["empty", "blank"])
async def test_empty_credential_is_refused_with_missing_credential(
    browser: Browser, db: asyncpg.Pool, credential: str
) -> None:
    response = await post_credential(browser, credential)
    await assert_refused(response, db, 400, "missing_credential")


@pytest.mark.parametrize("credential", [None, 123, True, ["a.b.c"], {"token": "a.b.c"}])
async def test_non_string_credential_is_refused_with_missing_credential(
    browser: Browser, db: asyncpg.Pool, credential: Any
) -> None:
    response = await post_credential(browser, credential)
    await assert_refused(response, db, 400, "missing_credential")


async def test_body_over_64_kib_is_refused_with_payload_too_large(
    browser: Browser, db: asyncpg.Pool
) -> None:
    response = await post_credential(browser, "x" * (64 * 1024))
    await assert_error(response, 413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_body_of_exactly_64_kib_is_read(browser: Browser, db: asyncpg.Pool) -> None:
    envelope = len(json.dumps({"credential": ""}))
    response = await post_credential(browser, "x" * (64 * 1024 - envelope))
    await assert_refused(response, db, 401, "malformed_token")


# -- Google's certs ---------------------------------------------------------------------------


async def test_many_logins_fetch_the_certs_once(service: Service, issuer: Issuer) -> None:
    for i in range(6):
        await service.browser().sign_in(issuer, email=f"user{i}@gmail.com")
    assert issuer.cert_fetches == 1


async def test_simultaneous_first_logins_share_one_certs_fetch(
    service: Service, issuer: Issuer
) -> None:
    browsers = [service.browser() for _ in range(6)]
    await asyncio.gather(
        *(browser.sign_in(issuer, email=f"user{i}@gmail.com") for i, browser in enumerate(browsers))
    )
    assert issuer.cert_fetches == 1


async def test_unreachable_certs_answer_503_certs_unavailable(
    start_service: Any, unused_tcp_port_factory: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    closed = f"http://127.0.0.1:{unused_tcp_port_factory()}/oauth2/v1/certs"
    service = await start_service(google_certs_url=closed)

    response, _ = await attempt(service.browser(), issuer)

    await assert_refused(response, db, 503, "certs_unavailable")


async def test_certs_endpoint_failing_answers_503_certs_unavailable(
    start_service: Any, aiohttp_server: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    app = web.Application()
    app.router.add_get("/oauth2/v1/certs", broken)
    server = await aiohttp_server(app)
    service = await start_service(google_certs_url=str(server.make_url("/oauth2/v1/certs")))

    response, _ = await attempt(service.browser(), issuer)

    await assert_refused(response, db, 503, "certs_unavailable")


async def test_certs_endpoint_answering_garbage_answers_503_certs_unavailable(
    start_service: Any, aiohttp_server: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    async def captive_portal(request: web.Request) -> web.Response:
        return web.Response(text="<html>Sign in to the hotel Wi-Fi</html>")

    app = web.Application()
    app.router.add_get("/oauth2/v1/certs", captive_portal)
    server = await aiohttp_server(app)
    service = await start_service(google_certs_url=str(server.make_url("/oauth2/v1/certs")))

    response, _ = await attempt(service.browser(), issuer)

    # Google's side failed, not the user's token: a 503 to retry, not a 401.
    await assert_refused(response, db, 503, "certs_unavailable")


@pytest.fixture
async def hanging_certs() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A certs URL whose server accepts connections and never answers; and those connections."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/oauth2/v1/certs", held
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def raw_post(url: str, path: str, body: bytes, cookie: str) -> tuple[float, str]:
    """One POST on a connection of its own: seconds to the answer, and its status line (or
    how the connection ended without one)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    try:
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    status = answer.split(b"\r\n", 1)[0].decode() if answer else "closed without an answer"
    return time.monotonic() - started, status


async def test_a_certs_endpoint_that_never_answers_fails_every_waiting_sign_in_at_once(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool, hanging_certs: Any
) -> None:
    """40 sign-ins, each on its own connection, wait for one fetch and share its failure."""
    certs_url, held = hanging_certs
    service = await start_service(google_certs_url=certs_url)
    bodies = []
    for _ in range(40):
        browser = service.browser()
        nonce = await browser.new_nonce()
        credential = issuer.token(nonce=nonce)
        cookie = browser.nonce_cookie()
        bodies.append((json.dumps({"credential": credential}).encode(), cookie))

    answers = await asyncio.gather(
        *(raw_post(service.base_url, "/api/login", body, cookie) for body, cookie in bodies)
    )

    assert {status for _, status in answers} == {"HTTP/1.1 503 Service Unavailable"}, answers
    assert max(seconds for seconds, _ in answers) < 12
    assert len(held) == 1  # one fetch for all of them
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def certs_server(aiohttp_server: Any, issuer: Issuer, max_age: int) -> Any:
    """Serves the issuer's certs with `max-age`, or fails with 503 while `.failing` is set."""

    async def serve(request: web.Request) -> web.Response:
        serve.fetches += 1  # type: ignore[attr-defined]
        if serve.failing:  # type: ignore[attr-defined]
            return web.Response(status=503)
        return web.json_response(issuer.certs, headers={"Cache-Control": f"max-age={max_age}"})

    serve.fetches = 0  # type: ignore[attr-defined]
    serve.failing = False  # type: ignore[attr-defined]
    app = web.Application()
    app.router.add_get("/certs", serve)
    server = await aiohttp_server(app)
    return serve, str(server.make_url("/certs"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_expired_certs_are_used_within_the_grace_while_a_refresh_fails(
    aiohttp_server: Any, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    endpoint, url = await certs_server(aiohttp_server, issuer, max_age=0)
    certs = GoogleCerts(url, http, grace=60, min_lifetime=0.05, retry_every=0.05)
    assert await certs.get(KEY_ID) == issuer.certs
    endpoint.failing = True
    await asyncio.sleep(0.1)  # past their lifetime

    # Answered at once from the expired set, with a refresh started behind it...
    assert await certs.get(KEY_ID) == issuer.certs
    await asyncio.sleep(0.02)
    assert endpoint.fetches == 2
    # ...and not another one per sign-in while that failure is fresh.
    for _ in range(5):
        assert await certs.get(KEY_ID) == issuer.certs
    await asyncio.sleep(0.02)
    assert endpoint.fetches == 2

    endpoint.failing = False
    await asyncio.sleep(0.1)
    assert await certs.get(KEY_ID) == issuer.certs
    await asyncio.sleep(0.02)
    assert endpoint.fetches == 3
    # The refresh worked: fresh again, no fetch until their lifetime ends.
    assert await certs.get(KEY_ID) == issuer.certs
    assert endpoint.fetches == 3


async def test_certs_past_the_grace_are_not_used_and_the_sign_in_is_503(
    aiohttp_server: Any, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    endpoint, url = await certs_server(aiohttp_server, issuer, max_age=0)
    certs = GoogleCerts(url, http, grace=0.05, min_lifetime=0.05, retry_every=10)
    assert await certs.get(KEY_ID) == issuer.certs
    endpoint.failing = True
    await asyncio.sleep(0.15)

    for _ in range(3):  # the first fetch fails; the next callers share that failure at once
        with pytest.raises(ServiceUnavailable) as refused:
            await certs.get(KEY_ID)
        assert refused.value.code == "certs_unavailable"
    assert endpoint.fetches == 2


async def test_an_unknown_key_id_asks_google_again_at_most_once_per_min_lifetime(
    aiohttp_server: Any, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    endpoint, url = await certs_server(aiohttp_server, issuer, max_age=3600)
    certs = GoogleCerts(url, http, min_lifetime=0.2)
    await certs.get(KEY_ID)

    for _ in range(5):
        assert KEY_ID in await certs.get("made-up")
    assert endpoint.fetches == 1
    await asyncio.sleep(0.25)
    await certs.get("made-up")  # perhaps Google rotated: ask once more
    assert endpoint.fetches == 2
    # Failing fetches count too: made-up key ids during an outage do not fetch each time.
    endpoint.failing = True
    await asyncio.sleep(0.25)
    with pytest.raises(ServiceUnavailable):  # maybe a new key: the truth is "unavailable"
        await certs.get("made-up")
    for _ in range(5):
        assert KEY_ID in await certs.get("made-up")
    assert endpoint.fetches == 3


async def test_a_certs_endpoint_that_drips_its_answer_fails_within_the_total_timeout(
    aiohttp_server: Any, issuer: Issuer, http: aiohttp.ClientSession
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(100):  # a byte every 0.2 s: no single read ever times out
            await response.write(b" ")
            await asyncio.sleep(0.2)
        return response

    app = web.Application()
    app.router.add_get("/certs", drip)
    server = await aiohttp_server(app)
    certs = GoogleCerts(str(server.make_url("/certs")), http, timeout=1, retry_every=0)
    started = time.monotonic()

    with pytest.raises(ServiceUnavailable):
        await certs.get(KEY_ID)

    assert time.monotonic() - started < 3
    # Nothing is stuck behind it: the next attempt starts (and fails the same way) at once.
    with pytest.raises(ServiceUnavailable):
        await certs.get(KEY_ID)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Cache-Control": "public, max-age=3600, must-revalidate"}, 3600),
        ({"Cache-Control": "max-age=3600", "Age": "600"}, 3000),
        ({"Cache-Control": "no-cache"}, 0),
        ({}, 0),
        ({"Cache-Control": "max-age=99999999"}, 86400),
        ({"Cache-Control": "max-age=60", "Age": "3600"}, 0),
    ],
)
def test_the_certs_lifetime_is_their_max_age_less_their_age(
    headers: dict[str, str], seconds: float
) -> None:
    assert certs_lifetime(headers) == seconds


# -- what a failed login leaves behind --------------------------------------------------------


async def failed_logins(service: Service, issuer: Issuer) -> list[tuple[str, str]]:
    """One failed login of many kinds, and one success; (token, expected error code) each."""
    now = int(time.time())
    cases: list[tuple[str, dict[str, Any]]] = [
        ("token_expired", {"iat": now - 3700, "exp": now - 60, "nbf": None}),
        ("token_used_too_early", {"iat": now + 60}),
        ("token_used_too_early", {"nbf": now + 60}),
        ("invalid_audience", {"aud": "other-app"}),
        ("invalid_issuer", {"iss": "https://evil.example.com"}),
        ("invalid_signature", {"key": signing_key("attacker")}),
        ("unknown_key", {"headers": {"kid": "no-such-key"}}),
        ("unsupported_algorithm", {"key": "", "algorithm": "none"}),
        ("unsupported_algorithm", {"key": secrets.token_hex(32), "algorithm": "HS256"}),
        ("email_not_verified", {"email_verified": False}),
        ("invalid_nonce", {"nonce": None}),
        ("invalid_nonce", {"nonce": "wrong"}),
    ]
    seen = []
    for code, claims in cases:
        response, token = await attempt(service.browser(), issuer, **claims)
        await assert_error(response, 401, code)
        seen.append((token, code))
    # A signed-in token, then its replay.
    victim = service.browser()
    nonce = await victim.new_nonce()
    cookie = {"Cookie": victim.nonce_cookie()}
    token = issuer.token(nonce=nonce)
    assert (await post_credential(victim, token)).status == 200
    response = await post_credential(service.browser(), token, headers=cookie)
    await assert_error(response, 401, "nonce_replayed")
    seen.append((token, "nonce_replayed"))
    # google-auth quotes the token in its messages for these.
    for malformed in (
        "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24tcGF5bG9hZA.c2lnbmF0dXJl",
        "no-dots-" + secrets.token_hex(16),
    ):
        response = await post_credential(service.browser(), malformed)
        await assert_error(response, 401, "malformed_token")
        seen.append((malformed, "malformed_token"))
    browser = service.browser()
    token = issuer.token(nonce=await browser.new_nonce())
    response = await browser.post(
        "/api/login",
        data=json.dumps({"credential": token}),
        headers={"Content-Type": "text/plain"},
    )
    await assert_error(response, 400, "bad_content_type")
    seen.append((token, "bad_content_type"))
    return seen


async def test_failed_logins_are_recorded_as_login_failed_auth_events(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    seen = await failed_logins(service, issuer)

    rows = await db.fetch(
        """
        SELECT detail->>'error' AS error, (detail->>'count')::int AS count, user_id, ip,
               user_agent
        FROM auth_events WHERE kind = 'login_failed' ORDER BY id
        """
    )
    # Repeats of one failure from one address are counted on its first event.
    assert {row["error"]: row["count"] for row in rows} == Counter(code for _, code in seen)
    assert len(rows) == len({code for _, code in seen})
    assert all(row["user_id"] is None and row["ip"] == "127.0.0.1" for row in rows)
    assert all(row["user_agent"].startswith("Mozilla/5.0") for row in rows)
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'login_ok'") == 1


async def test_tokens_of_failed_logins_are_never_stored(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    seen = await failed_logins(service, issuer)

    dump = await dump_database(db)
    assert "login_failed" in dump  # the dump does cover the events
    for token, code in seen:
        for part in secret_parts(token):
            assert part not in dump, f"the {code} token is stored"


async def test_tokens_of_failed_logins_are_never_logged(
    service: Service, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in logging.root.manager.loggerDict:
        caplog.set_level(logging.DEBUG, logger=name)

    seen = await failed_logins(service, issuer)

    assert caplog.records, "nothing was logged, so nothing was checked"
    text = caplog.text + "".join(repr(record.__dict__) for record in caplog.records)
    for token, code in seen:
        for part in secret_parts(token):
            assert part not in text, f"the {code} token is logged"


# -- never a 500 ------------------------------------------------------------------------------


async def test_refused_logins_never_answer_500_nor_log_an_error(
    service: Service, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    await failed_logins(service, issuer)
    browser = service.browser()
    for data, content_type, code in [
        ("{}", "application/json", "missing_credential"),
        ("[]", "application/json", "bad_json"),
        ("{", "application/json", "bad_json"),
        ('{"credential": 1}', "application/json", "missing_credential"),
        ('{"credential": "x"}', "text/plain", "bad_content_type"),
        ("", "application/json", "bad_json"),
    ]:
        response = await browser.post(
            "/api/login", data=data, headers={"Content-Type": content_type}
        )
        assert response.status == 400, await response.text()
        assert (await response.json())["error"] == code
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "internal_error" not in caplog.text
