"""The operator CLI: `python -m service users ...` and `python -m service sessions ...`.

Every command runs as a real subprocess against the test database, while a live service on
the same database shows what a signed-in browser sees next.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import Browser, Service
from tests.issuer import Issuer

ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60
CLI_AGENT = "python -m service"
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/nothing"

ADA = "ada@gmail.com"
BOB = "bob@gmail.com"


# --- helpers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def ok(self) -> Result:
        assert self.returncode == 0, self.stderr
        assert self.stderr == "", self.stderr
        return self

    def error(self, code: int = 1) -> str:
        """The single stderr line of a refused command."""
        assert self.returncode == code, (self.returncode, self.stdout, self.stderr)
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if code == 1:
            assert len(lines) == 1, self.stderr
        return lines[-1]


async def cli(database_url: str, *args: str) -> Result:
    """`python -m service *args` on the test database, without blocking the event loop."""
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONDONTWRITEBYTECODE": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    result = Result(process.returncode, stdout.decode(), stderr.decode())
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def operator_events(db: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every operator_* auth event, oldest first, with its detail decoded."""
    rows = await db.fetch(
        """
        SELECT kind, user_id, ip, user_agent, detail::text AS detail FROM auth_events
        WHERE kind LIKE 'operator\\_%' ORDER BY id
        """
    )
    events = [{**dict(row), "detail": json.loads(row["detail"])} for row in rows]
    for event in events:
        assert event["user_id"] is None, event
        assert event["ip"] is None, event
        assert event["user_agent"] == CLI_AGENT, event
    return events


async def user_id(db: asyncpg.Pool, email: str) -> int:
    found: int | None = await db.fetchval(
        "SELECT id FROM users WHERE lower(email) = lower($1)", email
    )
    assert found is not None, email
    return found


async def session_id(browser: Browser) -> str:
    me = await browser.get("/api/me")
    assert me.status == 200, await me.text()
    found: str = (await me.json())["session"]["id"]
    return found


async def try_sign_in(browser: Browser, issuer: Issuer, email: str) -> Any:
    """The sign-in flow, returning the login response whatever its status."""
    nonce = await browser.new_nonce()
    return await browser.post(
        "/api/login", json={"credential": issuer.token(email=email, nonce=nonce)}
    )


async def signed_in(service: Service, issuer: Issuer, email: str, agent: str = "A") -> Browser:
    browser = service.browser(f"Mozilla/5.0 TestBrowser/{agent}")
    await browser.sign_in(issuer, email=email)
    return browser


async def signed_in_browsers(
    service: Service, issuer: Issuer, *who: tuple[str, str]
) -> list[Browser]:
    """One signed-in browser per (email, agent), one after another: concurrent first sign-ins
    of a new account race, and the loser is told to try again (409) by design."""
    return [await signed_in(service, issuer, email, agent) for email, agent in who]


async def status(browser: Browser, path: str = "/api/user") -> int:
    return (await browser.get(path)).status


# --- users ----------------------------------------------------------------------------------


async def test_users_add_pre_provisions_and_list_shows_flags_and_linked_state(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    added = await asyncio.gather(
        cli(database_url, "users", "add", ADA, "--admin"),
        cli(database_url, "users", "add", "carol@example.com"),
    )
    for result in added:
        assert len(result.ok().lines) == 1
        assert result.lines[0].startswith("added ")
    ada_id = await user_id(db, ADA)
    carol_id = await user_id(db, "carol@example.com")
    assert f"{ada_id}\t{ADA}\tadmin\tnot signed in yet" in added[0].stdout
    assert f"{carol_id}\tcarol@example.com\t-\tnot signed in yet" in added[1].stdout

    # Google is authoritative for gmail.com: signing in claims the pre-provisioned admin row.
    user = (await service.browser().sign_in(issuer, email=ADA))["user"]
    assert user["id"] == ada_id
    assert user["admin"] is True
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", carol_id)

    listing = (await cli(database_url, "users", "list")).ok()

    assert (
        listing.lines
        == [
            f"{ada_id}\t{ADA}\tadmin\tlinked",
            f"{carol_id}\tcarol@example.com\tdisabled\tnot signed in yet",
        ][:: 1 if ada_id < carol_id else -1]
    )
    events = await operator_events(db)
    assert sorted(
        (e["kind"], e["detail"]["target_user_id"], e["detail"]["admin"]) for e in events
    ) == sorted(
        [("operator_user_created", ada_id, True), ("operator_user_created", carol_id, False)]
    )


async def test_users_add_refuses_an_existing_email_whatever_its_case(
    database_url: str, db: asyncpg.Pool
) -> None:
    (await cli(database_url, "users", "add", "Ada@Example.com")).ok()

    refused = await cli(database_url, "users", "add", "ada@EXAMPLE.com", "--admin")

    assert refused.error().startswith("error:")
    assert refused.stdout == ""
    rows = await db.fetch("SELECT email, admin FROM users")
    # email-validator's normal form: the domain lower-cased, the local part as given.
    assert [tuple(row) for row in rows] == [("Ada@example.com", False)]
    assert [e["kind"] for e in await operator_events(db)] == ["operator_user_created"]


async def test_operator_commands_refuse_an_unknown_email_and_change_nothing(
    database_url: str, db: asyncpg.Pool
) -> None:
    (await cli(database_url, "users", "add", ADA)).ok()
    commands = [
        ("users", "promote"),
        ("users", "demote"),
        ("users", "disable"),
        ("users", "enable"),
        ("sessions", "list", "--user"),
        ("sessions", "revoke", "--user"),
    ]

    results = await asyncio.gather(
        *(cli(database_url, *command, "nobody@gmail.com") for command in commands)
    )

    for command, result in zip(commands, results, strict=True):
        assert result.error() == "error: no user with the email nobody@gmail.com", command
        assert result.stdout == "", command
    row = await db.fetchrow("SELECT admin, disabled FROM users")
    assert tuple(row) == (False, False)
    assert [e["kind"] for e in await operator_events(db)] == ["operator_user_created"]


BAD_USAGE = [
    ("users", "frobnicate", ADA),
    ("users", "add"),
    ("users", "promote"),
    ("users",),
    ("sessions",),
    ("sessions", "revoke", "--user"),
    ("sessions", "forget"),
]


async def test_bad_usage_exits_2_with_argparse_usage(database_url: str) -> None:
    results = await asyncio.gather(*(cli(database_url, *args) for args in BAD_USAGE))

    for args, result in zip(BAD_USAGE, results, strict=True):
        assert result.returncode == 2, (args, result)
        assert result.stdout == "", args
        assert "usage: python -m service" in result.stderr, args


async def test_promote_and_demote_take_effect_on_the_next_request_of_an_existing_session(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    browser = await signed_in(service, issuer, ADA)
    ada_id = await user_id(db, ADA)
    assert await status(browser, "/api/admin/users") == 403

    promoted = (await cli(database_url, "users", "promote", "ADA@gmail.com")).ok()

    assert promoted.lines == [f"{ada_id}\t{ADA}\tadmin\tlinked"]
    assert await status(browser, "/api/admin/users") == 200
    await db.execute("INSERT INTO users (email, admin) VALUES ('other-admin@gmail.com', true)")

    demoted = (await cli(database_url, "users", "demote", ADA)).ok()

    assert demoted.lines == [f"{ada_id}\t{ADA}\t-\tlinked"]
    assert await status(browser, "/api/admin/users") == 403
    assert await status(browser) == 200  # still signed in, just not an administrator
    events = await operator_events(db)
    assert [(e["kind"], e["detail"]) for e in events] == [
        (
            "operator_user_updated",
            {"target_user_id": ada_id, "changes": {"admin": True}, "sessions_revoked": 0},
        ),
        (
            "operator_user_updated",
            {"target_user_id": ada_id, "changes": {"admin": False}, "sessions_revoked": 0},
        ),
    ]


async def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(
    database_url: str, db: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO users (email, admin, disabled) VALUES ($1, true, false),"
        " ('old-admin@gmail.com', true, true)",
        ADA,
    )

    refusals = await asyncio.gather(
        cli(database_url, "users", "demote", ADA), cli(database_url, "users", "disable", ADA)
    )

    for refused in refusals:
        assert refused.error() == "error: This would leave no enabled administrator."
    assert await db.fetchval("SELECT admin AND NOT disabled FROM users WHERE email = $1", ADA)


async def test_disable_revokes_every_session_of_the_user_and_refuses_sign_in_until_enable(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    laptop, phone, bob = await signed_in_browsers(
        service, issuer, (ADA, "laptop"), (ADA, "phone"), (BOB, "A")
    )
    ada_id = await user_id(db, ADA)

    disabled = (await cli(database_url, "users", "disable", ADA)).ok()

    assert disabled.lines == [f"{ada_id}\t{ADA}\tdisabled\tlinked\t(2 sessions revoked)"]
    assert await status(laptop) == 401
    assert await status(phone) == 401
    assert await status(bob) == 200
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", ada_id) == 0
    refused = await try_sign_in(laptop, issuer, ADA)
    assert refused.status == 403, await refused.text()
    assert (await refused.json())["error"] == "user_disabled"

    enabled = (await cli(database_url, "users", "enable", ADA)).ok()

    assert enabled.lines == [f"{ada_id}\t{ADA}\t-\tlinked"]
    again = await try_sign_in(laptop, issuer, ADA)
    assert again.status == 200, await again.text()
    assert await status(laptop) == 200
    events = await operator_events(db)
    assert [(e["kind"], e["detail"]) for e in events] == [
        (
            "operator_user_updated",
            {"target_user_id": ada_id, "changes": {"disabled": True}, "sessions_revoked": 2},
        ),
        (
            "operator_user_updated",
            {"target_user_id": ada_id, "changes": {"disabled": False}, "sessions_revoked": 0},
        ),
    ]


# --- sessions -------------------------------------------------------------------------------


async def test_sessions_list_shows_live_sessions_with_a_count_optionally_for_one_user(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    laptop, phone, bob, old = await signed_in_browsers(
        service, issuer, (ADA, "laptop"), (ADA, "phone"), (BOB, "A"), (ADA, "old")
    )
    old_id = await session_id(old)
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(old_id),
    )
    ids = dict(
        zip(
            ("laptop", "phone", "bob"),
            await asyncio.gather(session_id(laptop), session_id(phone), session_id(bob)),
            strict=True,
        )
    )

    everyone, ada_only = await asyncio.gather(
        cli(database_url, "sessions", "list"),
        cli(database_url, "sessions", "list", "--user", "Ada@Gmail.com"),
    )

    def parsed(result: Result) -> dict[str, list[str]]:
        *rows, last = result.ok().lines
        count = len(rows)
        assert last == f"{count} live sessions"
        return {row.split("\t")[0]: row.split("\t") for row in rows}

    listed = parsed(everyone)
    assert set(listed) == set(ids.values())  # the expired one is not live
    for name, sid in ids.items():
        fields = listed[sid]
        assert len(fields) == 6, fields
        assert fields[1] == (BOB if name == "bob" else ADA)
        assert fields[2].startswith("created 20")
        assert fields[3].startswith("last seen 20")
        assert fields[4] == "127.0.0.1"
        assert fields[5] == f"Mozilla/5.0 TestBrowser/{'A' if name == 'bob' else name}"
    assert set(parsed(ada_only)) == {ids["laptop"], ids["phone"]}
    assert await operator_events(db) == []  # listing changes nothing


async def test_sessions_list_with_no_sessions_says_zero(
    database_url: str, db: asyncpg.Pool
) -> None:
    assert (await cli(database_url, "sessions", "list")).ok().lines == ["0 live sessions"]


async def test_sessions_revoke_ends_that_browser_only_and_a_second_revoke_is_an_error(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    laptop, phone = await signed_in_browsers(service, issuer, (ADA, "laptop"), (ADA, "phone"))
    laptop_id = await session_id(laptop)

    revoked = (await cli(database_url, "sessions", "revoke", laptop_id)).ok()

    assert revoked.lines == [f"revoked session {laptop_id}"]
    assert await status(laptop) == 401
    assert await status(phone) == 200

    again = await cli(database_url, "sessions", "revoke", laptop_id)

    assert again.error() == f"error: no session {laptop_id}"
    events = await operator_events(db)
    assert [(e["kind"], e["detail"]) for e in events] == [
        (
            "operator_session_revoked",
            {"target_user_id": await user_id(db, ADA), "session_id": laptop_id},
        )
    ]


async def test_sessions_revoke_refuses_unknown_malformed_and_ambiguous_arguments(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    browser = await signed_in(service, issuer, ADA)
    live_id = await session_id(browser)
    unknown_id = str(uuid.uuid4())

    unknown, malformed, neither, both = await asyncio.gather(
        cli(database_url, "sessions", "revoke", unknown_id),
        cli(database_url, "sessions", "revoke", "not-a-session-id"),
        cli(database_url, "sessions", "revoke"),
        cli(database_url, "sessions", "revoke", live_id, "--user", ADA),
    )

    assert unknown.error() == f"error: no session {unknown_id}"
    assert malformed.error() == "error: 'not-a-session-id' is not a session id"
    assert neither.error().startswith("error:")
    assert both.error().startswith("error:")
    assert await status(browser) == 200
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    assert await operator_events(db) == []


async def test_an_empty_session_id_or_email_is_refused_not_taken_as_absent(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    browser = await signed_in(service, issuer, ADA)

    empty_id, empty_email = await asyncio.gather(
        cli(database_url, "sessions", "revoke", ""),
        cli(database_url, "sessions", "list", "--user", ""),
    )

    assert empty_id.error() == "error: '' is not a session id"
    assert empty_email.error() == "error: no user with the email "
    assert empty_email.stdout == ""
    assert await status(browser) == 200


async def test_sessions_revoke_user_ends_all_of_their_sessions_and_no_one_elses(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    laptop, phone, bob = await signed_in_browsers(
        service, issuer, (ADA, "laptop"), (ADA, "phone"), (BOB, "A")
    )

    revoked = (await cli(database_url, "sessions", "revoke", "--user", "ADA@GMAIL.COM")).ok()

    assert revoked.lines == [f"revoked 2 sessions of {ADA}"]
    assert await status(laptop) == 401
    assert await status(phone) == 401
    assert await status(bob) == 200
    # Revoking sessions does not disable: Ada may sign straight back in.
    assert (await try_sign_in(laptop, issuer, ADA)).status == 200
    events = await operator_events(db)
    assert [(e["kind"], e["detail"]) for e in events] == [
        ("operator_sessions_revoked", {"target_user_id": await user_id(db, ADA), "count": 2})
    ]


async def test_sessions_purge_expired_deletes_expired_and_idle_sessions_only(
    database_url: str, db: asyncpg.Pool, service: Service, issuer: Issuer
) -> None:
    expired, idle, live = await signed_in_browsers(
        service, issuer, (ADA, "expired"), (ADA, "idle"), (BOB, "live")
    )
    expired_id, idle_id, live_id = await asyncio.gather(
        session_id(expired), session_id(idle), session_id(live)
    )
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(expired_id),
    )
    await db.execute(  # idle for longer than the default SESSION_IDLE_TIMEOUT of 30 minutes
        "UPDATE sessions SET last_seen_at = now() - interval '31 minutes' WHERE id = $1",
        uuid.UUID(idle_id),
    )

    purged = (await cli(database_url, "sessions", "purge-expired")).ok()

    assert purged.lines == ["purged 2 expired sessions"]
    remaining = await db.fetch("SELECT id FROM sessions")
    assert [str(row["id"]) for row in remaining] == [live_id]
    assert await status(live) == 200
    assert (await cli(database_url, "sessions", "purge-expired")).ok().lines == [
        "purged 0 expired sessions"
    ]


# --- failures -------------------------------------------------------------------------------


async def test_an_unreachable_database_is_one_error_line_without_a_traceback() -> None:
    result = await cli(UNREACHABLE_DATABASE, "users", "list")

    assert result.error().startswith("database error:")
    assert result.stdout == ""
