"""Where you're signed in: listing your own sessions, ending one, and ending all the others."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Browser, Service
from tests.issuer import Issuer

LAPTOP = "Mozilla/5.0 (X11; Linux x86_64) Laptop/1.0"
PHONE = "Mozilla/5.0 (Linux; Android 14) Phone/1.0"
TABLET = "Mozilla/5.0 (iPad; CPU OS 17_0) Tablet/1.0"

# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test sends, the service never answers 500 nor logs an error."""
    caplog.set_level(logging.INFO, logger="service.access")
    yield
    failures = [
        record.getMessage()
        for record in caplog.get_records("setup") + caplog.get_records("call")
        if record.levelno >= logging.ERROR or getattr(record, "status", None) == 500
    ]
    assert failures == []


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]


async def signed_in(service: Service, issuer: Issuer, email: str, user_agent: str) -> Browser:
    browser = service.browser(user_agent)
    await browser.sign_in(issuer, email=email)
    return browser


async def session_id_of(browser: Browser) -> str:
    response = await browser.get("/api/me")
    assert response.status == 200, await response.text()
    found: str = (await response.json())["session"]["id"]
    return found


async def my_sessions(browser: Browser) -> list[dict[str, Any]]:
    response = await browser.get("/api/sessions")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"results"}
    results: list[dict[str, Any]] = body["results"]
    return results


async def is_signed_in(browser: Browser) -> bool:
    response = await browser.get("/api/user")
    assert response.status in (200, 401), await response.text()
    return response.status == 200


async def user_id(db: asyncpg.Pool, email: str) -> int:
    found: int = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    return found


async def session_ids(db: asyncpg.Pool) -> set[str]:
    return {str(row["id"]) for row in await db.fetch("SELECT id FROM sessions")}


def clears_the_session_cookie(response: aiohttp.ClientResponse) -> bool:
    """Whether the response expires the `session_id` cookie (Max-Age=0)."""
    for header in response.headers.getall("Set-Cookie", []):
        first, *attributes = (part.strip() for part in header.split(";"))
        if first.partition("=")[0] == "session_id":
            return any(a.lower().replace(" ", "") == "max-age=0" for a in attributes)
    return False


# --- listing ---------------------------------------------------------------------------------


async def test_the_list_shows_my_live_sessions_newest_first_with_this_one_current(
    service: Service, issuer: Issuer
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    bob = await signed_in(service, issuer, "bob@gmail.com", TABLET)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    laptop_id, phone_id, bob_id = [await session_id_of(b) for b in (laptop, phone, bob)]

    results = await my_sessions(phone)

    assert [s["id"] for s in results] == [phone_id, laptop_id]
    assert [s["current"] for s in results] == [True, False]
    assert bob_id not in {s["id"] for s in results}
    assert [s["user_agent"] for s in results] == [PHONE, LAPTOP]
    for session in results:
        assert set(session) == {
            "id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "ip",
            "user_agent",
            "current",
        }
        assert session["ip"] == "127.0.0.1"
        created = datetime.fromisoformat(session["created_at"])
        assert created.tzinfo is not None
        assert created <= datetime.fromisoformat(session["last_seen_at"])
        assert created < datetime.fromisoformat(session["expires_at"])
    assert results[0]["created_at"] > results[1]["created_at"]


async def test_each_browser_sees_its_own_session_as_the_current_one(
    service: Service, issuer: Issuer
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)

    for browser in (laptop, phone):
        results = await my_sessions(browser)
        current = [s["id"] for s in results if s["current"]]
        assert current == [await session_id_of(browser)]
        assert len(results) == 2


async def test_the_list_leaves_out_expired_and_idle_sessions(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    tablet = await signed_in(service, issuer, "ada@gmail.com", TABLET)
    phone_id, tablet_id = await session_id_of(phone), await session_id_of(tablet)
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(phone_id),
    )
    idle = service.config.session_idle_timeout + 60
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - make_interval(secs => $2) WHERE id = $1",
        uuid.UUID(tablet_id),
        idle,
    )

    results = await my_sessions(laptop)

    assert [s["id"] for s in results] == [await session_id_of(laptop)]
    assert results[0]["current"] is True


# --- ending one session ----------------------------------------------------------------------


async def test_ending_another_of_my_sessions_signs_that_browser_out(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    laptop_id, phone_id = await session_id_of(laptop), await session_id_of(phone)

    response = await laptop.request("DELETE", f"/api/sessions/{phone_id}")

    assert response.status == 204, await response.text()
    assert await response.read() == b""
    assert not clears_the_session_cookie(response)
    assert await session_ids(db) == {laptop_id}
    await assert_error(await phone.get("/api/user"), 401, "not_signed_in")
    assert await is_signed_in(laptop)
    assert [s["id"] for s in await my_sessions(laptop)] == [laptop_id]


async def test_ending_a_session_is_recorded_as_session_revoked(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    phone_id = await session_id_of(phone)

    assert (await laptop.request("DELETE", f"/api/sessions/{phone_id}")).status == 204

    events = await db.fetch(
        """
        SELECT user_id, ip, user_agent, detail->>'session_id' AS session_id,
               detail->>'reason' AS reason
        FROM auth_events WHERE kind = 'session_revoked'
        """
    )
    assert [dict(e) for e in events] == [
        {
            "user_id": await user_id(db, "ada@gmail.com"),
            "ip": "127.0.0.1",
            "user_agent": LAPTOP,
            "session_id": phone_id,
            "reason": "user",
        }
    ]


async def test_ending_my_current_session_clears_the_cookie_and_signs_me_out(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    laptop_id, phone_id = await session_id_of(laptop), await session_id_of(phone)
    token = laptop.cookie("session_id")

    response = await laptop.request("DELETE", f"/api/sessions/{laptop_id}")

    assert response.status == 204, await response.text()
    assert clears_the_session_cookie(response)
    assert laptop.cookie("session_id") is None
    await assert_error(await laptop.get("/api/sessions"), 401, "not_signed_in")
    replayed = await service.browser().get("/api/user", headers={"Cookie": f"session_id={token}"})
    await assert_error(replayed, 401, "not_signed_in")
    assert await session_ids(db) == {phone_id}
    assert await is_signed_in(phone)
    assert await db.fetchval(
        "SELECT detail->>'session_id' FROM auth_events WHERE kind = 'session_revoked'"
    ) == (laptop_id)


async def test_someone_elses_session_is_not_found_and_keeps_working(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    bob = await signed_in(service, issuer, "bob@gmail.com", PHONE)
    bob_id = await session_id_of(bob)
    before = await session_ids(db)

    response = await ada.request("DELETE", f"/api/sessions/{bob_id}")

    await assert_error(response, 404, "not_found")
    assert not clears_the_session_cookie(response)
    assert await session_ids(db) == before
    assert await is_signed_in(bob)
    assert await is_signed_in(ada)
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'session_revoked'") == 0


async def test_a_session_already_ended_is_not_found(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    phone_id = await session_id_of(phone)
    assert (await laptop.request("DELETE", f"/api/sessions/{phone_id}")).status == 204

    again = await laptop.request("DELETE", f"/api/sessions/{phone_id}")

    await assert_error(again, 404, "not_found")
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'session_revoked'") == 1


@pytest.mark.parametrize(
    "session_id",
    [
        str(uuid.uuid4()),  # well formed, but nobody's
        "abc",
        "123",
        "0",
        "not-a-uuid-at-all",
        str(uuid.uuid4()) + "0",
        str(uuid.uuid4())[:-1] + "g",
        "%00",
        "x" * 300,
    ],
)
async def test_an_unknown_or_malformed_session_id_is_not_found(
    service: Service, issuer: Issuer, db: asyncpg.Pool, session_id: str
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    before = await session_ids(db)

    response = await laptop.request("DELETE", f"/api/sessions/{session_id}")

    await assert_error(response, 404, "not_found")
    assert await session_ids(db) == before
    assert await is_signed_in(laptop)
    assert await is_signed_in(phone)


# --- ending every other session --------------------------------------------------------------


async def test_revoking_the_others_keeps_only_this_session(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    tablet = await signed_in(service, issuer, "ada@gmail.com", TABLET)
    bob = await signed_in(service, issuer, "bob@gmail.com", LAPTOP)
    laptop_id, bob_id = await session_id_of(laptop), await session_id_of(bob)

    response = await laptop.post("/api/sessions/revoke-others")

    assert response.status == 200, await response.text()
    assert await response.json() == {"revoked": 2}
    assert not clears_the_session_cookie(response)
    await assert_error(await phone.get("/api/user"), 401, "not_signed_in")
    await assert_error(await tablet.get("/api/user"), 401, "not_signed_in")
    assert await is_signed_in(laptop)
    assert await is_signed_in(bob)
    assert await session_ids(db) == {laptop_id, bob_id}
    assert [s["id"] for s in await my_sessions(laptop)] == [laptop_id]


async def test_revoking_the_others_is_recorded_as_sessions_revoked(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    await signed_in(service, issuer, "ada@gmail.com", PHONE)
    await signed_in(service, issuer, "ada@gmail.com", TABLET)

    assert (await laptop.post("/api/sessions/revoke-others")).status == 200

    events = await db.fetch(
        """
        SELECT user_id, user_agent, detail->>'count' AS count, detail->>'reason' AS reason
        FROM auth_events WHERE kind = 'sessions_revoked'
        """
    )
    assert len(events) == 1
    assert events[0]["user_id"] == await user_id(db, "ada@gmail.com")
    assert events[0]["user_agent"] == LAPTOP
    assert events[0]["count"] == "2"
    assert events[0]["reason"] == "user_revoked_others"


async def test_revoking_the_others_with_none_revokes_nothing(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    bob = await signed_in(service, issuer, "bob@gmail.com", PHONE)
    before = await session_ids(db)

    response = await laptop.post("/api/sessions/revoke-others")

    assert response.status == 200, await response.text()
    assert await response.json() == {"revoked": 0}
    assert await session_ids(db) == before
    assert await is_signed_in(laptop)
    assert await is_signed_in(bob)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/sessions"),
        ("DELETE", "/api/sessions/{id}"),
        ("DELETE", f"/api/sessions/{uuid.uuid4()}"),  # not a 404 before signing in
        ("DELETE", "/api/sessions/malformed"),
        ("POST", "/api/sessions/revoke-others"),
    ],
)
async def test_without_a_session_every_request_is_401_and_ends_nothing(
    service: Service, issuer: Issuer, db: asyncpg.Pool, method: str, path: str
) -> None:
    ada = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    ada_id = await session_id_of(ada)
    before = await session_ids(db)

    response = await service.browser().request(method, path.replace("{id}", ada_id))

    await assert_error(response, 401, "not_signed_in")
    assert await session_ids(db) == before
    assert await is_signed_in(ada)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/sessions"),
        ("DELETE", "/api/sessions/{id}"),
        ("POST", "/api/sessions/revoke-others"),
    ],
)
async def test_a_disabled_user_is_refused_403_and_ends_nothing(
    service: Service, issuer: Issuer, db: asyncpg.Pool, method: str, path: str
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    path = path.replace("{id}", await session_id_of(phone))
    before = await session_ids(db)
    await db.execute("UPDATE users SET disabled = true WHERE email = 'ada@gmail.com'")

    response = await laptop.request(method, path)

    await assert_error(response, 403, "user_disabled")
    assert await session_ids(db) == before


@pytest.mark.parametrize("origin", [None, "https://evil.example", "null"])
async def test_ending_a_session_from_another_site_is_refused_csrf(
    service: Service, issuer: Issuer, db: asyncpg.Pool, origin: str | None
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    before = await session_ids(db)

    for target in (await session_id_of(phone), await session_id_of(laptop)):
        response = await laptop.request("DELETE", f"/api/sessions/{target}", origin=origin)

        await assert_error(response, 403, "csrf")
        assert not clears_the_session_cookie(response)
    assert await session_ids(db) == before
    assert await is_signed_in(laptop)
    assert await is_signed_in(phone)
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'session_revoked'") == 0


@pytest.mark.parametrize("origin", [None, "https://evil.example", "null"])
async def test_revoking_the_others_from_another_site_is_refused_csrf(
    service: Service, issuer: Issuer, db: asyncpg.Pool, origin: str | None
) -> None:
    laptop = await signed_in(service, issuer, "ada@gmail.com", LAPTOP)
    phone = await signed_in(service, issuer, "ada@gmail.com", PHONE)
    before = await session_ids(db)

    response = await laptop.post("/api/sessions/revoke-others", origin=origin)

    await assert_error(response, 403, "csrf")
    assert await session_ids(db) == before
    assert await is_signed_in(phone)
    assert (
        await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'sessions_revoked'") == 0
    )
