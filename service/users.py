"""Users: the `users` table and how a verified Google identity becomes one of its rows."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.auth import GoogleIdentity
from service.errors import Conflict, Forbidden


@dataclass(frozen=True)
class User:
    id: int
    google_sub: str | None
    email: str
    name: str
    picture: str
    admin: bool
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "username": self.email,
            "name": self.name,
            "picture": self.picture,
            "admin": self.admin,
        }

    @functools.cached_property
    def public_json(self) -> bytes:
        """`public()` as JSON, encoded once: a session answered from memory keeps its user."""
        return json.dumps(self.public()).encode()


async def sign_in(conn: asyncpg.Connection, identity: GoogleIdentity, make_admin: bool) -> User:
    """Find or create the user for `identity` and record the sign-in; run inside a transaction.

    A row is matched on Google's `sub`; a pre-provisioned row (no `sub` yet) is claimed by
    email only where Google is authoritative for the address.
    """
    row = await _claimable(conn, identity)
    if row is None:
        row = await conn.fetchrow(
            """
            INSERT INTO users (google_sub, email, name, picture, admin, last_login_at)
            VALUES ($1, $2, $3, $4, $5, now())
            ON CONFLICT DO NOTHING
            RETURNING *
            """,
            identity.sub,
            identity.email,
            identity.name,
            identity.picture,
            make_admin,
        )
        if row is not None:
            return User.from_row(row)
        # A concurrent first sign-in inserted the row and committed (ON CONFLICT waited for
        # it), so this statement sees it: sign in to that row as to any other.
        row = await _claimable(conn, identity)
        if row is None:
            raise Conflict("account_conflict", "This account is being changed; try again.")
    if row["disabled"]:
        raise Forbidden("user_disabled", "This account is disabled.")
    try:
        row = await conn.fetchrow(
            """
            UPDATE users SET google_sub = $2, email = $3, name = $4, picture = $5,
                admin = admin OR $6, last_login_at = now()
            WHERE id = $1
            RETURNING *
            """,
            row["id"],
            identity.sub,
            identity.email,
            identity.name or row["name"],
            identity.picture,
            make_admin,
        )
    except asyncpg.UniqueViolationError:  # the account's new email is another row's
        raise _email_taken() from None
    assert row is not None
    return User.from_row(row)


async def _claimable(conn: asyncpg.Connection, identity: GoogleIdentity) -> asyncpg.Record | None:
    """The row `identity` signs in to, locked; None for a new user; Conflict when it may not."""
    row = await conn.fetchrow("SELECT * FROM users WHERE google_sub = $1 FOR UPDATE", identity.sub)
    if row is not None:
        return row
    row = await conn.fetchrow(
        "SELECT * FROM users WHERE lower(email) = lower($1) FOR UPDATE", identity.email
    )
    if row is None or row["google_sub"] == identity.sub:  # ours if a first sign-in just made it
        return row
    if row["google_sub"] is not None or not identity.google_is_authoritative:
        raise _email_taken()
    return row


def _email_taken() -> Conflict:
    return Conflict(
        "account_conflict", "This email address belongs to another account; ask an administrator."
    )


async def create(
    conn: asyncpg.Connection | asyncpg.Pool,
    email: str,
    *,
    name: str = "",
    admin: bool = False,
    disabled: bool = False,
) -> User | None:
    """Pre-provision a user by email; None when the address is already taken."""
    row = await conn.fetchrow(
        """
        INSERT INTO users (email, name, admin, disabled) VALUES ($1, $2, $3, $4)
        ON CONFLICT DO NOTHING RETURNING *
        """,
        email,
        name,
        admin,
        disabled,
    )
    return None if row is None else User.from_row(row)


@dataclass(frozen=True)
class UserSummary:
    """A user as an administrator sees it, with the number of live sessions."""

    user: User
    live_sessions: int

    def public(self) -> dict[str, Any]:
        user = self.user
        return {
            **user.public(),
            "disabled": user.disabled,
            "linked": user.google_sub is not None,
            "created_at": user.created_at.isoformat(),
            "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
            "live_sessions": self.live_sessions,
        }


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_page(
    pool: asyncpg.Pool, *, query: str | None, offset: int, limit: int
) -> tuple[list[User], int]:
    """Users whose email or name contains `query`, oldest first, and how many match."""
    pattern = None if query is None else _like_pattern(query)
    rows = await pool.fetch(
        """
        SELECT *, count(*) OVER () AS total FROM users
        WHERE $1::text IS NULL OR email ILIKE $1 OR name ILIKE $1
        ORDER BY id OFFSET $2 LIMIT $3
        """,
        pattern,
        offset,
        limit,
    )
    page = [User.from_row(row) for row in rows]
    if rows or offset == 0:
        return page, rows[0]["total"] if rows else 0
    total: int = await pool.fetchval(  # past the last page: count without it
        "SELECT count(*) FROM users WHERE $1::text IS NULL OR email ILIKE $1 OR name ILIKE $1",
        pattern,
    )
    return page, total


async def get(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> User | None:
    row = await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    return None if row is None else User.from_row(row)


async def find_by_email(conn: asyncpg.Connection | asyncpg.Pool, email: str) -> User | None:
    row = await conn.fetchrow("SELECT * FROM users WHERE lower(email) = lower($1)", email)
    return None if row is None else User.from_row(row)


# Changes that may take away an administrator take this lock in turn, so two admins demoting
# each other at once cannot leave none.
ADMIN_CHANGES_LOCK = 7_245_811_204


async def lock_admin_changes(conn: asyncpg.Connection, *, actor_session: uuid.UUID) -> None:
    """Take the admin-changes lock, then check that the acting session is still an admin's.

    The request was admitted before the lock, and another admin may have disabled, demoted or
    signed out this one since; under the lock no such change can land until this one commits.
    Run inside a transaction.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_CHANGES_LOCK)
    still_admin = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
            WHERE s.id = $1 AND s.expires_at > now() AND u.admin AND NOT u.disabled
        )
        """,
        actor_session,
    )
    if not still_admin:
        raise Forbidden("admin_only", "This needs an administrator; you are no longer one.")


async def _keep_an_admin(conn: asyncpg.Connection) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE admin AND NOT disabled)"):
        raise Conflict("last_admin", "This would leave no enabled administrator.")


async def set_flags(
    conn: asyncpg.Connection,
    user_id: int,
    *,
    disabled: bool | None = None,
    admin: bool | None = None,
) -> User | None:
    """Change `disabled` and/or `admin` (None keeps it); the user, or None if there is none.

    Run inside a transaction; Conflict when no enabled administrator would be left.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_CHANGES_LOCK)
    before = await conn.fetchrow("SELECT admin, disabled FROM users WHERE id = $1", user_id)
    if before is None:
        return None
    row = await conn.fetchrow(
        """
        UPDATE users SET disabled = coalesce($2, disabled), admin = coalesce($3, admin)
        WHERE id = $1 RETURNING *
        """,
        user_id,
        disabled,
        admin,
    )
    assert row is not None
    was_admin = before["admin"] and not before["disabled"]
    if was_admin and (row["disabled"] or not row["admin"]):
        await _keep_an_admin(conn)
    return User.from_row(row)


async def delete(conn: asyncpg.Connection, user_id: int) -> User | None:
    """Delete a user (their sessions go with them); the deleted user, or None.

    Run inside a transaction; Conflict when no enabled administrator would be left.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_CHANGES_LOCK)
    row = await conn.fetchrow("DELETE FROM users WHERE id = $1 RETURNING *", user_id)
    if row is not None and row["admin"] and not row["disabled"]:
        await _keep_an_admin(conn)
    return None if row is None else User.from_row(row)


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[User]:
    return [User.from_row(row) for row in await conn.fetch("SELECT * FROM users ORDER BY id")]
