"""Operator commands: users and sessions from a shell, through the same query modules as the API.

Each command prints what it did and returns an exit status; an unknown email or session is an
error, never a silent success. Every change is recorded in `auth_events` as done by the CLI.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import asyncpg
from email_validator import EmailNotValidError

from service import audit, sessions, users
from service.config import Config
from service.db import init_connection
from service.payload import normalized_email

# Who an operator change is recorded as: no user, no IP, the CLI as its user agent.
CLI: dict[str, Any] = {"user_id": None, "ip": None, "user_agent": "python -m service"}


class OperatorError(Exception):
    """A command that cannot be done; its message says why."""


def out(line: str) -> None:
    sys.stdout.write(line + "\n")


async def _user(conn: asyncpg.Connection, email: str) -> users.User:
    user = await users.find_by_email(conn, email)
    if user is None:
        raise OperatorError(f"no user with the email {email}")
    return user


def _describe(user: users.User) -> str:
    flags = [flag for flag, on in (("admin", user.admin), ("disabled", user.disabled)) if on]
    linked = "linked" if user.google_sub else "not signed in yet"
    return f"{user.id}\t{user.email}\t{' '.join(flags) or '-'}\t{linked}"


async def list_users(conn: asyncpg.Connection, config: Config) -> None:
    for user in await users.list_all(conn):
        out(_describe(user))


async def add_user(conn: asyncpg.Connection, email: str, admin: bool) -> None:
    try:
        email = normalized_email(email)
    except EmailNotValidError as error:
        raise OperatorError(f"{email!r} is not a valid email address: {error}") from None
    async with conn.transaction():
        user = await users.create(conn, email, admin=admin)
        if user is None:
            raise OperatorError(f"a user with the email {email} already exists")
        await audit.record(
            conn, "operator_user_created", **CLI, target_user_id=user.id, admin=admin
        )
    out(f"added {_describe(user)}")


async def set_user_flag(conn: asyncpg.Connection, email: str, **flag: bool) -> None:
    async with conn.transaction():
        user = await _user(conn, email)
        changed = await users.set_flags(conn, user.id, **flag)
        assert changed is not None
        # Disabling ends every session in the same transaction.
        revoked = (
            await sessions.invalidate_user_sessions(conn, user.id) if flag.get("disabled") else 0
        )
        await audit.record(
            conn,
            "operator_user_updated",
            **CLI,
            target_user_id=user.id,
            changes=flag,
            sessions_revoked=revoked,
        )
    out(f"{_describe(changed)}" + (f"\t({revoked} sessions revoked)" if revoked else ""))


async def list_sessions(conn: asyncpg.Connection, config: Config, email: str | None) -> None:
    user_id = (await _user(conn, email)).id if email is not None else None
    page, total = await sessions.list_live(
        conn, user_id=user_id, idle_timeout=config.session_idle_timeout, offset=0, limit=10_000
    )
    for item in page:
        s = item.session
        out(
            f"{s.id}\t{item.email}\tcreated {s.created_at:%Y-%m-%d %H:%M}\t"
            f"last seen {s.last_seen_at:%Y-%m-%d %H:%M}\t{s.ip or '-'}\t{s.user_agent[:60]}"
        )
    out(f"{total} live sessions")


async def revoke_session(conn: asyncpg.Connection, session_id: str) -> None:
    try:
        parsed = uuid.UUID(session_id)
    except ValueError:
        raise OperatorError(f"{session_id!r} is not a session id") from None
    async with conn.transaction():
        owner = await sessions.invalidate_session(conn, parsed)
        if owner is None:
            raise OperatorError(f"no session {session_id}")
        await audit.record(
            conn, "operator_session_revoked", **CLI, target_user_id=owner, session_id=session_id
        )
    out(f"revoked session {session_id}")


async def revoke_user_sessions(conn: asyncpg.Connection, email: str) -> None:
    async with conn.transaction():
        user = await _user(conn, email)
        revoked = await sessions.invalidate_user_sessions(conn, user.id)
        await audit.record(
            conn, "operator_sessions_revoked", **CLI, target_user_id=user.id, count=revoked
        )
    out(f"revoked {revoked} sessions of {user.email}")


async def purge_expired(conn: asyncpg.Connection, config: Config) -> None:
    purged = await sessions.purge_expired(conn, idle_timeout=config.session_idle_timeout)
    out(f"purged {purged} expired sessions")


async def run(dsn: str, config: Config, args: Any) -> None:
    # Not the service's pool's name: the sessions the CLI ends are counted as ended outside
    # the service (migration 0009), whatever DATABASE_URL's application_name says.
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "session-service-cli"})
    try:
        await init_connection(conn)
        await _dispatch(conn, config, args)
    finally:
        await conn.close()


async def _dispatch(conn: asyncpg.Connection, config: Config, args: Any) -> None:
    if args.command == "users":
        if args.action == "list":
            await list_users(conn, config)
        elif args.action == "add":
            await add_user(conn, args.email, args.admin)
        else:
            flag = {
                "promote": {"admin": True},
                "demote": {"admin": False},
                "disable": {"disabled": True},
                "enable": {"disabled": False},
            }[args.action]
            await set_user_flag(conn, args.email, **flag)
    elif args.action == "list":
        await list_sessions(conn, config, args.user)
    elif args.action == "revoke":
        if (args.id is None) == (args.user is None):
            raise OperatorError("name one session ID, or --user EMAIL")
        if args.id is not None:
            await revoke_session(conn, args.id)
        else:
            await revoke_user_sessions(conn, args.user)
    else:
        await purge_expired(conn, config)
