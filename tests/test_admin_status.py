"""The admin status at /api/admin/status: live counts, the last day's sign-ins by hour, why
sign-ins failed, and the session cache of the worker that answered."""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service import stats
from tests.conftest import Browser, Service
from tests.issuer import Issuer
from tests.test_admin import assert_error, attempt_sign_in, sign_in

BOSS = "boss@gmail.com"
HOUR = timedelta(hours=1)


@pytest.fixture
async def admin(service: Service, issuer: Issuer, db: asyncpg.Pool) -> Browser:
    """A browser signed in as an administrator: one user, one session, one login_ok."""
    browser, boss_id = await sign_in(service, issuer, BOSS)
    await db.execute("UPDATE users SET admin = true WHERE id = $1", boss_id)
    return browser


async def status_of(admin: Browser) -> Any:
    response = await admin.get("/api/admin/status")
    assert response.status == 200, await response.text()
    return await response.json()


async def fail_sign_in(service: Service, issuer: Issuer, email: str, **claims: Any) -> str:
    """A refused sign-in from a new browser; the error code."""
    response = await attempt_sign_in(service.browser(), issuer, email, **claims)
    assert response.status in (401, 403), await response.text()
    code: str = (await response.json())["error"]
    return code


def expired() -> dict[str, int]:
    now = int(time.time())
    return {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}


# --- who may see it -------------------------------------------------------------------------


async def test_status_is_refused_to_a_signed_in_non_admin(service: Service, issuer: Issuer) -> None:
    browser, _ = await sign_in(service, issuer, "worker@gmail.com")

    await assert_error(await browser.get("/api/admin/status"), 403, "admin_only")


# --- live counts ----------------------------------------------------------------------------


async def test_status_counts_live_sessions_and_every_user(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    _, ada_id = await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "ada@gmail.com")
    _, bob_id = await sign_in(service, issuer, "bob@gmail.com")
    await sign_in(service, issuer, "cy@gmail.com")
    # Bob's session has expired and one of Ada's is idle: neither is live. Bob is still a user.
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", bob_id
    )
    await db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '2 hours'"
        " WHERE id = (SELECT id FROM sessions WHERE user_id = $1 LIMIT 1)",
        ada_id,
    )
    await admin.post("/api/admin/users", json={"email": "pre@gmail.com"})

    body = await status_of(admin)

    assert body["live_sessions"] == {"value": 3, "exact": True}  # the boss, Ada and Cy
    assert body["users"] == {"value": 5, "exact": True}


async def test_status_counts_past_the_exact_limit_are_the_planners_estimate(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool, monkeypatch: Any
) -> None:
    for email in ("ada@gmail.com", "bob@gmail.com"):
        await sign_in(service, issuer, email)
    await db.execute("ANALYZE sessions, users")
    monkeypatch.setattr(stats, "EXACT_UP_TO", 2)

    body = await status_of(admin)

    assert body["live_sessions"] == {"value": 3, "exact": False}
    assert body["users"] == {"value": 3, "exact": False}


# --- sign-ins over the last day -------------------------------------------------------------


async def test_status_counts_ok_and_failed_sign_ins_of_the_last_24_hours(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await sign_in(service, issuer, "ada@gmail.com")
    await sign_in(service, issuer, "ada@gmail.com")
    # Repeats of one failure (same source, email and error) are one event, counted.
    for _ in range(3):
        assert await fail_sign_in(service, issuer, "eve@gmail.com", **expired()) == "token_expired"
    assert await fail_sign_in(service, issuer, "eve@gmail.com", aud="other") == "invalid_audience"
    # A day and more ago: not counted.
    await sign_in(service, issuer, "old@gmail.com")
    await db.execute(
        "UPDATE auth_events SET at = now() - interval '25 hours'"
        " WHERE id = (SELECT max(id) FROM auth_events WHERE kind = 'login_ok')"
    )

    body = await status_of(admin)

    sign_ins = body["sign_ins"]
    assert (sign_ins["ok"], sign_ins["failed"]) == (3, 4)  # the boss's and Ada's two
    assert sum(h["ok"] for h in sign_ins["hours"]) == 3
    assert sum(h["failed"] for h in sign_ins["hours"]) == 4


async def test_status_has_24_whole_hours_ending_with_this_one(
    admin: Browser, db: asyncpg.Pool
) -> None:
    before = await db.fetchval("SELECT date_trunc('hour', now())")

    body = await status_of(admin)

    after = await db.fetchval("SELECT date_trunc('hour', now())")
    starts = [datetime.fromisoformat(h["start"]) for h in body["sign_ins"]["hours"]]
    assert len(starts) == 24
    assert all(later - earlier == HOUR for earlier, later in itertools.pairwise(starts))
    assert starts[-1] in (before, after)
    assert datetime.fromisoformat(body["sign_ins"]["since"]) == starts[0]
    assert all(set(h) == {"start", "ok", "failed"} for h in body["sign_ins"]["hours"])


async def test_each_sign_in_is_counted_in_the_hour_it_happened(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    await sign_in(service, issuer, "ada@gmail.com")
    await fail_sign_in(service, issuer, "eve@gmail.com", aud="other")
    for hours_ago, kind in ((5, "login_ok"), (10, "login_failed")):
        await db.execute(
            "UPDATE auth_events SET at = at - make_interval(hours => $1)"
            " WHERE id = (SELECT max(id) FROM auth_events WHERE kind = $2)",
            hours_ago,
            kind,
        )
    happened = Counter(
        (row["hour"], "ok" if row["kind"] == "login_ok" else "failed")
        for row in await db.fetch("SELECT kind, date_trunc('hour', at) AS hour FROM auth_events")
    )

    body = await status_of(admin)

    counted = Counter(
        {
            (datetime.fromisoformat(h["start"]), outcome): h[outcome]
            for h in body["sign_ins"]["hours"]
            for outcome in ("ok", "failed")
            if h[outcome]
        }
    )
    assert counted == happened
    assert len(happened) == 3  # the boss's sign-in now, Ada's 5 hours ago, Eve's failure 10


# --- why sign-ins failed --------------------------------------------------------------------


async def test_failure_reasons_are_the_commonest_first(
    admin: Browser, service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    for email in ("a@gmail.com", "b@gmail.com", "c@gmail.com"):
        await fail_sign_in(service, issuer, email, aud="other")
    for _ in range(2):  # one event, counted twice
        await fail_sign_in(service, issuer, "d@gmail.com", **expired())
    _, eve_id = await sign_in(service, issuer, "eve@gmail.com")
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", eve_id)
    assert await fail_sign_in(service, issuer, "eve@gmail.com") == "user_disabled"

    body = await status_of(admin)

    assert body["sign_ins"]["failure_reasons"] == [
        {"error": "invalid_audience", "count": 3},
        {"error": "token_expired", "count": 2},
        {"error": "user_disabled", "count": 1},
    ]


async def test_failure_reasons_are_the_top_five_ties_by_name(
    admin: Browser, db: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO auth_events (kind, detail)"
        " SELECT 'login_failed', jsonb_build_object('error', e, 'count', c)"
        " FROM (VALUES ('b', 1), ('a', 1), ('c', 4), ('d', 2), ('e', 1), ('f', 1), ('g', 9))"
        " AS v (e, c)"
    )

    body = await status_of(admin)

    assert [(r["error"], r["count"]) for r in body["sign_ins"]["failure_reasons"]] == [
        ("g", 9),
        ("c", 4),
        ("d", 2),
        ("a", 1),
        ("b", 1),
    ]


async def test_failed_events_written_by_hand_with_odd_counts_are_never_a_500(
    admin: Browser, db: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO auth_events (kind, detail) VALUES"
        ' (\'login_failed\', \'{"error": "x", "count": "lots"}\'),'
        ' (\'login_failed\', \'{"error": "x", "count": -5}\'),'
        ' (\'login_failed\', \'{"error": "x", "count": 1e30}\'),'
        " ('login_failed', '{\"count\": [1]}'),"
        " ('login_failed', '{}')"
    )

    body = await status_of(admin)

    assert body["sign_ins"]["failed"] == 1 + 1 + 10**9 + 1 + 1
    assert body["sign_ins"]["failure_reasons"] == [
        {"error": "x", "count": 2 + 10**9},
        {"error": "unknown", "count": 2},
    ]


# --- the session cache ----------------------------------------------------------------------


async def test_status_shows_the_answering_workers_session_cache(admin: Browser) -> None:
    await admin.get("/api/user")  # now held in memory

    cache = (await status_of(admin))["session_cache"]

    assert cache["worker"] == os.getpid()
    assert (cache["enabled"], cache["coherent"]) == (True, True)
    assert cache["last_pass_age"] is not None and cache["last_pass_age"] >= 0
    assert (cache["sessions"], cache["users"]) == (1, 1)
    assert cache["fresh_for"] == 0.0  # as the tests run (see conftest.py)


async def test_status_with_the_session_cache_turned_off_says_so(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service = await start_service(session_cache=False)
    browser, boss_id = await sign_in(service, issuer, BOSS)
    await db.execute("UPDATE users SET admin = true WHERE id = $1", boss_id)

    cache = (await status_of(browser))["session_cache"]

    assert (cache["enabled"], cache["coherent"]) == (False, False)
    assert (cache["sessions"], cache["users"]) == (0, 0)
