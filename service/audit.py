"""Auth events: the `auth_events` table, an append-only record of sign-ins and revocations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.db import delete_in_batches

# The same failed sign-in repeated within this window is one event, counted.
FAILURE_WINDOW_MINUTES = 10


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


async def record_failed_login(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    ip: str | None,
    user_agent: str,
    source: str,
    error: str,
    email: str | None,
) -> None:
    """A `login_failed` event, or one more on the count of the same failure's recent event.

    The same failure is one from the same source (whose login budget it spent: an IPv4
    address or an IPv6 network) for the same email, with the same error. Anonymous clients can
    fail as often as their budget lets them; counting repeats on one row keeps what they can
    make the table grow by small. One statement.
    """
    await conn.execute(
        """
        WITH recent AS (
            UPDATE auth_events SET detail = detail || jsonb_build_object(
                'count', coalesce((detail->>'count')::bigint, 1) + 1,
                'last_at', now()
            )
            WHERE id = (
                SELECT id FROM auth_events
                WHERE kind = 'login_failed' AND detail->>'source' = $3
                  AND at > now() - make_interval(mins => $6)
                  AND detail->>'error' = $4 AND detail->>'email' IS NOT DISTINCT FROM $5
                ORDER BY detail->>'source', at DESC LIMIT 1
            )
            RETURNING id
        )
        INSERT INTO auth_events (kind, user_id, ip, user_agent, detail)
        SELECT 'login_failed', NULL, $1, $2, jsonb_build_object(
            'source', $3::text, 'error', $4::text, 'email', $5::text, 'count', 1
        )
        WHERE NOT EXISTS (SELECT 1 FROM recent)
        """,
        ip,
        user_agent,
        source,
        error,
        email,
        FAILURE_WINDOW_MINUTES,
    )


async def purge_older_than(pool: asyncpg.Pool, days: int, *, batch: int = 1000) -> int:
    """Delete events older than `days` (AUDIT_RETENTION_DAYS); how many."""
    return await delete_in_batches(
        pool,
        "DELETE FROM auth_events WHERE id IN (SELECT id FROM auth_events"
        " WHERE at < now() - make_interval(days => $2) LIMIT $1)",
        batch,
        days,
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
        SELECT e.id, e.at, e.kind, e.user_id, coalesce(e.email, u.email) AS email, e.ip,
               e.user_agent, e.detail
        FROM auth_events e LEFT JOIN users u ON u.id = e.user_id
        WHERE ($1::bigint IS NULL OR e.user_id = $1)
          AND ($2::text IS NULL OR e.kind = $2)
          AND ($3::bigint IS NULL OR e.id < $3)
        ORDER BY e.id DESC LIMIT $4
        """,
        user_id,
        kind,
        before,
        limit + 1,
    )
    events = [AuthEvent(**dict(row)) for row in rows[:limit]]
    return events, events[-1].id if len(rows) > limit else None
