"""Login rate limiting: the `login_rate` table, one row per client IP, shared by all workers.

The generic cell rate algorithm: a limit of N per period lets N attempts through at once, then
one more every period/N seconds. Each attempt is one upsert, so workers and instances agree.
"""

from __future__ import annotations

import math

import asyncpg

from service.config import RateLimit


async def hit(pool: asyncpg.Pool, key: str, limit: RateLimit) -> float:
    """Count one attempt; 0 when allowed, else the seconds until one more would be."""
    interval = limit.period / limit.count
    tolerance = limit.period - interval
    allowed = await pool.fetchval(
        """
        INSERT INTO login_rate AS r (ip, tat) VALUES ($1, now() + make_interval(secs => $2))
        ON CONFLICT (ip) DO UPDATE
            SET tat = greatest(r.tat, now()) + make_interval(secs => $2)
            WHERE greatest(r.tat, now()) <= now() + make_interval(secs => $3)
        RETURNING true
        """,
        key,
        interval,
        tolerance,
    )
    if allowed:
        return 0.0
    wait: float = await pool.fetchval(
        "SELECT extract(epoch FROM tat - now()) - $2 FROM login_rate WHERE ip = $1",
        key,
        tolerance,
    )
    return max(wait, 0.0)


async def purge_expired(pool: asyncpg.Pool) -> None:
    """Forget clients whose budget is whole again."""
    await pool.execute("DELETE FROM login_rate WHERE tat < now()")


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
