"""The audit log (`auth_events`): every change commits together with its event, and the history
keeps who acted after they change or go."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service import audit
from tests.conftest import Browser, Service
from tests.issuer import Issuer
from tests.test_operator_cli import cli


@pytest.fixture
async def refuse_events(db: asyncpg.Pool) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """Makes every insert of these kinds of event fail, as a full disk or a bug would."""

    async def refuse(*kinds: str) -> None:
        listed = ", ".join(f"'{kind}'" for kind in kinds)
        await db.execute(
            "ALTER TABLE auth_events ADD CONSTRAINT refused"
            f" CHECK (kind NOT IN ({listed})) NOT VALID"
        )

    yield refuse
    await db.execute("ALTER TABLE auth_events DROP CONSTRAINT IF EXISTS refused")


async def live_sessions(db: asyncpg.Pool) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sessions")
    return count


async def signed_in_twice(service: Service, issuer: Issuer) -> tuple[Browser, Browser]:
    first, second = service.browser(), service.browser()
    await first.sign_in(issuer, email="ada@gmail.com")
    await second.sign_in(issuer, email="ada@gmail.com")
    return first, second


async def test_a_logout_that_cannot_be_recorded_does_not_happen(
    service: Service, issuer: Issuer, db: asyncpg.Pool, refuse_events: Any
) -> None:
    browser = service.browser()
    await browser.sign_in(issuer)
    await refuse_events("logout")

    assert (await browser.post("/api/logout")).status == 500

    assert await live_sessions(db) == 1
    assert (await browser.get("/api/user")).status == 200


async def test_revoking_your_own_sessions_that_cannot_be_recorded_does_not_happen(
    service: Service, issuer: Issuer, db: asyncpg.Pool, refuse_events: Any
) -> None:
    first, second = await signed_in_twice(service, issuer)
    other_id = (await (await second.get("/api/me")).json())["session"]["id"]
    await refuse_events("session_revoked", "sessions_revoked")

    one = await first.request("DELETE", f"/api/sessions/{other_id}")
    others = await first.post("/api/sessions/revoke-others")

    assert (one.status, others.status) == (500, 500)
    assert await live_sessions(db) == 2


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("operator_user_created", ("users", "add", "new@gmail.com")),
        ("operator_sessions_revoked", ("sessions", "revoke", "--user", "ada@gmail.com")),
        ("operator_session_revoked", ("sessions", "revoke", "SESSION")),
    ],
)
async def test_cli_changes_that_cannot_be_recorded_do_not_happen(
    kind: str,
    args: tuple[str, ...],
    service: Service,
    issuer: Issuer,
    db: asyncpg.Pool,
    database_url: str,
    refuse_events: Any,
) -> None:
    browser = service.browser()
    await browser.sign_in(issuer, email="ada@gmail.com")
    session_id = (await (await browser.get("/api/me")).json())["session"]["id"]
    await refuse_events(kind)

    result = await cli(database_url, *(session_id if a == "SESSION" else a for a in args))

    assert result.returncode == 1
    assert result.stderr.startswith("database error:"), result.stderr
    assert await live_sessions(db) == 1
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_a_deleted_admins_events_still_say_who_acted(
    service: Service, issuer: Issuer, db: asyncpg.Pool
) -> None:
    boss, other = service.browser(), service.browser()
    boss_id = (await boss.sign_in(issuer, email="boss@gmail.com"))["user"]["id"]
    await other.sign_in(issuer, email="other@gmail.com")
    await db.execute("UPDATE users SET admin = true")
    created = await boss.post("/api/admin/users", json={"email": "new@gmail.com"})
    assert created.status == 201

    # The boss changes address, then another admin deletes them.
    await db.execute("UPDATE users SET email = 'renamed@gmail.com' WHERE id = $1", boss_id)
    assert (await other.request("DELETE", f"/api/admin/users/{boss_id}")).status == 204

    audit = await (await other.get("/api/admin/audit?kind=admin_user_created")).json()
    [event] = audit["results"]
    assert (event["user_id"], event["email"]) == (boss_id, "boss@gmail.com")
    by_user = await (await other.get(f"/api/admin/audit?user_id={boss_id}")).json()
    assert {e["kind"] for e in by_user["results"]} == {"login_ok", "admin_user_created"}


@pytest.mark.parametrize("returning", [False, True], ids=["first sign-in", "returning user"])
async def test_a_sign_in_whose_audit_event_fails_leaves_no_session_and_no_spent_nonce(
    service: Service, issuer: Issuer, db: asyncpg.Pool, refuse_events: Any, returning: bool
) -> None:
    """Sign-in is one transaction (a returning user's, one statement: service/signins.py):
    nonce, user, session and event commit together or not."""
    if returning:
        await service.browser().sign_in(issuer, email="ada@gmail.com")
    before = await db.fetchrow(
        "SELECT (SELECT count(*) FROM sessions) AS sessions,"
        " (SELECT count(*) FROM spent_nonces) AS nonces, (SELECT count(*) FROM users) AS users"
    )
    browser = service.browser()
    nonce = await browser.new_nonce()
    credential = issuer.token(email="ada@gmail.com", nonce=nonce)
    await refuse_events("login_ok")

    failed = await browser.post("/api/login", json={"credential": credential})

    assert failed.status == 500
    left = await db.fetchrow(
        "SELECT (SELECT count(*) FROM sessions) AS sessions,"
        " (SELECT count(*) FROM spent_nonces) AS nonces, (SELECT count(*) FROM users) AS users"
    )
    assert dict(left) == dict(before)
    # Nothing was spent: once events can be written, the same sign-in goes through.
    await db.execute("ALTER TABLE auth_events DROP CONSTRAINT refused")
    retried = await browser.post("/api/login", json={"credential": credential})
    assert retried.status == 200, await retried.text()
    assert await db.fetchval("SELECT count(*) FROM spent_nonces") == before["nonces"] + 1


# --- the kinds of event ---------------------------------------------------------------------

SERVICE = Path(__file__).resolve().parent.parent / "service"
# An INSERT into auth_events names its kind as a literal, or takes it as audit.record's $1.
INSERT = re.compile(r"INSERT INTO auth_events \([^)]*\)\s*(SELECT\s+'(\w+)'|VALUES \(\$1,)")


def recorded_kinds() -> set[str]:
    """Every kind the service's code records: the literal kind of each call to `audit.record`
    (or to a function that passes its own `kind` on to it, such as the admin routes' `_record`),
    and of each INSERT INTO auth_events written out in SQL."""
    trees = {path: ast.parse(path.read_text()) for path in SERVICE.rglob("*.py")}
    recorders = {"audit.record": 1}  # a callable, and where its kind is among its arguments
    forwarding: set[ast.Call] = set()  # the calls in which a recorder passes its kind on

    def calls(tree: ast.AST) -> list[tuple[ast.Call, ast.expr]]:
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                position = recorders.get(ast.unparse(node.func))
                if position is not None and len(node.args) > position:
                    found.append((node, node.args[position]))
        return found

    for tree in trees.values():
        for function in ast.walk(tree):
            if isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef):
                parameters = [a.arg for a in function.args.args]
                for call, kind in calls(function):
                    if isinstance(kind, ast.Name) and kind.id in parameters:
                        recorders[function.name] = parameters.index(kind.id)
                        forwarding.add(call)

    kinds: set[str] = set()
    for path, tree in trees.items():
        for call, kind in calls(tree):
            if call in forwarding:
                continue
            assert isinstance(kind, ast.Constant) and isinstance(kind.value, str), (
                f"{path.name}:{call.lineno}: the kind is not written out"
            )
            kinds.add(kind.value)
        for match in INSERT.finditer(path.read_text()):
            if match[2]:
                kinds.add(match[2])
            else:
                assert path.name == "audit.py", f"{path.name}: an INSERT whose kind is a parameter"
    return kinds


def test_the_known_kinds_are_exactly_the_kinds_the_service_records() -> None:
    recorded = recorded_kinds()

    assert len(recorded) > 10  # the scan does find them
    assert set(audit.KINDS) == recorded
    assert len(audit.KINDS) == len(recorded)  # and lists each once
