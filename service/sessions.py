"""Sessions: the `sessions` table, keyed by the SHA-256 of a secret token only the browser holds."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.db import delete_in_batches
from service.users import User


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Session:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "ip": self.ip,
            "user_agent": self.user_agent,
        }


@dataclass(frozen=True)
class CurrentSession:
    """A validated session and its user, as the middleware attaches them to a request."""

    session: Session
    user: User


@dataclass(frozen=True)
class SessionCheck:
    """A live session as the database saw it just now, and how long it stays live."""

    current: CurrentSession
    expires_in: float  # seconds until the absolute timeout
    last_seen_age: float  # seconds since `last_seen_at` was written (0: just now)


def generate_session_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    # surrogateescape: a cookie with bytes that are not UTF-8 still hashes (to no session).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


async def create_session(
    conn: asyncpg.Connection | asyncpg.Pool,
    token: str,
    user_id: int,
    *,
    lifetime: int,
    ip: str | None,
    user_agent: str,
) -> Session:
    row = await conn.fetchrow(
        """
        INSERT INTO sessions (token_hash, user_id, expires_at, ip, user_agent)
        VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)
        RETURNING *
        """,
        hash_token(token),
        user_id,
        lifetime,
        ip,
        user_agent,
    )
    assert row is not None
    return Session.from_row(row)


# One indexed lookup; idle and absolute expiry are decided here, on the database's clock.
_VALIDATE = """
SELECT s.id, s.created_at, s.last_seen_at, s.expires_at, s.ip, s.user_agent,
       u.id AS user_id, u.google_sub AS user_google_sub, u.email AS user_email,
       u.name AS user_name, u.picture AS user_picture, u.admin AS user_admin,
       u.disabled AS user_disabled, u.created_at AS user_created_at,
       u.last_login_at AS user_last_login_at,
       s.last_seen_at < now() - make_interval(secs => $3) AS stale,
       extract(epoch FROM s.expires_at - now())::float8 AS expires_in,
       extract(epoch FROM now() - s.last_seen_at)::float8 AS last_seen_age
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = $1
  AND s.expires_at > now()
  AND s.last_seen_at > now() - make_interval(secs => $2)
"""


async def validate_session_token(
    pool: asyncpg.Pool, token_hash: bytes, *, idle_timeout: int, touch_interval: float
) -> SessionCheck | None:
    """The live session whose token hashes to `token_hash`, or None.

    Keeps the session alive by writing `last_seen_at`, at most once per `touch_interval`.
    """
    row = await pool.fetchrow(_VALIDATE, token_hash, idle_timeout, touch_interval)
    if row is None:
        return None
    session = Session.from_row(row)
    user = User(**{name: row[f"user_{name}"] for name in User.__dataclass_fields__})
    last_seen_age = row["last_seen_age"]
    if row["stale"]:
        await touch(pool, session.id)
        last_seen_age = 0.0
    return SessionCheck(CurrentSession(session, user), row["expires_in"], last_seen_age)


async def touch(pool: asyncpg.Pool, session_id: uuid.UUID) -> None:
    """Record activity; a write of `last_seen_at` alone notifies no session cache."""
    await pool.execute("UPDATE sessions SET last_seen_at = now() WHERE id = $1", session_id)


async def invalidate_session_token(
    conn: asyncpg.Connection | asyncpg.Pool, token: str
) -> tuple[uuid.UUID, int] | None:
    """Delete the session for `token`; its (id, user_id) when there was one."""
    row = await conn.fetchrow(
        "DELETE FROM sessions WHERE token_hash = $1 RETURNING id, user_id", hash_token(token)
    )
    return None if row is None else (row["id"], row["user_id"])


async def list_for_user(pool: asyncpg.Pool, user_id: int, *, idle_timeout: int) -> list[Session]:
    """The user's live sessions, newest first."""
    rows = await pool.fetch(
        """
        SELECT * FROM sessions
        WHERE user_id = $1 AND expires_at > now()
          AND last_seen_at > now() - make_interval(secs => $2)
        ORDER BY created_at DESC, id
        """,
        user_id,
        idle_timeout,
    )
    return [Session.from_row(row) for row in rows]


async def invalidate_session(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: uuid.UUID, *, user_id: int | None = None
) -> int | None:
    """Delete one session (only if it is `user_id`'s, when given); the owner's id, or None."""
    owner: int | None = await conn.fetchval(
        """
        DELETE FROM sessions WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)
        RETURNING user_id
        """,
        session_id,
        user_id,
    )
    return owner


async def invalidate_user_sessions(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: int, *, keep: uuid.UUID | None = None
) -> int:
    """Delete all of a user's sessions, but `keep`; how many there were."""
    status: str = await conn.execute(
        "DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2", user_id, keep
    )
    return int(status.split()[-1])


async def count_live(
    pool: asyncpg.Pool, user_ids: list[int], *, idle_timeout: int
) -> dict[int, int]:
    """How many live sessions each of these users has (absent: none)."""
    rows = await pool.fetch(
        """
        SELECT user_id, count(*) AS live FROM sessions
        WHERE user_id = ANY($1::bigint[]) AND expires_at > now()
          AND last_seen_at > now() - make_interval(secs => $2)
        GROUP BY user_id
        """,
        user_ids,
        idle_timeout,
    )
    return {row["user_id"]: row["live"] for row in rows}


@dataclass(frozen=True)
class UserSession:
    """A session with whose it is, as an administrator sees it."""

    session: Session
    user_id: int
    email: str

    def public(self) -> dict[str, Any]:
        return {**self.session.public(), "user_id": self.user_id, "email": self.email}


async def list_live(
    pool: asyncpg.Pool, *, user_id: int | None, idle_timeout: int, offset: int, limit: int
) -> tuple[list[UserSession], int]:
    """Live sessions of everyone (or one user), newest first, and how many there are."""
    rows = await pool.fetch(
        """
        SELECT s.*, u.email, count(*) OVER () AS total
        FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE ($1::bigint IS NULL OR s.user_id = $1) AND s.expires_at > now()
          AND s.last_seen_at > now() - make_interval(secs => $2)
        ORDER BY s.created_at DESC, s.id
        OFFSET $3 LIMIT $4
        """,
        user_id,
        idle_timeout,
        offset,
        limit,
    )
    page = [UserSession(Session.from_row(row), row["user_id"], row["email"]) for row in rows]
    if rows or offset == 0:
        return page, rows[0]["total"] if rows else 0
    total: int = await pool.fetchval(  # past the last page: count without it
        """
        SELECT count(*) FROM sessions
        WHERE ($1::bigint IS NULL OR user_id = $1) AND expires_at > now()
          AND last_seen_at > now() - make_interval(secs => $2)
        """,
        user_id,
        idle_timeout,
    )
    return page, total


async def purge_expired(pool: asyncpg.Pool, *, idle_timeout: int, batch: int = 1000) -> int:
    """Delete dead sessions in small batches, so no lock is held for long.

    Expired and idle are two queries, so that each uses its own index.
    """
    expired = await delete_in_batches(
        pool,
        "DELETE FROM sessions WHERE id IN"
        " (SELECT id FROM sessions WHERE expires_at <= now() LIMIT $1)",
        batch,
    )
    idle = await delete_in_batches(
        pool,
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions"
        " WHERE last_seen_at <= now() - make_interval(secs => $2) LIMIT $1)",
        batch,
        idle_timeout,
    )
    return expired + idle
