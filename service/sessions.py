"""Sessions: the `sessions` table, keyed by the SHA-256 of a secret token only the browser holds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from service.config import CONFIG
from service.db import POOL
from service.users import User

log = logging.getLogger(__name__)


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


def generate_session_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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
       s.last_seen_at < now() - make_interval(secs => $3) AS stale
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = $1
  AND s.expires_at > now()
  AND s.last_seen_at > now() - make_interval(secs => $2)
"""


async def validate_session_token(
    pool: asyncpg.Pool, token: str, *, idle_timeout: int, touch_interval: float
) -> CurrentSession | None:
    """The live session for `token`, or None; keeps it alive by writing `last_seen_at`, rarely."""
    row = await pool.fetchrow(_VALIDATE, hash_token(token), idle_timeout, touch_interval)
    if row is None:
        return None
    session = Session.from_row(row)
    user = User(**{name: row[f"user_{name}"] for name in User.__dataclass_fields__})
    if row["stale"]:
        await pool.execute("UPDATE sessions SET last_seen_at = now() WHERE id = $1", session.id)
    return CurrentSession(session, user)


async def invalidate_session_token(
    conn: asyncpg.Connection | asyncpg.Pool, token: str
) -> tuple[uuid.UUID, int] | None:
    """Delete the session for `token`; its (id, user_id) when there was one."""
    row = await conn.fetchrow(
        "DELETE FROM sessions WHERE token_hash = $1 RETURNING id, user_id", hash_token(token)
    )
    return None if row is None else (row["id"], row["user_id"])


async def purge_expired(pool: asyncpg.Pool, *, idle_timeout: int, batch: int = 1000) -> int:
    """Delete dead sessions and spent nonces in small batches, so no lock is held for long."""
    purged = 0
    while True:
        status = await pool.execute(
            """
            DELETE FROM sessions WHERE id IN (
                SELECT id FROM sessions
                WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1)
                LIMIT $2
            )
            """,
            idle_timeout,
            batch,
        )
        deleted = int(status.split()[-1])
        purged += deleted
        if deleted < batch:
            break
    await pool.execute("DELETE FROM spent_nonces WHERE expires_at <= now()")
    return purged


async def purge_forever(pool: asyncpg.Pool, *, idle_timeout: int, every: float) -> None:
    while True:
        try:
            purged = await purge_expired(pool, idle_timeout=idle_timeout)
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("purging expired sessions failed, will retry: %s", error)
        else:
            if purged:
                log.info("purged %d expired sessions", purged)
        await asyncio.sleep(every)


PURGE_INTERVAL = 60.0


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delete dead sessions in the background; requests never rely on it to refuse them."""
    task = asyncio.create_task(
        purge_forever(
            app[POOL], idle_timeout=app[CONFIG].session_idle_timeout, every=PURGE_INTERVAL
        )
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
