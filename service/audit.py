"""Auth events: the `auth_events` table, an append-only record of sign-ins and revocations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.db import delete_in_batches

# The same failed sign-in repeated within this window is one event, counted.
FAILURE_WINDOW_MINUTES = 10

# Every kind of event the service records; the admin page offers them as filters, and
# tests/test_audit.py checks the list against every place that records one.
KINDS = (
    "login_ok",
    "login_failed",
    "logout",
    "session_revoked",
    "sessions_revoked",
    "admin_user_created",
    "admin_user_updated",
    "admin_user_deleted",
    "admin_session_revoked",
    "admin_sessions_revoked",
    "operator_user_created",
    "operator_user_updated",
    "operator_session_revoked",
    "operator_sessions_revoked",
)


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


_PAGE = """
SELECT e.id, e.at, e.kind, e.user_id, coalesce(e.email, u.email) AS email, e.ip, e.user_agent,
       e.detail
FROM auth_events e LEFT JOIN users u ON u.id = e.user_id
WHERE ($1::bigint IS NULL OR e.user_id = $1)
  AND ($2::text IS NULL OR e.kind = $2)
  AND ($3::bigint IS NULL OR e.id < $3)
ORDER BY e.id DESC LIMIT $4
"""

# The same, of a person by email ($5, any case): the user who has the address now, found by
# `auth_events_user_id_idx`, and the failed sign-ins that tried it (which have no user), by
# `auth_events_failed_email_idx`. A statement of its own, so that no plan of it reads the whole
# table.
_PAGE_BY_EMAIL = """
SELECT e.id, e.at, e.kind, e.user_id, coalesce(e.email, u.email) AS email, e.ip, e.user_agent,
       e.detail
FROM auth_events e LEFT JOIN users u ON u.id = e.user_id
WHERE (e.user_id = (SELECT id FROM users WHERE lower(email) = lower($5))
       OR (e.kind IN ('login_failed', 'admin_user_created', 'admin_user_deleted')
           AND lower(e.detail->>'email') = lower($5)))
  AND ($1::bigint IS NULL OR e.user_id = $1)
  AND ($2::text IS NULL OR e.kind = $2)
  AND ($3::bigint IS NULL OR e.id < $3)
ORDER BY e.id DESC LIMIT $4
"""


async def list_page(
    pool: asyncpg.Pool,
    *,
    user_id: int | None,
    kind: str | None,
    before: int | None,
    limit: int,
    user_email: str | None = None,
) -> tuple[list[AuthEvent], int | None]:
    """Events newest first, and the `before` of the next page (None on the last one).

    `before` is the id of the last event of the previous page; one row more than asked for
    tells whether there is a next page, so no empty last page is ever needed.

    `user_email` finds a person: the events of the user who has that address now, and the
    failed sign-ins that tried it. (A deleted user's events are found by `user_id`.)
    """
    args = (user_id, kind, before, limit + 1)
    if user_email is None:
        rows = await pool.fetch(_PAGE, *args)
    else:
        rows = await pool.fetch(_PAGE_BY_EMAIL, *args, user_email)
    events = [AuthEvent(**dict(row)) for row in rows[:limit]]
    return events, events[-1].id if len(rows) > limit else None


# The sign-ins chart: the last WINDOW_HOURS hours, whole hours on the database's clock (the
# last one is the hour under way). Both queries read the window's rows only, through an index on
# `at` (auth_events_at_idx; for failures alone, the planner may take auth_events_failures_idx).
WINDOW_HOURS = 24
TOP_FAILURE_REASONS = 5  # how many reasons the status shows

# An event stands for `detail.count` attempts: repeats of one failure are counted on one event
# (see record_failed_login), and fall in the hour of the first. The count is guarded (a JSON
# number, at least 1, at most a billion), so that a row written by hand cannot fail the query.
_SIGN_INS_BY_HOUR = """
WITH hours AS (
    SELECT generate_series(
        date_trunc('hour', now()) - make_interval(hours => $1 - 1),
        date_trunc('hour', now()),
        interval '1 hour'
    ) AS start
), counted AS (
    SELECT date_trunc('hour', at) AS start,
           count(*) FILTER (WHERE kind = 'login_ok') AS ok,
           sum(CASE WHEN jsonb_typeof(detail->'count') = 'number'
                    THEN least(greatest((detail->>'count')::numeric, 1), 1e9)::bigint ELSE 1 END)
               FILTER (WHERE kind = 'login_failed') AS failed
    FROM auth_events
    WHERE at >= date_trunc('hour', now()) - make_interval(hours => $1 - 1)
      AND kind IN ('login_ok', 'login_failed')
    GROUP BY 1
)
SELECT h.start, coalesce(c.ok, 0) AS ok, coalesce(c.failed, 0)::bigint AS failed
FROM hours h LEFT JOIN counted c USING (start)
ORDER BY h.start
"""

_FAILURE_REASONS = """
SELECT coalesce(detail->>'error', 'unknown') AS error,
       sum(CASE WHEN jsonb_typeof(detail->'count') = 'number'
                THEN least(greatest((detail->>'count')::numeric, 1), 1e9)::bigint ELSE 1 END
       )::bigint AS count
FROM auth_events
WHERE kind = 'login_failed' AND at >= $1
GROUP BY 1
ORDER BY count DESC, error
LIMIT $2
"""


@dataclass(frozen=True)
class SignInHour:
    start: datetime
    ok: int
    failed: int  # attempts, repeats included

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "start": self.start.isoformat()}


@dataclass(frozen=True)
class FailureReason:
    error: str  # the refusal's code, such as token_expired
    count: int

    def public(self) -> dict[str, Any]:
        return asdict(self)


async def sign_ins_by_hour(conn: asyncpg.Connection | asyncpg.Pool) -> list[SignInHour]:
    """Successful and failed sign-ins in each of the last WINDOW_HOURS hours, oldest first."""
    rows = await conn.fetch(_SIGN_INS_BY_HOUR, WINDOW_HOURS)
    return [SignInHour(**dict(row)) for row in rows]


async def failure_reasons(
    conn: asyncpg.Connection | asyncpg.Pool, *, since: datetime, limit: int
) -> list[FailureReason]:
    """The commonest reasons sign-ins failed since `since`, commonest first."""
    rows = await conn.fetch(_FAILURE_REASONS, since, limit)
    return [FailureReason(**dict(row)) for row in rows]
