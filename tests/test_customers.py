"""Customers: the CRUD API every signed-in, enabled user may use, and what it refuses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Browser, Service
from tests.issuer import Issuer

MAX_BIGINT = 2**63 - 1

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


@pytest.fixture
async def ada(browser: Browser, issuer: Issuer) -> Browser:
    """A browser signed in as an ordinary (non-admin) user."""
    await browser.sign_in(issuer, email="ada@gmail.com")
    return browser


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]


async def seed(db: asyncpg.Pool, *rows: tuple[str, str]) -> list[int]:
    """Insert customers in order; their ids."""
    ids = []
    for name, email in rows:
        ids.append(
            await db.fetchval(
                "INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id", name, email
            )
        )
    return ids


async def seed_many(db: asyncpg.Pool, count: int) -> None:
    await db.execute(
        """
        INSERT INTO customers (name, email)
        SELECT 'Customer ' || n, 'c' || n || '@example.com' FROM generate_series(1, $1) AS n
        """,
        count,
    )


async def stored(db: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, name, email FROM customers ORDER BY id")
    return [dict(row) for row in rows]


def valid_body() -> dict[str, str]:
    return {"name": "Grace Hopper", "email": "grace@example.com"}


# --- listing ---------------------------------------------------------------------------------


async def test_an_empty_list_has_no_results_and_a_total_of_zero(ada: Browser) -> None:
    response = await ada.get("/api/customer")

    assert response.status == 200, await response.text()
    assert await response.json() == {"results": [], "total": 0}


async def test_the_list_is_ordered_by_id_whatever_the_insertion_order(
    ada: Browser, db: asyncpg.Pool
) -> None:
    for customer_id in (3, 1, 2):
        await db.execute(
            """
            INSERT INTO customers (id, name, email) OVERRIDING SYSTEM VALUE
            VALUES ($1, $2, $3)
            """,
            customer_id,
            f"Customer {customer_id}",
            f"c{customer_id}@example.com",
        )

    response = await ada.get("/api/customer")

    assert response.status == 200, await response.text()
    assert await response.json() == {
        "results": [
            {"id": n, "name": f"Customer {n}", "email": f"c{n}@example.com"} for n in (1, 2, 3)
        ],
        "total": 3,
    }


async def test_offset_and_limit_select_a_page_and_total_counts_every_customer(
    ada: Browser, db: asyncpg.Pool
) -> None:
    ids = await seed(db, *[(f"C{n}", f"c{n}@example.com") for n in range(5)])

    response = await ada.get("/api/customer", params={"offset": "1", "limit": "2"})

    assert response.status == 200, await response.text()
    body = await response.json()
    assert [c["id"] for c in body["results"]] == ids[1:3]
    assert body["total"] == 5


async def test_a_page_past_the_end_is_empty_but_still_has_the_total(
    ada: Browser, db: asyncpg.Pool
) -> None:
    await seed(db, ("A", "a@example.com"), ("B", "b@example.com"))

    for offset in ("2", "10", str(2**62)):
        response = await ada.get("/api/customer", params={"offset": offset})

        assert response.status == 200, await response.text()
        assert await response.json() == {"results": [], "total": 2}


async def test_the_limit_defaults_to_100(ada: Browser, db: asyncpg.Pool) -> None:
    await seed_many(db, 101)

    body = await (await ada.get("/api/customer")).json()

    assert len(body["results"]) == 100
    assert body["total"] == 101
    assert body["results"][-1]["id"] == 100


async def test_the_limit_can_be_500(ada: Browser, db: asyncpg.Pool) -> None:
    await seed_many(db, 501)

    response = await ada.get("/api/customer", params={"limit": "500"})

    assert response.status == 200, await response.text()
    body = await response.json()
    assert len(body["results"]) == 500
    assert body["total"] == 501


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("offset", "-1"),
        ("offset", "abc"),
        ("offset", "1.5"),
        ("offset", "+1"),
        ("offset", " 1"),
        ("offset", "1e3"),
        ("offset", "\uff11"),  # a full-width digit one
        ("offset", str(2**62 + 1)),
        ("offset", "9" * 40),
        ("offset", "9" * 5000),  # past int()'s 4300-digit limit
        ("limit", "0"),
        ("limit", "-1"),
        ("limit", "501"),
        ("limit", "abc"),
        ("limit", "0x10"),
        ("limit", "9" * 40),
        ("limit", "9" * 5000),
    ],
)
async def test_a_bad_offset_or_limit_is_400(
    ada: Browser, db: asyncpg.Pool, name: str, value: str
) -> None:
    await seed(db, ("A", "a@example.com"))

    response = await ada.get("/api/customer", params={name: value})

    await assert_error(response, 400, f"invalid_{name}")


# --- creating --------------------------------------------------------------------------------


async def test_create_answers_201_with_the_new_row_and_stores_it(
    ada: Browser, db: asyncpg.Pool
) -> None:
    response = await ada.post("/api/customer", json=valid_body())

    assert response.status == 201, await response.text()
    body = await response.json()
    assert set(body) == {"id", "name", "email"}
    assert isinstance(body["id"], int)
    assert body["name"] == "Grace Hopper"
    assert body["email"] == "grace@example.com"
    assert await stored(db) == [body]
    fetched = await ada.get(f"/api/customer/{body['id']}")
    assert await fetched.json() == body


async def test_create_strips_the_name_and_returns_the_normalized_email(
    ada: Browser, db: asyncpg.Pool
) -> None:
    response = await ada.post(
        "/api/customer", json={"name": "  Grace  ", "email": " grace@EXAMPLE.COM "}
    )

    assert response.status == 201, await response.text()
    body = await response.json()
    assert (body["name"], body["email"]) == ("Grace", "grace@example.com")
    assert [(c["name"], c["email"]) for c in await stored(db)] == [("Grace", "grace@example.com")]


async def test_a_name_of_exactly_100_characters_is_accepted(ada: Browser) -> None:
    response = await ada.post("/api/customer", json={"name": "é" * 100, "email": "a@example.com"})

    assert response.status == 201, await response.text()
    assert (await response.json())["name"] == "é" * 100


async def test_every_signed_in_user_sees_and_edits_the_same_customers(
    service: Service, ada: Browser, issuer: Issuer
) -> None:
    bob = service.browser()
    await bob.sign_in(issuer, email="bob@gmail.com")
    created = await (await ada.post("/api/customer", json=valid_body())).json()

    assert (await (await bob.get("/api/customer")).json())["results"] == [created]
    changed = await bob.request(
        "PUT", f"/api/customer/{created['id']}", json={"name": "G", "email": "g@example.com"}
    )
    assert changed.status == 200, await changed.text()
    assert (await (await ada.get(f"/api/customer/{created['id']}")).json())["name"] == "G"


BAD_NAMES: list[Any] = [
    "",
    "   ",
    "\t\n",
    "x" * 101,
    " " + "x" * 101 + " ",
    123,
    None,
    True,
    ["Ada"],
    {"first": "Ada"},
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_create_refuses_a_bad_name_and_stores_nothing(
    ada: Browser, db: asyncpg.Pool, name: Any
) -> None:
    response = await ada.post("/api/customer", json={"name": name, "email": "a@example.com"})

    await assert_error(response, 400, "invalid_name")
    assert await stored(db) == []


async def test_create_refuses_a_missing_name(ada: Browser, db: asyncpg.Pool) -> None:
    response = await ada.post("/api/customer", json={"email": "a@example.com"})

    await assert_error(response, 400, "invalid_name")
    assert await stored(db) == []


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("name", ["Ada\x00Lovelace", "Ada \ud800"])
async def test_a_name_postgres_cannot_store_is_400_not_500(
    ada: Browser, db: asyncpg.Pool, method: str, name: str
) -> None:
    """A NUL or a lone surrogate is valid JSON but can never be stored in a text column."""
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)
    path = "/api/customer" if method == "POST" else f"/api/customer/{customer_id}"

    response = await ada.request(method, path, json={"name": name, "email": "a@example.com"})

    await assert_error(response, 400, "invalid_name")
    assert await stored(db) == before


BAD_EMAILS: list[Any] = [
    "",
    "   ",
    "not-an-email",
    "ada@",
    "@example.com",
    "ada lovelace@example.com",
    "ada@@example.com",
    "ada@example..com",
    "a" * 250 + "@example.com",
    "ada\x00@example.com",
    "ada\ud800@example.com",
    "ada@exa\ud800mple.com",
    42,
    None,
    ["ada@example.com"],
]


@pytest.mark.parametrize("email", BAD_EMAILS)
async def test_create_refuses_a_bad_email_and_stores_nothing(
    ada: Browser, db: asyncpg.Pool, email: Any
) -> None:
    response = await ada.post("/api/customer", json={"name": "Ada", "email": email})

    await assert_error(response, 400, "invalid_email")
    assert await stored(db) == []


async def test_create_refuses_a_missing_email(ada: Browser, db: asyncpg.Pool) -> None:
    response = await ada.post("/api/customer", json={"name": "Ada"})

    await assert_error(response, 400, "invalid_email")
    assert await stored(db) == []


JSON = {"Content-Type": "application/json"}

BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"data": b'{"name": "Ada", "email": "a@example.com"}'}, "bad_content_type"),
    (
        {
            "data": b'{"name": "Ada", "email": "a@example.com"}',
            "headers": {"Content-Type": "text/plain"},
        },
        "bad_content_type",
    ),
    ({"data": {"name": "Ada", "email": "a@example.com"}}, "bad_content_type"),  # a form
    ({"data": b"", "headers": JSON}, "bad_json"),
    ({"data": b"{not json", "headers": JSON}, "bad_json"),
    ({"data": b"\xff\xfe\x00", "headers": JSON}, "bad_json"),
    ({"data": b"[" * 20_000, "headers": JSON}, "bad_json"),
    ({"data": b'{"name": ' + b"1" * 5000 + b"}", "headers": JSON}, "bad_json"),
    ({"json": ["Ada", "a@example.com"]}, "bad_json"),
    ({"data": b"null", "headers": JSON}, "bad_json"),
    ({"data": b"42", "headers": JSON}, "bad_json"),
    ({"json": "Ada"}, "bad_json"),
]


@pytest.mark.parametrize(("kwargs", "code"), BAD_BODIES)
async def test_create_refuses_a_body_that_is_not_a_json_object(
    ada: Browser, db: asyncpg.Pool, kwargs: dict[str, Any], code: str
) -> None:
    response = await ada.post("/api/customer", **kwargs)

    await assert_error(response, 400, code)
    assert await stored(db) == []


# --- one customer ----------------------------------------------------------------------------


async def test_get_returns_the_customer(ada: Browser, db: asyncpg.Pool) -> None:
    _, second = await seed(db, ("Ada", "ada@example.com"), ("Bob", "bob@example.com"))

    response = await ada.get(f"/api/customer/{second}")

    assert response.status == 200, await response.text()
    assert await response.json() == {"id": second, "name": "Bob", "email": "bob@example.com"}


async def test_put_replaces_both_fields_and_returns_the_row(ada: Browser, db: asyncpg.Pool) -> None:
    first, second = await seed(db, ("Ada", "ada@example.com"), ("Bob", "bob@example.com"))

    response = await ada.request(
        "PUT", f"/api/customer/{first}", json={"name": " Ada L ", "email": "ADA.L@Example.com"}
    )

    assert response.status == 200, await response.text()
    expected = {"id": first, "name": "Ada L", "email": "ADA.L@example.com"}
    assert await response.json() == expected
    assert await stored(db) == [
        expected,
        {"id": second, "name": "Bob", "email": "bob@example.com"},
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "New name"}, "invalid_email"),
        ({"email": "new@example.com"}, "invalid_name"),
        ({"name": "", "email": "new@example.com"}, "invalid_name"),
        ({"name": "New name", "email": "nope"}, "invalid_email"),
        ({}, "invalid_name"),
    ],
)
async def test_put_with_a_missing_or_bad_field_changes_nothing(
    ada: Browser, db: asyncpg.Pool, body: dict[str, Any], code: str
) -> None:
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)

    response = await ada.request("PUT", f"/api/customer/{customer_id}", json=body)

    await assert_error(response, 400, code)
    assert await stored(db) == before


async def test_put_with_a_body_that_is_not_json_changes_nothing(
    ada: Browser, db: asyncpg.Pool
) -> None:
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)

    response = await ada.request(
        "PUT", f"/api/customer/{customer_id}", data=b"name=New&email=new@example.com"
    )

    await assert_error(response, 400, "bad_content_type")
    assert await stored(db) == before


async def test_delete_answers_204_and_removes_only_that_customer(
    ada: Browser, db: asyncpg.Pool
) -> None:
    first, second = await seed(db, ("Ada", "ada@example.com"), ("Bob", "bob@example.com"))

    response = await ada.request("DELETE", f"/api/customer/{first}")

    assert response.status == 204, await response.text()
    assert await response.read() == b""
    assert await stored(db) == [{"id": second, "name": "Bob", "email": "bob@example.com"}]
    await assert_error(await ada.get(f"/api/customer/{first}"), 404, "not_found")
    await assert_error(await ada.request("DELETE", f"/api/customer/{first}"), 404, "not_found")


UNKNOWN_IDS = [
    "999",
    "0",
    "00",
    "-1",
    "abc",
    "1.0",
    "1e3",
    "+1",
    "0x1",
    "%EF%BC%91",  # a full-width digit one
    str(MAX_BIGINT),
    str(MAX_BIGINT + 1),
    "9" * 40,
    "9" * 5000,  # past int()'s 4300-digit limit
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("customer_id", UNKNOWN_IDS)
async def test_an_unknown_or_impossible_id_is_404_and_changes_nothing(
    ada: Browser, db: asyncpg.Pool, method: str, customer_id: str
) -> None:
    await seed(db, ("Ada", "ada@example.com"))  # id 1: "01" or "1.0" must not reach it
    before = await stored(db)
    kwargs: dict[str, Any] = {"json": valid_body()} if method == "PUT" else {}

    response = await ada.request(method, f"/api/customer/{customer_id}", **kwargs)

    await assert_error(response, 404, "not_found")
    assert await stored(db) == before


# --- trailing slashes ------------------------------------------------------------------------


async def test_a_trailing_slash_lists_with_no_redirect(ada: Browser, db: asyncpg.Pool) -> None:
    await seed(db, ("Ada", "ada@example.com"))

    response = await ada.get("/api/customer/", params={"limit": "1"}, allow_redirects=False)

    assert response.status == 200, await response.text()
    assert response.history == ()
    assert await response.json() == {
        "results": [{"id": 1, "name": "Ada", "email": "ada@example.com"}],
        "total": 1,
    }


async def test_a_trailing_slash_creates_with_no_redirect(ada: Browser, db: asyncpg.Pool) -> None:
    response = await ada.post("/api/customer/", json=valid_body(), allow_redirects=False)

    assert response.status == 201, await response.text()
    assert response.history == ()
    assert await stored(db) == [await response.json()]


async def test_a_trailing_slash_gets_one_customer_with_no_redirect(
    ada: Browser, db: asyncpg.Pool
) -> None:
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))

    response = await ada.get(f"/api/customer/{customer_id}/", allow_redirects=False)

    assert response.status == 200, await response.text()
    assert response.history == ()
    assert await response.json() == {"id": customer_id, "name": "Ada", "email": "ada@example.com"}


async def test_a_trailing_slash_updates_with_no_redirect(ada: Browser, db: asyncpg.Pool) -> None:
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))

    response = await ada.request(
        "PUT", f"/api/customer/{customer_id}/", json=valid_body(), allow_redirects=False
    )

    assert response.status == 200, await response.text()
    assert response.history == ()
    assert await stored(db) == [{"id": customer_id, **valid_body()}]


async def test_a_trailing_slash_deletes_with_no_redirect(ada: Browser, db: asyncpg.Pool) -> None:
    (customer_id,) = await seed(db, ("Ada", "ada@example.com"))

    response = await ada.request("DELETE", f"/api/customer/{customer_id}/", allow_redirects=False)

    assert response.status == 204, await response.text()
    assert response.history == ()
    assert await stored(db) == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_trailing_slash_on_an_unknown_id_is_still_404(
    ada: Browser, db: asyncpg.Pool, method: str
) -> None:
    kwargs: dict[str, Any] = {"json": valid_body()} if method == "PUT" else {}

    response = await ada.request(method, "/api/customer/7/", allow_redirects=False, **kwargs)

    await assert_error(response, 404, "not_found")
    assert response.history == ()


# --- refusals --------------------------------------------------------------------------------

EVERY_REQUEST = [
    ("GET", "/api/customer"),
    ("GET", "/api/customer/"),
    ("POST", "/api/customer"),
    ("POST", "/api/customer/"),
    ("GET", "/api/customer/1"),
    ("GET", "/api/customer/1/"),
    ("PUT", "/api/customer/1"),
    ("PUT", "/api/customer/1/"),
    ("DELETE", "/api/customer/1"),
    ("DELETE", "/api/customer/1/"),
    ("GET", "/api/customer/999"),  # not a 404 before signing in
]

CHANGES = [(m, p) for m, p in EVERY_REQUEST if m != "GET"]


def body_for(method: str) -> dict[str, Any]:
    return {"json": {"name": "Changed", "email": "changed@example.com"}} if method != "GET" else {}


@pytest.mark.parametrize(("method", "path"), EVERY_REQUEST)
async def test_without_a_session_every_request_is_401_and_changes_nothing(
    browser: Browser, db: asyncpg.Pool, method: str, path: str
) -> None:
    await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)

    response = await browser.request(method, path, allow_redirects=False, **body_for(method))

    await assert_error(response, 401, "not_signed_in")
    assert await stored(db) == before


@pytest.mark.parametrize(("method", "path"), EVERY_REQUEST)
async def test_a_disabled_user_is_refused_403_and_changes_nothing(
    ada: Browser, db: asyncpg.Pool, method: str, path: str
) -> None:
    await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)
    await db.execute("UPDATE users SET disabled = true WHERE email = 'ada@gmail.com'")

    response = await ada.request(method, path, allow_redirects=False, **body_for(method))

    await assert_error(response, 403, "user_disabled")
    assert await stored(db) == before


@pytest.mark.parametrize(("method", "path"), CHANGES)
@pytest.mark.parametrize("origin", [None, "https://evil.example", "null"])
async def test_a_change_without_this_sites_origin_is_refused_csrf(
    ada: Browser, db: asyncpg.Pool, method: str, path: str, origin: str | None
) -> None:
    await seed(db, ("Ada", "ada@example.com"))
    before = await stored(db)

    response = await ada.request(
        method, path, origin=origin, allow_redirects=False, **body_for(method)
    )

    await assert_error(response, 403, "csrf")
    assert await stored(db) == before
    assert (await ada.get("/api/user")).status == 200  # still signed in


async def test_a_change_without_origin_is_refused_csrf_even_before_signing_in(
    browser: Browser, db: asyncpg.Pool
) -> None:
    response = await browser.post("/api/customer", origin=None, json=valid_body())

    await assert_error(response, 403, "csrf")
    assert await stored(db) == []
