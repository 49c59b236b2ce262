"""Auth events: the `auth_events` table, an append-only record of sign-ins and revocations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    kind: str,
    *,
    user_id: int | None,
    ip: str | None,
    user_agent: str,
    **detail: Any,
) -> None:
    """Append one event; `detail` must never hold a token, cookie or nonce secret.

    The user's email is copied in as it is now, so the event still says who it was after the
    address changes or the user is deleted.
    """
    await conn.execute(
        """
        INSERT INTO auth_events (kind, user_id, email, ip, user_agent, detail)
        VALUES ($1, $2, (SELECT email FROM users WHERE id = $2), $3, $4, $5)
        """,
        kind,
        user_id,
        ip,
        user_agent,
        detail,
    )


@dataclass(frozen=True)
class AuthEvent:
    id: int
    at: datetime
    kind: str
    user_id: int | None
    email: str | None
    ip: str | None
    user_agent: str
    detail: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


async def list_page(
    pool: asyncpg.Pool, *, user_id: int | None, kind: str | None, before: int | None, limit: int
) -> tuple[list[AuthEvent], int | None]:
    """Events newest first, and the `before` of the next page (None on the last one).

    `before` is the id of the last event of the previous page; one row more than asked for
    tells whether there is a next page, so no empty last page is ever needed.
    """
    rows = await pool.fetch(
        """
        SELECT id, at, kind, user_id, email, ip, user_agent, detail
        FROM auth_events
        WHERE ($1::bigint IS NULL OR user_id = $1)
          AND ($2::text IS NULL OR kind = $2)
          AND ($3::bigint IS NULL OR id < $3)
        ORDER BY id DESC LIMIT $4
        """,
        user_id,
        kind,
        before,
        limit + 1,
    )
    events = [AuthEvent(**dict(row)) for row in rows[:limit]]
    return events, events[-1].id if len(rows) > limit else None
