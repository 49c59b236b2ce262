"""Accounts: how a sign-in finds, links, creates or refuses a row in `users`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import pytest

from service import signins
from tests.conftest import Browser, Service
from tests.issuer import Issuer


async def attempt_sign_in(
    browser: Browser, issuer: Issuer, email: str, **claims: Any
) -> aiohttp.ClientResponse:
    """The login flow without asserting success."""
    nonce = await browser.new_nonce()
    return await browser.post(
        "/api/login", json={"credential": issuer.token(email=email, nonce=nonce, **claims)}
    )


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert (await response.json())["error"] == code


async def users(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM users ORDER BY id")


async def user_by_email(db: asyncpg.Pool, email: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM users WHERE lower(email) = lower($1)", email)
    assert row is not None
    return row


async def session_count(db: asyncpg.Pool) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sessions")
    return count


async def provision(db: asyncpg.Pool, email: str, *, disabled: bool = False) -> int:
    new_id: int = await db.fetchval(
        "INSERT INTO users (email, disabled) VALUES ($1, $2) RETURNING id", email, disabled
    )
    return new_id


# --- creating and updating ------------------------------------------------------------------


async def test_first_sign_in_creates_the_user(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    body = await browser.sign_in(
        issuer, email="ada@gmail.com", sub="g-1", name="Ada", picture="https://example.com/a.png"
    )

    rows = await users(db)
    assert len(rows) == 1
    row = rows[0]
    assert row["google_sub"] == "g-1"
    assert row["email"] == "ada@gmail.com"
    assert row["name"] == "Ada"
    assert row["picture"] == "https://example.com/a.png"
    assert row["admin"] is False
    assert row["disabled"] is False
    assert row["last_login_at"] is not None
    assert body["user"]["id"] == row["id"]
    sessions = await db.fetch("SELECT user_id FROM sessions")
    assert [s["user_id"] for s in sessions] == [row["id"]]


async def test_concurrent_first_sign_ins_of_one_account_all_succeed_with_one_user(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browsers = [service.browser() for _ in range(20)]
    nonces = [await browser.new_nonce() for browser in browsers]

    responses = await asyncio.gather(
        *(
            browser.post(
                "/api/login",
                json={"credential": issuer.token(email="ada@gmail.com", sub="g-1", nonce=nonce)},
            )
            for browser, nonce in zip(browsers, nonces, strict=True)
        )
    )

    assert [r.status for r in responses] == [200] * 20, [r.status for r in responses]
    rows = await users(db)
    assert [(row["google_sub"], row["email"]) for row in rows] == [("g-1", "ada@gmail.com")]
    assert {(await r.json())["user"]["id"] for r in responses} == {rows[0]["id"]}
    assert await session_count(db) == 20


async def test_sign_in_matches_on_sub_and_updates_email_and_name(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1", name="Ada")
    first = await user_by_email(db, "ada@gmail.com")

    body = await service.browser().sign_in(
        issuer, email="ada.lovelace@gmail.com", sub="g-1", name="Ada Lovelace"
    )

    rows = await users(db)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == first["id"]
    assert row["google_sub"] == "g-1"
    assert row["email"] == "ada.lovelace@gmail.com"
    assert row["name"] == "Ada Lovelace"
    assert row["last_login_at"] >= first["last_login_at"]
    assert body["user"] == {
        "id": first["id"],
        "email": "ada.lovelace@gmail.com",
        "username": "ada.lovelace@gmail.com",
        "name": "Ada Lovelace",
        "picture": "https://example.com/picture.png",
        "admin": False,
    }


async def test_a_token_without_a_name_keeps_the_stored_name(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1", name="Ada")

    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1", name=None)

    assert (await user_by_email(db, "ada@gmail.com"))["name"] == "Ada"


async def test_different_subs_make_different_users(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1")
    await service.browser().sign_in(issuer, email="bob@gmail.com", sub="g-2")

    assert [(r["google_sub"], r["email"]) for r in await users(db)] == [
        ("g-1", "ada@gmail.com"),
        ("g-2", "bob@gmail.com"),
    ]


# --- pre-provisioned users ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provisioned", "email", "claims"),
    [
        ("x@example.com", "x@example.com", {"hd": "example.com"}),
        ("X@Example.com", "x@example.com", {"hd": "example.com"}),
        ("ada@gmail.com", "ada@gmail.com", {}),
        ("Ada@GMail.com", "ada@gmail.com", {}),
    ],
)
async def test_sign_in_links_a_pre_provisioned_user_where_google_is_authoritative(
    browser: Browser,
    issuer: Issuer,
    db: asyncpg.Pool,
    provisioned: str,
    email: str,
    claims: dict[str, Any],
) -> None:
    provisioned_id = await provision(db, provisioned)

    body = await browser.sign_in(issuer, email=email, sub="g-1", **claims)

    rows = await users(db)
    assert len(rows) == 1
    assert rows[0]["id"] == provisioned_id
    assert rows[0]["google_sub"] == "g-1"
    assert rows[0]["email"] == email
    assert rows[0]["last_login_at"] is not None
    assert body["user"]["id"] == provisioned_id
    assert await db.fetchval("SELECT user_id FROM sessions") == provisioned_id


async def test_a_non_gmail_address_without_hd_cannot_claim_a_pre_provisioned_user(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    provisioned_id = await provision(db, "x@example.com")

    response = await attempt_sign_in(browser, issuer, "x@example.com", sub="g-1")

    await assert_error(response, 409, "account_conflict")
    rows = await users(db)
    assert len(rows) == 1
    assert rows[0]["id"] == provisioned_id
    assert rows[0]["google_sub"] is None
    assert rows[0]["last_login_at"] is None
    assert await session_count(db) == 0
    assert browser.cookie("session_id") is None


# --- no takeover ----------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["ada@gmail.com", "ADA@Gmail.COM"])
async def test_an_email_of_another_sub_is_a_conflict(
    service: Service, issuer: Issuer, db: asyncpg.Pool, email: str
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1", name="Ada")
    browser = service.browser()

    response = await attempt_sign_in(browser, issuer, email, sub="g-2", name="Mallory")

    await assert_error(response, 409, "account_conflict")
    rows = await users(db)
    assert len(rows) == 1
    assert (rows[0]["google_sub"], rows[0]["email"], rows[0]["name"]) == (
        "g-1",
        "ada@gmail.com",
        "Ada",
    )
    assert await session_count(db) == 1
    assert browser.cookie("session_id") is None
    assert (await browser.get("/api/user")).status == 401


async def test_an_email_of_another_sub_is_a_conflict_even_with_hd(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="x@example.com", sub="g-1", hd="example.com")

    response = await attempt_sign_in(
        service.browser(), issuer, "x@example.com", sub="g-2", hd="example.com"
    )

    await assert_error(response, 409, "account_conflict")
    assert [r["google_sub"] for r in await users(db)] == ["g-1"]


async def test_changing_email_to_another_users_address_is_a_conflict(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1")
    await service.browser().sign_in(issuer, email="bob@gmail.com", sub="g-2")

    response = await attempt_sign_in(service.browser(), issuer, "Bob@gmail.com", sub="g-1")

    await assert_error(response, 409, "account_conflict")
    assert [(r["google_sub"], r["email"]) for r in await users(db)] == [
        ("g-1", "ada@gmail.com"),
        ("g-2", "bob@gmail.com"),
    ]
    assert await session_count(db) == 2


async def test_a_conflict_is_recorded_as_a_failed_login(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1")

    await attempt_sign_in(service.browser(), issuer, "ada@gmail.com", sub="g-2")

    event = await db.fetchrow(
        "SELECT user_id, detail->>'error' AS error, detail->>'email' AS email"
        " FROM auth_events WHERE kind = 'login_failed'"
    )
    assert event is not None
    assert (event["user_id"], event["error"], event["email"]) == (
        None,
        "account_conflict",
        "ada@gmail.com",
    )


# --- disabled users -------------------------------------------------------------------------


async def test_a_pre_provisioned_disabled_user_cannot_sign_in(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await provision(db, "ada@gmail.com", disabled=True)

    response = await attempt_sign_in(browser, issuer, "ada@gmail.com", sub="g-1")

    await assert_error(response, 403, "user_disabled")
    assert await session_count(db) == 0
    row = await user_by_email(db, "ada@gmail.com")
    assert row["google_sub"] is None
    assert row["disabled"] is True
    assert browser.cookie("session_id") is None


async def test_a_user_disabled_after_signing_in_cannot_sign_in_again(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await service.browser().sign_in(issuer, email="ada@gmail.com", sub="g-1")
    first = await user_by_email(db, "ada@gmail.com")
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", first["id"])
    browser = service.browser()

    response = await attempt_sign_in(browser, issuer, "ada@new.example", sub="g-1", name="New")

    await assert_error(response, 403, "user_disabled")
    assert await session_count(db) == 1  # only the session from before it was disabled
    row = await user_by_email(db, "ada@gmail.com")
    assert (row["email"], row["last_login_at"]) == ("ada@gmail.com", first["last_login_at"])
    assert browser.cookie("session_id") is None
    assert (await browser.get("/api/user")).status == 401


async def test_a_disabled_user_signing_in_again_keeps_nothing_new_in_the_browser(
    service: Service, browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await browser.sign_in(issuer, email="ada@gmail.com", sub="g-1")
    await db.execute("UPDATE users SET disabled = true WHERE email = 'ada@gmail.com'")

    response = await attempt_sign_in(browser, issuer, "ada@gmail.com", sub="g-1")

    await assert_error(response, 403, "user_disabled")
    await assert_error(await browser.get("/api/user"), 403, "user_disabled")
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind = 'login_ok'") == 1


# --- admins ---------------------------------------------------------------------------------


async def test_admin_emails_make_a_user_admin_on_sign_in(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(admin_emails=frozenset({"boss@gmail.com"}))

    boss = await service.browser().sign_in(issuer, email="boss@gmail.com")
    worker = await service.browser().sign_in(issuer, email="worker@gmail.com")

    assert boss["user"]["admin"] is True
    assert worker["user"]["admin"] is False
    assert (await user_by_email(db, "boss@gmail.com"))["admin"] is True
    assert (await user_by_email(db, "worker@gmail.com"))["admin"] is False


async def test_admin_emails_match_case_insensitively(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(admin_emails=frozenset({"boss@gmail.com"}))

    body = await service.browser().sign_in(issuer, email="Boss@GMail.com")

    assert body["user"]["admin"] is True


async def test_admin_emails_grant_admin_to_an_existing_user(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    plain = await start_service()
    await plain.browser().sign_in(issuer, email="boss@gmail.com", sub="g-1")
    assert (await user_by_email(db, "boss@gmail.com"))["admin"] is False
    listed = await start_service(admin_emails=frozenset({"boss@gmail.com"}))

    body = await listed.browser().sign_in(issuer, email="boss@gmail.com", sub="g-1")

    assert body["user"]["admin"] is True
    assert (await user_by_email(db, "boss@gmail.com"))["admin"] is True


async def test_admin_emails_never_revoke_admin(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(admin_emails=frozenset({"boss@gmail.com"}))
    await service.browser().sign_in(issuer, email="old-boss@gmail.com", sub="g-1")
    await db.execute("UPDATE users SET admin = true WHERE email = 'old-boss@gmail.com'")

    body = await service.browser().sign_in(issuer, email="old-boss@gmail.com", sub="g-1")

    assert body["user"]["admin"] is True
    assert (await user_by_email(db, "old-boss@gmail.com"))["admin"] is True


# --- audit ----------------------------------------------------------------------------------


async def test_sign_in_records_login_ok_with_the_user_and_session(
    browser: Browser, issuer: Issuer, db: asyncpg.Pool
) -> None:
    body = await browser.sign_in(issuer, email="ada@gmail.com")
    session_id = (await (await browser.get("/api/me")).json())["session"]["id"]

    events = await db.fetch(
        "SELECT user_id, ip, user_agent, detail->>'session_id' AS session_id"
        " FROM auth_events WHERE kind = 'login_ok'"
    )

    assert len(events) == 1
    assert events[0]["user_id"] == body["user"]["id"]
    assert events[0]["session_id"] == session_id
    assert events[0]["ip"] == "127.0.0.1"
    assert events[0]["user_agent"].startswith("Mozilla/5.0")


async def test_a_returning_users_one_statement_sign_in_writes_what_the_full_path_writes(
    service: Service, issuer: Issuer, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """service/signins.py signs a returning user in with one statement; a browser that brings
    a session takes the full path. Both write the same user, session and event."""
    took_one_statement: list[bool] = []
    one_statement = signins.sign_in_returning_user

    async def watched(*args: Any, **kwargs: Any) -> Any:
        user = await one_statement(*args, **kwargs)
        took_one_statement.append(user is not None)
        return user

    monkeypatch.setattr(signins, "sign_in_returning_user", watched)
    first = service.browser()
    await first.sign_in(issuer, email="ada@gmail.com", sub="g-1", name="Ada")
    written = {}
    for path, browser in (("one statement", service.browser()), ("full", first)):
        name = f"Ada {path}"
        await browser.sign_in(issuer, email=f"{len(path)}@gmail.com", sub="g-1", name=name)
        user = await db.fetchrow("SELECT * FROM users")
        session = await db.fetchrow(
            "SELECT * FROM sessions WHERE token_hash = sha256($1::text::bytea)",
            browser.cookie("session_id"),
        )
        event = await db.fetchrow(
            "SELECT * FROM auth_events WHERE kind = 'login_ok' ORDER BY id DESC LIMIT 1"
        )
        assert (user["email"], user["name"]) == (f"{len(path)}@gmail.com", name), path
        assert user["last_login_at"] == session["created_at"], path  # one transaction's now()
        assert json.loads(event["detail"]) == {"session_id": str(session["id"])}, path
        assert (event["user_id"], event["email"]) == (user["id"], user["email"]), path
        written[path] = (
            {k: v for k, v in user.items() if k not in ("email", "name", "last_login_at")},
            {k: v for k, v in session.items() if k not in ("id", "token_hash")}
            | {"lifetime": session["expires_at"] - session["created_at"]},
            {k: v for k, v in event.items() if k not in ("id", "detail", "email", "at")},
        )

    # The first sign-in (a new user) and the one bringing a session took the full path.
    assert took_one_statement == [False, True]
    one, full = written["one statement"], written["full"]
    assert one[0] == full[0]
    assert {k: v for k, v in one[1].items() if not k.endswith("_at")} == {
        k: v for k, v in full[1].items() if not k.endswith("_at")
    }
    assert one[2] == full[2]


async def test_a_refused_sign_in_spends_its_nonce_all_the_same(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser = service.browser()
    await browser.sign_in(issuer, email="ada@gmail.com")
    await db.execute("UPDATE users SET disabled = true")
    nonce = await browser.new_nonce()
    credential = issuer.token(email="ada@gmail.com", nonce=nonce)

    refused = await browser.post("/api/login", json={"credential": credential})
    await assert_error(refused, 403, "user_disabled")
    # Enabled again, the same token cannot be tried a second time.
    await db.execute("UPDATE users SET disabled = false")
    again = await browser.post("/api/login", json={"credential": credential})

    await assert_error(again, 401, "nonce_replayed")
