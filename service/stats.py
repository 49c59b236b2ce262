"""Live counts: how many sessions are live and how many users there are, cheap on big tables.

The admin status panel shows them, and a Prometheus gauge can read them on every scrape: so no
count may read a whole table. Each counts exactly up to EXACT_UP_TO rows (reading at most one
more); past that it is Postgres's estimate of the table's rows (`pg_class.reltuples`, kept by
autovacuum and ANALYZE). The estimate counts every row, but dead sessions are purged every
minute (service/housekeeping.py), so nearly every row of a big `sessions` table is a live one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

EXACT_UP_TO = 10_000

# The subquery stops at the limit. Ordered by `sessions_last_seen_at_idx`, so that the plan is
# always that index read backwards from the newest, which stops after EXACT_UP_TO + 1 live
# rows (a bitmap scan would first collect every recently seen one, however many).
_LIVE_SESSIONS = """
SELECT count(*) FROM (
    SELECT FROM sessions
    WHERE last_seen_at > now() - make_interval(secs => $2) AND expires_at > now()
    ORDER BY last_seen_at DESC
    LIMIT $1
) AS capped
"""
_USERS = "SELECT count(*) FROM (SELECT FROM users LIMIT $1) AS capped"
# -1 for a table never analysed; the count is then EXACT_UP_TO, the lower bound it proved.
_ESTIMATE = "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass"


@dataclass(frozen=True)
class Count:
    value: int
    exact: bool  # False: more than EXACT_UP_TO, and `value` is an estimate (never below it)


@dataclass(frozen=True)
class LiveCounts:
    sessions: Count  # live: neither expired nor idle
    users: Count  # every user, disabled ones included

    def public(self) -> dict[str, Any]:
        return {"live_sessions": asdict(self.sessions), "users": asdict(self.users)}


async def _capped(
    conn: asyncpg.Connection | asyncpg.Pool, table: str, query: str, *args: Any
) -> Count:
    counted: int = await conn.fetchval(query, EXACT_UP_TO + 1, *args)
    if counted <= EXACT_UP_TO:
        return Count(counted, exact=True)
    estimate: int = await conn.fetchval(_ESTIMATE, table)
    return Count(max(estimate, EXACT_UP_TO), exact=False)


async def live_counts(conn: asyncpg.Connection | asyncpg.Pool, *, idle_timeout: int) -> LiveCounts:
    """Live sessions and users: exact up to EXACT_UP_TO each, estimated past it."""
    return LiveCounts(
        sessions=await _capped(conn, "sessions", _LIVE_SESSIONS, idle_timeout),
        users=await _capped(conn, "users", _USERS),
    )


async def sessions_ended_outside(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Sessions ended by anyone but the service (plain SQL, the operator CLI), as Postgres has
    counted them since migration 0009: once each, whichever instance asks."""
    counted: int | None = await conn.fetchval("SELECT sessions FROM sessions_ended_outside")
    return counted or 0
