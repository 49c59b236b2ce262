"""Users: the `users` table and how a verified Google identity becomes one of its rows."""

from __future__ import annotations

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


async def sign_in(conn: asyncpg.Connection, identity: GoogleIdentity, make_admin: bool) -> User:
    """Find or create the user for `identity` and record the sign-in; run inside a transaction.

    A row is matched on Google's `sub`; a pre-provisioned row (no `sub` yet) is claimed by
    email only where Google is authoritative for the address.
    """
    row = await conn.fetchrow("SELECT * FROM users WHERE google_sub = $1 FOR UPDATE", identity.sub)
    if row is None:
        row = await conn.fetchrow(
            "SELECT * FROM users WHERE lower(email) = lower($1) FOR UPDATE",
            identity.email,
        )
        if row is not None and (
            row["google_sub"] is not None or not identity.google_is_authoritative
        ):
            raise Conflict(
                "account_conflict",
                "This email address belongs to another account; ask an administrator.",
            )
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
        if row is None:  # a concurrent first sign-in with the same sub or email won the race
            raise Conflict("account_conflict", "This account is being created; try again.")
        return User.from_row(row)
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
        raise Conflict(
            "account_conflict",
            "This email address belongs to another account; ask an administrator.",
        ) from None
    assert row is not None
    return User.from_row(row)


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
