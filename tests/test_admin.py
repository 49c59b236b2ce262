"""The admin API at /api/admin: users, everyone's sessions and the audit log, for admins only."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from service import audit
from service.users import ADMIN_CHANGES_LOCK
from tests.conftest import Browser, Service
from tests.issuer import Issuer

BOSS = "boss@gmail.com"
HUGE = "9" * 5000  # more digits than int() parses by default
USER_FIELDS = {
    "id",
    "email",
    "username",
    "name",
    "picture",
    "admin",
    "disabled",
    "linked",
    "created_at",
    "last_login_at",
    "live_sessions",
}
SESSION_FIELDS = {
    "id",
    "created_at",
    "last_seen_at",
    "expires_at",
    "ip",
    "user_agent",
    "user_id",
    "email",
}
EVENT_FIELDS = {"id", "at", "kind", "user_id", "email", "ip", "user_agent", "detail"}


# --- helpers --------------------------------------------------------------------------------


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    """A JSON error answer with exactly `error` and `message`."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]


async def sign_in(
    service: Service, issuer: Issuer, email: str, **claims: Any
) -> tuple[Browser, int]:
    """A new browser signed in as `email`, and the user's id."""
    browser = service.browser()
    body = await browser.sign_in(issuer, email=email, **claims)
    return browser, body["user"]["id"]


async def attempt_sign_in(
    browser: Browser, issuer: Issuer, email: str, **claims: Any
) -> aiohttp.ClientResponse:
    nonce = await browser.new_nonce()
    return await browser.post(
        "/api/login", json={"credential": issuer.token(email=email, nonce=nonce, **claims)}
    )


async def user_row(db: asyncpg.Pool, user_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    return row


async def sessions_of(db: asyncpg.Pool, user_id: int) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", user_id)
    return count


async def events(db: asyncpg.Pool, kind: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT user_id, detail->>'target_user_id' AS target FROM auth_events"
        " WHERE kind = $1 ORDER BY id",
        kind,
    )


async def session_id_of(browser: Browser) -> str:
    response = await browser.get("/api/me")
    assert response.status == 200, await response.text()
    session_id: str = (await response.json())["session"]["id"]
    return session_id


@pytest.fixture
async def boss(service: Service, issuer: Issuer, db: asyncpg.Pool) -> tuple[Browser, int]:
    """A browser signed in as an administrator, and the administrator's id."""
    browser, boss_id = await sign_in(service, issuer, BOSS)
    await db.execute("UPDATE users SET admin = true WHERE id = $1", boss_id)
    return browser, boss_id


@pytest.fixture
def admin(boss: tuple[Browser, int]) -> Browser:
    return boss[0]


# --- who may use it -------------------------------------------------------------------------

EVERY_ENDPOINT = [
    ("GET", "/api/admin/users", None),
    ("POST", "/api/admin/users", {"email": "new@gmail.com"}),
    ("PATCH", "/api/admin/users/1", {"disabled": True}),
    ("DELETE", "/api/admin/users/1", None),
    ("POST", "/api/admin/users/1/revoke-sessions", None),
    ("GET", "/api/admin/sessions", None),
    ("DELETE", f"/api/admin/sessions/{uuid.uuid4()}", None),
    ("GET", "/api/admin/audit", None),
    ("GET", "/api/admin/audit/kinds", None),
    ("GET", "/api/admin/status", None),
]


@pytest.mark.parametrize(("method", "path", "body"), EVERY_ENDPOINT)
async def test_admin_api_without_a_session_is_not_signed_in(
    browser: Browser, method: str, path: str, body: Any
) -> None:
    response = await browser.request(method, path, json=body)

    await assert_error(response, 401, "not_signed_in")


@pytest.mark.parametrize(("method", "path", "body"), EVERY_ENDPOINT)
async def test_admin_api_refuses_a_signed_in_non_admin(
    service: Service, issuer: Issuer, db: asyncpg.Pool, method: str, path: str, body: Any
) -> None:
    browser, user_id = await sign_in(service, issuer, "worker@gmail.com")
    assert user_id == 1  # the target of the paths above: the worker themself
    before = await db.fetchval("SELECT count(*) FROM auth_events")

    response = await browser.request(method, path, json=body)

    await assert_error(response, 403, "admin_only")
    row = await user_row(db, user_id)
    assert row is not None and not row["disabled"] and not row["admin"]
    assert await sessions_of(db, user_id) == 1
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM auth_events") == before


async def test_admin_api_refuses_a_disabled_admin(
    boss: tuple[Browser, int], db: asyncpg.Pool
) -> None:
    browser, boss_id = boss
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", boss_id)

    response = await browser.get("/api/admin/users")

    await assert_error(response, 403, "user_disabled")


async def test_admin_emails_config_grants_the_admin_api(start_service: Any, issuer: Issuer) -> None:
    service = await start_service(admin_emails=frozenset({BOSS}))
    browser, _ = await sign_in(service, issuer, BOSS)

    response = await browser.get("/api/admin/users")

    assert response.status == 200, await response.text()
    assert (await response.json())["total"] == 1


@pytest.mark.parametrize("origin", [None, "https://evil.example"])
async def test_unsafe_admin_requests_from_another_site_are_refused_as_csrf(
    service: Service,
    issuer: Issuer,
    admin: Browser,
    db: asyncpg.Pool,
    origin: str | None,
) -> None:
    victim, victim_id = await sign_in(service, issuer, "victim@gmail.com")
    session_id = await session_id_of(victim)
    attempts = [
        ("POST", "/api/admin/users", {"email": "new@gmail.com"}),
        ("PATCH", f"/api/admin/users/{victim_id}", {"disabled": True, "admin": True}),
        ("DELETE", f"/api/admin/users/{victim_id}", None),
        ("POST", f"/api/admin/users/{victim_id}/revoke-sessions", None),
        ("DELETE", f"/api/admin/sessions/{session_id}", None),
    ]

    for method, path, body in attempts:
        response = await admin.request(method, path, json=body, origin=origin)
        await assert_error(response, 403, "csrf")

    row = await user_row(db, victim_id)
    assert row is not None and not row["disabled"] and not row["admin"]
    assert await sessions_of(db, victim_id) == 1
    assert await db.fetchval("SELECT count(*) FROM users") == 2
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind LIKE 'admin%'") == 0


# --- listing users --------------------------------------------------------------------------


async def test_list_users_shows_every_field_and_the_total(
    boss: tuple[Browser, int], service: Service, issuer: Issuer
) -> None:
    admin, boss_id = boss
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com", name="Ada")

    response = await admin.get("/api/admin/users")

    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"results", "total"}
    assert body["total"] == 2
    assert [u["id"] for u in body["results"]] == [boss_id, ada_id]
    ada = body["results"][1]
    assert set(ada) == USER_FIELDS
    assert ada["email"] == ada["username"] == "ada@gmail.com"
    assert ada["name"] == "Ada"
    assert ada["picture"] == "https://example.com/picture.png"
    assert ada["admin"] is False
    assert ada["disabled"] is False
    assert ada["linked"] is True
    assert ada["created_at"] and ada["last_login_at"]
    assert ada["live_sessions"] == 1
    assert body["results"][0]["admin"] is True


async def test_list_users_counts_only_live_sessions(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "ada@gmail.com")
    ids = [r["id"] for r in await db.fetch("SELECT id FROM sessions WHERE user_id = $1", ada_id)]
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", ids[0]
    )
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '2 hours' WHERE id = $1", ids[1]
    )

    body = await (await admin.get("/api/admin/users?query=ada")).json()

    assert [u["live_sessions"] for u in body["results"]] == [1]


async def test_list_users_query_matches_email_or_name_case_insensitively(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    await sign_in(service, issuer, "ada@gmail.com", name="Ada Lovelace")
    await sign_in(service, issuer, "grace@gmail.com", name="Grace Hopper")
    await sign_in(service, issuer, "alan@gmail.com", name="Alan Turing")

    async def emails(query: str) -> tuple[list[str], int]:
        response = await admin.get("/api/admin/users", params={"query": query})
        assert response.status == 200, await response.text()
        body = await response.json()
        return [u["email"] for u in body["results"]], body["total"]

    assert await emails("GRACE@") == (["grace@gmail.com"], 1)
    assert await emails("lovelace") == (["ada@gmail.com"], 1)
    assert await emails("TUR") == (["alan@gmail.com"], 1)
    assert await emails("ACE") == (["ada@gmail.com", "grace@gmail.com"], 2)
    assert await emails("nobody") == ([], 0)
    assert (await emails(""))[1] == 4


async def test_list_users_query_treats_percent_and_underscore_literally(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    await sign_in(service, issuer, "a_b@gmail.com", name="Fifty% Off")
    await sign_in(service, issuer, "axb@gmail.com", name="Fifty Percent")

    async def emails(query: str) -> list[str]:
        response = await admin.get("/api/admin/users", params={"query": query})
        assert response.status == 200, await response.text()
        return [u["email"] for u in (await response.json())["results"]]

    assert await emails("a_b") == ["a_b@gmail.com"]
    assert await emails("%") == ["a_b@gmail.com"]
    assert await emails("y% o") == ["a_b@gmail.com"]
    assert await emails("_") == ["a_b@gmail.com"]
    assert await emails("\\") == []


async def test_list_users_query_matches_unicode_names(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    await sign_in(service, issuer, "zoe@gmail.com", name="Zoë Ōkubo 李")
    await sign_in(service, issuer, "zed@gmail.com", name="Zed")

    response = await admin.get("/api/admin/users", params={"query": "ë Ōk"})

    assert response.status == 200, await response.text()
    assert [u["email"] for u in (await response.json())["results"]] == ["zoe@gmail.com"]
    response = await admin.get("/api/admin/users", params={"query": "李"})
    assert [u["email"] for u in (await response.json())["results"]] == ["zoe@gmail.com"]


async def test_list_users_pages_with_offset_and_limit(
    boss: tuple[Browser, int], service: Service, issuer: Issuer
) -> None:
    admin, boss_id = boss
    ids = [boss_id]
    for n in range(4):
        ids.append((await sign_in(service, issuer, f"user{n}@gmail.com"))[1])

    seen = []
    for offset in (0, 2, 4):
        response = await admin.get(f"/api/admin/users?offset={offset}&limit=2")
        body = await response.json()
        assert body["total"] == 5
        seen += [u["id"] for u in body["results"]]

    assert seen == ids


async def test_list_users_past_the_last_page_is_empty_but_keeps_the_total(admin: Browser) -> None:
    response = await admin.get("/api/admin/users?offset=10&limit=5")

    assert response.status == 200, await response.text()
    assert await response.json() == {"results": [], "total": 1}


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1",
        "offset=x",
        "offset=1.5",
        "offset=%2B1",
        "offset=%D9%A3",  # an Arabic-Indic digit
        f"offset={2**62 + 1}",
        "limit=0",
        "limit=501",
        "limit=-5",
        "limit=ten",
        f"limit={HUGE}",
        f"offset={HUGE}",
        "query=" + "q" * 201,
    ],
)
async def test_list_users_refuses_bad_paging(admin: Browser, query: str) -> None:
    response = await admin.get(f"/api/admin/users?{query}")

    assert response.status == 400, await response.text()
    assert set(await response.json()) == {"error", "message"}


# --- creating users -------------------------------------------------------------------------


async def test_create_user_returns_201_with_an_unlinked_user(
    admin: Browser, db: asyncpg.Pool
) -> None:
    response = await admin.post(
        "/api/admin/users", json={"email": "new@example.com", "name": "Newt", "admin": False}
    )

    assert response.status == 201, await response.text()
    user = await response.json()
    assert set(user) == USER_FIELDS
    assert user["email"] == "new@example.com"
    assert user["name"] == "Newt"
    assert user["admin"] is False
    assert user["disabled"] is False
    assert user["linked"] is False
    assert user["last_login_at"] is None
    assert user["live_sessions"] == 0
    row = await user_row(db, user["id"])
    assert row is not None
    assert (row["email"], row["name"], row["google_sub"]) == ("new@example.com", "Newt", None)


async def test_create_user_needs_only_an_email(admin: Browser) -> None:
    response = await admin.post("/api/admin/users", json={"email": "plain@gmail.com"})

    assert response.status == 201, await response.text()
    user = await response.json()
    assert (user["name"], user["admin"]) == ("", False)


async def test_pre_provisioned_gmail_user_signs_in_with_the_same_id(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    created = await (await admin.post("/api/admin/users", json={"email": "ada@gmail.com"})).json()

    _, signed_in_id = await sign_in(service, issuer, "ada@gmail.com", name="Ada")

    assert signed_in_id == created["id"]
    row = await user_row(db, created["id"])
    assert row is not None
    assert (row["google_sub"], row["name"]) == ("sub-ada@gmail.com", "Ada")
    assert await db.fetchval("SELECT count(*) FROM users") == 2


async def test_pre_provisioned_workspace_user_signs_in_with_hd_with_the_same_id(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    response = await admin.post(
        "/api/admin/users", json={"email": "Grace@Example.com", "name": "Grace"}
    )
    created = await response.json()

    _, signed_in_id = await sign_in(service, issuer, "grace@example.com", hd="example.com")

    assert signed_in_id == created["id"]
    listed = await (await admin.get("/api/admin/users?query=grace")).json()
    assert listed["results"][0]["linked"] is True
    assert listed["results"][0]["live_sessions"] == 1


async def test_pre_provisioned_workspace_user_is_not_claimed_without_hd(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    created = await (await admin.post("/api/admin/users", json={"email": "eve@example.com"})).json()

    response = await attempt_sign_in(service.browser(), issuer, "eve@example.com")

    await assert_error(response, 409, "account_conflict")
    row = await user_row(db, created["id"])
    assert row is not None and row["google_sub"] is None


async def test_pre_provisioned_admin_signs_in_as_admin(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    response = await admin.post("/api/admin/users", json={"email": "ops@gmail.com", "admin": True})
    assert response.status == 201, await response.text()
    assert (await response.json())["admin"] is True

    ops, _ = await sign_in(service, issuer, "ops@gmail.com")

    assert (await ops.get("/api/admin/users")).status == 200


@pytest.mark.parametrize("email", ["ada@gmail.com", "ADA@GMAIL.COM", " Ada@gmail.com "])
async def test_create_user_with_an_existing_email_is_user_exists(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool, email: str
) -> None:
    await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.post("/api/admin/users", json={"email": email})

    await assert_error(response, 409, "user_exists")
    assert await db.fetchval("SELECT count(*) FROM users") == 2
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind LIKE 'admin%'") == 0


@pytest.mark.parametrize(
    "email",
    [None, "", "   ", "not-an-email", "two@@gmail.com", "@gmail.com", "a@", 42, ["a@gmail.com"]],
)
async def test_create_user_refuses_an_invalid_email(
    admin: Browser, db: asyncpg.Pool, email: Any
) -> None:
    response = await admin.post("/api/admin/users", json={"email": email})

    await assert_error(response, 400, "invalid_email")
    assert await db.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize("value", ["true", 1, 0, "yes", [], {}])
async def test_create_user_refuses_a_non_bool_admin(
    admin: Browser, db: asyncpg.Pool, value: Any
) -> None:
    response = await admin.post("/api/admin/users", json={"email": "x@gmail.com", "admin": value})

    await assert_error(response, 400, "invalid_admin")
    assert await db.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"data": b""}, "bad_content_type"),
        ({"data": b"", "headers": {"Content-Type": "application/json"}}, "bad_json"),
        ({"data": b"{", "headers": {"Content-Type": "application/json"}}, "bad_json"),
        ({"json": []}, "bad_json"),
        ({"json": "ada@gmail.com"}, "bad_json"),
        ({"data": b"null", "headers": {"Content-Type": "application/json"}}, "bad_json"),
    ],
)
async def test_create_user_refuses_a_body_that_is_not_a_json_object(
    admin: Browser, db: asyncpg.Pool, kwargs: dict[str, Any], code: str
) -> None:
    response = await admin.post("/api/admin/users", **kwargs)

    await assert_error(response, 400, code)
    assert await db.fetchval("SELECT count(*) FROM users") == 1


# --- updating users -------------------------------------------------------------------------


async def test_disabling_a_user_signs_them_out_everywhere(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    phone, _ = await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True})

    assert response.status == 200, await response.text()
    user = await response.json()
    assert set(user) == USER_FIELDS
    assert (user["id"], user["disabled"], user["live_sessions"]) == (ada_id, True, 0)
    assert await sessions_of(db, ada_id) == 0
    await assert_error(await laptop.get("/api/user"), 401, "not_signed_in")
    await assert_error(await phone.get("/api/me"), 401, "not_signed_in")


async def test_a_disabled_user_cannot_sign_in_again(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True})

    response = await attempt_sign_in(browser, issuer, "ada@gmail.com")

    await assert_error(response, 403, "user_disabled")
    assert await sessions_of(db, ada_id) == 0


async def test_re_enabling_a_user_lets_them_sign_in_again(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True})

    response = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": False})

    assert response.status == 200, await response.text()
    assert (await response.json())["disabled"] is False
    body = await browser.sign_in(issuer, email="ada@gmail.com")
    assert body["user"]["id"] == ada_id
    assert (await browser.get("/api/user")).status == 200


async def test_promoting_a_user_opens_the_admin_api_to_them(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await assert_error(await browser.get("/api/admin/users"), 403, "admin_only")

    response = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"admin": True})

    assert response.status == 200, await response.text()
    user = await response.json()
    assert (user["admin"], user["disabled"], user["live_sessions"]) == (True, False, 1)
    assert (await browser.get("/api/admin/users")).status == 200


async def test_a_demoted_admin_is_refused_at_their_next_request(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    other, other_id = await sign_in(service, issuer, "other-boss@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE id = $1", other_id)
    assert (await other.get("/api/admin/users")).status == 200

    response = await admin.request("PATCH", f"/api/admin/users/{other_id}", json={"admin": False})

    assert response.status == 200, await response.text()
    assert (await response.json())["admin"] is False
    await assert_error(await other.get("/api/admin/users"), 403, "admin_only")
    assert (await other.get("/api/user")).status == 200  # still signed in, just not an admin


@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"disabled": True}), ("PATCH", {"admin": False}), ("DELETE", None)],
)
async def test_two_admins_acting_on_each_other_at_once_cannot_both_succeed(
    boss: tuple[Browser, int],
    service: Service,
    issuer: Issuer,
    db: asyncpg.Pool,
    method: str,
    body: dict[str, bool] | None,
) -> None:
    ada, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    bob, bob_id = await sign_in(service, issuer, "bob@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE id = ANY($1::bigint[])", [ada_id, bob_id])

    responses = await asyncio.gather(
        ada.request(method, f"/api/admin/users/{bob_id}", json=body),
        bob.request(method, f"/api/admin/users/{ada_id}", json=body),
    )

    assert sorted(r.status for r in responses) in ([200, 403], [204, 403])
    refused = next(r for r in responses if r.status == 403)
    await assert_error(refused, 403, "admin_only")
    # Refused by the check under the lock, not by the one at the start of the request.
    assert "no longer" in (await refused.json())["message"]
    # Exactly one of them acted, and the audit log says so.
    still_admins = await db.fetchval(
        "SELECT count(*) FROM users WHERE id = ANY($1::bigint[]) AND admin AND NOT disabled",
        [ada_id, bob_id],
    )
    assert still_admins == 1
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind LIKE 'admin_user%'") == 1


async def test_an_admin_signed_out_while_a_change_waits_cannot_make_it(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE id = $1", ada_id)
    _, carl_id = await sign_in(service, issuer, "carl@gmail.com")

    # Ada's change waits for the admin lock; meanwhile her session is revoked by SQL.
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_CHANGES_LOCK)
        change = asyncio.create_task(
            ada.request("PATCH", f"/api/admin/users/{carl_id}", json={"disabled": True})
        )
        await wait_for_lock_waiters(db)
        await holder.execute("DELETE FROM sessions WHERE user_id = $1", ada_id)

    await assert_error(await change, 403, "admin_only")
    assert (await user_row(db, carl_id))["disabled"] is False  # type: ignore[index]


async def wait_for_lock_waiters(db: asyncpg.Pool) -> None:
    for _ in range(500):
        if await db.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing ever waited for a lock")


async def test_updating_both_flags_at_once(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.request(
        "PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True, "admin": True}
    )

    assert response.status == 200, await response.text()
    row = await user_row(db, ada_id)
    assert row is not None and row["disabled"] and row["admin"]


async def test_an_empty_update_changes_nothing(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={})

    assert response.status == 200, await response.text()
    user = await response.json()
    assert (user["disabled"], user["admin"], user["live_sessions"]) == (False, False, 1)
    assert await sessions_of(db, ada_id) == 1


@pytest.mark.parametrize(
    "body", [{"disabled": True}, {"admin": False}, {"disabled": True, "admin": False}]
)
async def test_an_admin_cannot_disable_or_demote_themself(
    boss: tuple[Browser, int], db: asyncpg.Pool, body: dict[str, bool]
) -> None:
    admin, boss_id = boss

    response = await admin.request("PATCH", f"/api/admin/users/{boss_id}", json=body)

    await assert_error(response, 409, "cannot_change_self")
    row = await user_row(db, boss_id)
    assert row is not None and row["admin"] and not row["disabled"]
    assert await sessions_of(db, boss_id) == 1
    assert (await admin.get("/api/admin/users")).status == 200
    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind LIKE 'admin%'") == 0


async def test_an_admin_may_confirm_their_own_flags(boss: tuple[Browser, int]) -> None:
    admin, boss_id = boss

    response = await admin.request(
        "PATCH", f"/api/admin/users/{boss_id}", json={"disabled": False, "admin": True}
    )

    assert response.status == 200, await response.text()
    assert (await response.json())["live_sessions"] == 1


@pytest.mark.parametrize(
    "user_id", ["999999", "0", "-1", "abc", "1e3", "%D9%A3", str(2**63), HUGE, "1.0"]
)
async def test_updating_an_unknown_user_is_not_found(admin: Browser, user_id: str) -> None:
    response = await admin.request("PATCH", f"/api/admin/users/{user_id}", json={"admin": True})

    await assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"disabled": "true"}, "invalid_disabled"),
        ({"disabled": 1}, "invalid_disabled"),
        ({"admin": "false"}, "invalid_admin"),
        ({"admin": 0}, "invalid_admin"),
        ({"disabled": True, "admin": []}, "invalid_admin"),
    ],
)
async def test_updating_with_a_non_bool_is_refused_and_changes_nothing(
    admin: Browser,
    service: Service,
    issuer: Issuer,
    db: asyncpg.Pool,
    body: dict[str, Any],
    code: str,
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.request("PATCH", f"/api/admin/users/{ada_id}", json=body)

    await assert_error(response, 400, code)
    row = await user_row(db, ada_id)
    assert row is not None and not row["disabled"] and not row["admin"]
    assert await sessions_of(db, ada_id) == 1


# --- deleting users -------------------------------------------------------------------------


async def test_deleting_a_user_ends_their_sessions(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    response = await admin.request("DELETE", f"/api/admin/users/{ada_id}")

    assert response.status == 204, await response.text()
    assert await user_row(db, ada_id) is None
    assert await sessions_of(db, ada_id) == 0
    await assert_error(await browser.get("/api/user"), 401, "not_signed_in")
    listed = await (await admin.get("/api/admin/users")).json()
    assert ada_id not in [u["id"] for u in listed["results"]]


async def test_a_deleted_user_signing_in_again_is_a_new_user(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await admin.request("DELETE", f"/api/admin/users/{ada_id}")

    body = await browser.sign_in(issuer, email="ada@gmail.com")

    assert body["user"]["id"] != ada_id


async def test_an_admin_cannot_delete_themself(boss: tuple[Browser, int], db: asyncpg.Pool) -> None:
    admin, boss_id = boss

    response = await admin.request("DELETE", f"/api/admin/users/{boss_id}")

    await assert_error(response, 409, "cannot_change_self")
    assert await user_row(db, boss_id) is not None
    assert (await admin.get("/api/admin/users")).status == 200


@pytest.mark.parametrize("user_id", ["999999", "0", "abc", str(2**63), HUGE])
async def test_deleting_an_unknown_user_is_not_found(
    admin: Browser, db: asyncpg.Pool, user_id: str
) -> None:
    response = await admin.request("DELETE", f"/api/admin/users/{user_id}")

    await assert_error(response, 404, "not_found")
    assert await db.fetchval("SELECT count(*) FROM users") == 1


# --- sessions -------------------------------------------------------------------------------


async def test_list_sessions_shows_everyones_live_sessions(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    ada_session = await session_id_of(browser)
    _, bob_id = await sign_in(service, issuer, "bob@gmail.com")
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", bob_id
    )

    response = await admin.get("/api/admin/sessions")

    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"results", "total"}
    assert body["total"] == 2
    assert {s["user_id"] for s in body["results"]} == {boss_id, ada_id}
    ada = next(s for s in body["results"] if s["user_id"] == ada_id)
    assert set(ada) == SESSION_FIELDS
    assert ada["id"] == ada_session
    assert ada["email"] == "ada@gmail.com"
    assert ada["ip"] == "127.0.0.1"
    assert ada["user_agent"].startswith("Mozilla/5.0")


async def test_list_sessions_leaves_out_idle_sessions(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '2 hours' WHERE user_id = $1", ada_id
    )

    body = await (await admin.get("/api/admin/sessions")).json()

    assert body["total"] == 1
    assert ada_id not in [s["user_id"] for s in body["results"]]


async def test_list_sessions_filters_by_user(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "bob@gmail.com")

    body = await (await admin.get(f"/api/admin/sessions?user_id={ada_id}")).json()

    assert body["total"] == 2
    assert [s["user_id"] for s in body["results"]] == [ada_id, ada_id]
    none = await (await admin.get("/api/admin/sessions?user_id=999999")).json()
    assert none == {"results": [], "total": 0}


async def test_list_sessions_pages_newest_first(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    for n in range(4):
        await sign_in(service, issuer, f"user{n}@gmail.com")
    newest_first = [
        str(r["id"]) for r in await db.fetch("SELECT id FROM sessions ORDER BY created_at DESC")
    ]

    seen = []
    for offset in (0, 2, 4, 6):
        body = await (await admin.get(f"/api/admin/sessions?offset={offset}&limit=2")).json()
        assert body["total"] == 5
        seen += [s["id"] for s in body["results"]]

    assert seen == newest_first


@pytest.mark.parametrize(
    "query", ["user_id=0", "user_id=x", "user_id=-1", f"user_id={2**63}", "limit=0", "offset=-1"]
)
async def test_list_sessions_refuses_bad_parameters(admin: Browser, query: str) -> None:
    response = await admin.get(f"/api/admin/sessions?{query}")

    assert response.status == 400, await response.text()
    assert set(await response.json()) == {"error", "message"}


async def test_revoking_a_session_signs_out_that_browser_only(
    admin: Browser, service: Service, issuer: Issuer
) -> None:
    laptop, _ = await sign_in(service, issuer, "ada@gmail.com")
    phone, _ = await sign_in(service, issuer, "ada@gmail.com")
    laptop_session = await session_id_of(laptop)

    response = await admin.request("DELETE", f"/api/admin/sessions/{laptop_session}")

    assert response.status == 204, await response.text()
    await assert_error(await laptop.get("/api/user"), 401, "not_signed_in")
    assert (await phone.get("/api/user")).status == 200
    again = await admin.request("DELETE", f"/api/admin/sessions/{laptop_session}")
    await assert_error(again, 404, "not_found")


@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "not-a-uuid", "1", HUGE, "%00"])
async def test_revoking_an_unknown_session_is_not_found(
    admin: Browser, db: asyncpg.Pool, session_id: str
) -> None:
    response = await admin.request("DELETE", f"/api/admin/sessions/{session_id}")

    await assert_error(response, 404, "not_found")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_revoking_a_users_sessions_signs_them_out_and_counts(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    laptop, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    phone, _ = await sign_in(service, issuer, "ada@gmail.com")
    bob, _ = await sign_in(service, issuer, "bob@gmail.com")

    response = await admin.post(f"/api/admin/users/{ada_id}/revoke-sessions")

    assert response.status == 200, await response.text()
    assert await response.json() == {"revoked": 2}
    await assert_error(await laptop.get("/api/user"), 401, "not_signed_in")
    await assert_error(await phone.get("/api/user"), 401, "not_signed_in")
    assert (await bob.get("/api/user")).status == 200
    row = await user_row(db, ada_id)
    assert row is not None and not row["disabled"]  # they may sign in again
    again = await admin.post(f"/api/admin/users/{ada_id}/revoke-sessions")
    assert await again.json() == {"revoked": 0}


@pytest.mark.parametrize("user_id", ["999999", "0", "abc", str(2**63), HUGE])
async def test_revoking_sessions_of_an_unknown_user_is_not_found(
    admin: Browser, user_id: str
) -> None:
    response = await admin.post(f"/api/admin/users/{user_id}/revoke-sessions")

    await assert_error(response, 404, "not_found")


# --- audit log ------------------------------------------------------------------------------


async def add_events(db: asyncpg.Pool, user_id: int | None, kind: str, count: int) -> None:
    """`count` events in one statement, so they share one `at`."""
    await db.execute(
        "INSERT INTO auth_events (kind, user_id, detail)"
        " SELECT $1, $2, jsonb_build_object('n', n) FROM generate_series(1, $3) n",
        kind,
        user_id,
        count,
    )


async def test_audit_lists_events_newest_first_with_every_field(
    boss: tuple[Browser, int], db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    await add_events(db, None, "test_event", 2)

    response = await admin.get("/api/admin/audit")

    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"results", "next_before"}
    assert body["next_before"] is None
    assert [e["id"] for e in body["results"]] == [3, 2, 1]
    assert [e["kind"] for e in body["results"]] == ["test_event", "test_event", "login_ok"]
    login = body["results"][2]
    assert set(login) == EVENT_FIELDS
    assert (login["user_id"], login["email"], login["ip"]) == (boss_id, BOSS, "127.0.0.1")
    assert login["user_agent"].startswith("Mozilla/5.0")
    assert login["at"]
    assert set(login["detail"]) == {"session_id"}
    assert body["results"][0]["detail"] == {"n": 2}
    assert body["results"][0]["user_id"] is None and body["results"][0]["email"] is None


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 8, 9, 500])
async def test_audit_pages_visit_every_event_once_in_order(
    admin: Browser, db: asyncpg.Pool, limit: int
) -> None:
    await add_events(db, None, "test_event", 7)  # 8 events with the admin's login
    expected = [r["id"] for r in await db.fetch("SELECT id FROM auth_events ORDER BY id DESC")]
    assert len(expected) == 8

    seen: list[int] = []
    before: int | None = None
    for _ in range(20):
        query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
        response = await admin.get(f"/api/admin/audit{query}")
        assert response.status == 200, await response.text()
        body = await response.json()
        assert len(body["results"]) <= limit
        seen += [e["id"] for e in body["results"]]
        before = body["next_before"]
        if before is None:
            break

    assert before is None
    assert seen == expected


async def test_audit_filters_by_user_and_kind(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await browser.post("/api/logout")
    await sign_in(service, issuer, "bob@gmail.com")

    async def kinds(query: str) -> list[tuple[str, int | None]]:
        response = await admin.get(f"/api/admin/audit?{query}")
        assert response.status == 200, await response.text()
        return [(e["kind"], e["user_id"]) for e in (await response.json())["results"]]

    assert await kinds(f"user_id={ada_id}") == [("logout", ada_id), ("login_ok", ada_id)]
    assert await kinds(f"user_id={ada_id}&kind=logout") == [("logout", ada_id)]
    assert [k for k, _ in await kinds("kind=login_ok")] == ["login_ok"] * 3
    assert await kinds("user_id=999999") == []
    unknown = await admin.get("/api/admin/audit?kind=no_such_kind")
    await assert_error(unknown, 400, "invalid_kind")


async def test_audit_finds_a_persons_events_by_email_in_any_case(
    boss: tuple[Browser, int], service: Service, issuer: Issuer
) -> None:
    admin, boss_id = boss
    ada, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await ada.post("/api/logout")
    await sign_in(service, issuer, "bob@gmail.com")
    await admin.post(f"/api/admin/users/{ada_id}/revoke-sessions")

    async def found(query: str) -> list[tuple[str, int | None]]:
        response = await admin.get("/api/admin/audit", params=query)
        assert response.status == 200, await response.text()
        return [(e["kind"], e["user_id"]) for e in (await response.json())["results"]]

    assert await found("user_email=ADA@gmail.com") == [("logout", ada_id), ("login_ok", ada_id)]
    assert await found("user_email=ada@gmail.com&kind=logout") == [("logout", ada_id)]
    # The admin who revoked Ada's sessions acted: the event is the admin's, not Ada's.
    assert [k for k, _ in await found(f"user_email={BOSS}")] == [
        "admin_sessions_revoked",
        "login_ok",
    ]
    assert await found("user_email=nobody@gmail.com") == []
    assert await found(f"user_email=ada@gmail.com&user_id={boss_id}") == []


async def test_audit_by_email_includes_the_failed_sign_ins_that_tried_it(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, eve_id = await sign_in(service, issuer, "eve@gmail.com")
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", eve_id)
    refused = await attempt_sign_in(
        service.browser(), issuer, "Eve@gmail.com", sub="sub-eve@gmail.com"
    )
    await assert_error(refused, 403, "user_disabled")
    await attempt_sign_in(service.browser(), issuer, "mallory@gmail.com", aud="other")

    body = await (await admin.get("/api/admin/audit?user_email=eve@gmail.com")).json()

    assert [e["kind"] for e in body["results"]] == ["login_failed", "login_ok"]
    assert body["results"][0]["detail"]["error"] == "user_disabled"


async def test_audit_by_email_finds_a_user_by_the_address_they_have_now(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    ada, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await ada.post("/api/logout")
    await db.execute("UPDATE users SET email = 'ada@example.com' WHERE id = $1", ada_id)

    async def kinds_for(**params: Any) -> list[str]:
        response = await admin.get("/api/admin/audit", params=params)
        assert response.status == 200, await response.text()
        return [e["kind"] for e in (await response.json())["results"]]

    assert await kinds_for(user_email="ada@example.com") == ["logout", "login_ok"]
    assert await kinds_for(user_email="ada@gmail.com") == []
    # A deleted user has no address: their events are found by their id, and the deletion,
    # which names the address, by the address.
    await admin.request("DELETE", f"/api/admin/users/{ada_id}")
    assert await kinds_for(user_email="ada@example.com") == ["admin_user_deleted"]
    assert await kinds_for(user_id=ada_id) == ["logout", "login_ok"]


async def test_audit_kinds_are_every_kind_the_service_records(admin: Browser) -> None:
    response = await admin.get("/api/admin/audit/kinds")

    assert response.status == 200, await response.text()
    assert await response.json() == {"kinds": list(audit.KINDS)}


async def test_audit_filters_page_by_before(admin: Browser, db: asyncpg.Pool) -> None:
    await add_events(db, None, "logout", 3)
    await add_events(db, None, "session_revoked", 3)
    ids_of_a = [
        r["id"]
        for r in await db.fetch("SELECT id FROM auth_events WHERE kind = 'logout' ORDER BY id DESC")
    ]

    first = await (await admin.get("/api/admin/audit?kind=logout&limit=2")).json()
    second = await (
        await admin.get(f"/api/admin/audit?kind=logout&limit=2&before={first['next_before']}")
    ).json()

    assert [e["id"] for e in first["results"] + second["results"]] == ids_of_a
    assert second["next_before"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=x",
        "before=0",
        "before=-3",
        f"before={2**63}",
        f"before={HUGE}",
        "user_id=abc",
        "kind=" + "k" * 65,
        "user_email=" + "e" * 255,
        "user_email=a%00b",
    ],
)
async def test_audit_refuses_bad_parameters(admin: Browser, query: str) -> None:
    response = await admin.get(f"/api/admin/audit?{query}")

    assert response.status == 400, await response.text()
    assert set(await response.json()) == {"error", "message"}


# --- admin actions are audited --------------------------------------------------------------


async def test_creating_a_user_is_audited(boss: tuple[Browser, int], db: asyncpg.Pool) -> None:
    admin, boss_id = boss

    created = await (await admin.post("/api/admin/users", json={"email": "new@gmail.com"})).json()

    assert [tuple(e) for e in await events(db, "admin_user_created")] == [
        (boss_id, str(created["id"]))
    ]


async def test_updating_a_user_is_audited(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"disabled": True})

    assert [tuple(e) for e in await events(db, "admin_user_updated")] == [(boss_id, str(ada_id))]
    revoked = await db.fetchval(
        "SELECT detail->>'sessions_revoked' FROM auth_events WHERE kind = 'admin_user_updated'"
    )
    assert revoked == "1"


async def test_deleting_a_user_is_audited(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    await admin.request("DELETE", f"/api/admin/users/{ada_id}")

    assert [tuple(e) for e in await events(db, "admin_user_deleted")] == [(boss_id, str(ada_id))]


async def test_revoking_a_session_is_audited(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    browser, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    session_id = await session_id_of(browser)

    await admin.request("DELETE", f"/api/admin/sessions/{session_id}")

    assert [tuple(e) for e in await events(db, "admin_session_revoked")] == [(boss_id, str(ada_id))]
    recorded = await db.fetchval(
        "SELECT detail->>'session_id' FROM auth_events WHERE kind = 'admin_session_revoked'"
    )
    assert recorded == session_id


async def test_revoking_a_users_sessions_is_audited(
    boss: tuple[Browser, int], service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    admin, boss_id = boss
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")

    await admin.post(f"/api/admin/users/{ada_id}/revoke-sessions")

    assert [tuple(e) for e in await events(db, "admin_sessions_revoked")] == [
        (boss_id, str(ada_id))
    ]


async def test_admin_actions_show_in_the_audit_log_as_the_admins(
    boss: tuple[Browser, int], service: Service, issuer: Issuer
) -> None:
    admin, boss_id = boss
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await admin.request("PATCH", f"/api/admin/users/{ada_id}", json={"admin": True})

    body = await (
        await admin.get(f"/api/admin/audit?user_id={boss_id}&kind=admin_user_updated")
    ).json()

    [event] = body["results"]
    assert (event["user_id"], event["email"]) == (boss_id, BOSS)
    assert event["detail"]["target_user_id"] == ada_id
    assert event["detail"]["admin"] is True


async def test_refused_admin_actions_are_not_audited(
    boss: tuple[Browser, int], db: asyncpg.Pool
) -> None:
    admin, boss_id = boss

    await admin.request("PATCH", "/api/admin/users/999999", json={"disabled": True})
    await admin.request("DELETE", "/api/admin/users/999999")
    await admin.request("DELETE", f"/api/admin/users/{boss_id}")
    await admin.post("/api/admin/users", json={"email": BOSS})
    await admin.request("DELETE", f"/api/admin/sessions/{uuid.uuid4()}")
    await admin.post("/api/admin/users/999999/revoke-sessions")

    assert await db.fetchval("SELECT count(*) FROM auth_events WHERE kind LIKE 'admin%'") == 0


# --- odd inputs never answer 500 ------------------------------------------------------------


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/api/admin/users?query=%00", {}, 400, "invalid_query"),
        ("GET", "/api/admin/users?query=a%00b", {}, 400, "invalid_query"),
        # Bytes that are not UTF-8 are searched for as replacement characters.
        ("GET", "/api/admin/users?query=%FF%FE", {}, 200, None),
        ("GET", "/api/admin/users?query=%ED%A0%80", {}, 200, None),
        ("GET", "/api/admin/users?query=%F0%9F%92%A9", {}, 200, None),
        ("GET", f"/api/admin/users?offset={HUGE}", {}, 400, "invalid_offset"),
        ("GET", f"/api/admin/sessions?user_id={HUGE}", {}, 400, "invalid_user_id"),
        ("GET", f"/api/admin/sessions?offset={HUGE}", {}, 400, "invalid_offset"),
        ("GET", "/api/admin/audit?kind=%00", {}, 400, "invalid_kind"),
        ("GET", "/api/admin/audit?user_email=%00", {}, 400, "invalid_user_email"),
        ("GET", "/api/admin/audit?user_email=%FF%FE", {}, 200, None),
        ("GET", f"/api/admin/audit?user_id={HUGE}", {}, 400, "invalid_user_id"),
        ("PATCH", f"/api/admin/users/{HUGE}", {"json": {"admin": True}}, 404, "not_found"),
        ("PATCH", "/api/admin/users/1", {}, 400, "bad_content_type"),
        ("PATCH", "/api/admin/users/1", {"data": b"\xff", "headers": JSON}, 400, "bad_json"),
        ("PATCH", "/api/admin/users/1", {"json": [1] * 10}, 400, "bad_json"),
        (
            "PATCH",
            "/api/admin/users/1",
            {"data": b"[" * 100_000, "headers": JSON},
            413,
            "payload_too_large",
        ),
        ("DELETE", f"/api/admin/users/{HUGE}", {}, 404, "not_found"),
        ("POST", f"/api/admin/users/{HUGE}/revoke-sessions", {}, 404, "not_found"),
        ("POST", "/api/admin/users", {}, 400, "bad_content_type"),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "a\u0000b@gmail.com"}},
            400,
            "invalid_email",
        ),
        ("POST", "/api/admin/users", {"json": {"email": "\ud800@gmail.com"}}, 400, "invalid_email"),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "x" * 300 + "@gmail.com"}},
            400,
            "invalid_email",
        ),
        # An internationalised address is a valid one.
        ("POST", "/api/admin/users", {"json": {"email": "ünïcødé@bücher.example"}}, 201, None),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "nul@gmail.com", "name": "a\u0000b"}},
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "sur@gmail.com", "name": "\ud800"}},
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "long@gmail.com", "name": "n" * 101}},
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "n@gmail.com", "name": 5}},
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/admin/users",
            {"json": {"email": "n@gmail.com", "admin": 10**400}},
            400,
            "invalid_admin",
        ),
        ("DELETE", "/api/admin/sessions/%00", {}, 404, "not_found"),
        ("DELETE", "/api/admin/sessions/" + "0" * 5000, {}, 404, "not_found"),
    ],
)
async def test_odd_inputs_get_their_own_answer_never_a_500(
    admin: Browser,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    response = await admin.request(method, path, **kwargs)

    if code is None:
        assert response.status == status, await response.text()
    else:
        await assert_error(response, status, code)
