"""Login rate limiting: the `login_rate` table, one row per client, shared by all workers.

The generic cell rate algorithm: a limit of N per period lets N attempts through at once, then
one more every period/N seconds. Each attempt is one upsert of its own client's row, so workers
and instances agree and different clients never wait for each other. The table is UNLOGGED
(migration 0007): an attempt's commit waits for no disk, and a crash or a failover only
forgets budgets (every client has its whole budget again).
"""

from __future__ import annotations

import ipaddress
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


def client_key(ip: str | None, *, ipv6_prefix: int) -> str:
    """Whose budget an attempt spends: an IPv4 address, or the IPv6 network it is part of.

    One IPv6 host usually holds a whole /64 and could rotate through it for fresh budgets.
    """
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{ipv6_prefix}", strict=False))
    return str(address)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
