"""Auth events: the `auth_events` table, an append-only record of sign-ins and revocations."""

from __future__ import annotations

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
    """Append one event; `detail` must never hold a token, cookie or nonce secret."""
    await conn.execute(
        """
        INSERT INTO auth_events (kind, user_id, ip, user_agent, detail)
        VALUES ($1, $2, $3, $4, $5)
        """,
        kind,
        user_id,
        ip,
        user_agent,
        detail,
    )
