"""Housekeeping: a background task that deletes rows that have outlived their use.

Dead sessions, spent nonces, whole rate budgets, old session changes and auth events past
AUDIT_RETENTION_DAYS.
Requests never rely on it: expiry is decided when a session is looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from service import audit, nonces, ratelimit, session_cache, sessions
from service.config import CONFIG, Config
from service.db import DATABASE_UNAVAILABLE, POOL
from service.metrics import METRICS, Metrics

log = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0


async def purge_forever(
    pool: asyncpg.Pool, config: Config, metrics: Metrics, *, every: float
) -> None:
    changes = session_cache.ChangeLogPurge()

    async def purge_sessions() -> None:
        if purged := await sessions.purge_expired(pool, idle_timeout=config.session_idle_timeout):
            log.info("purged %d expired sessions", purged)
            metrics.sessions_ended("expired", purged)

    async def purge_events() -> None:
        if config.audit_retention_days and (
            events := await audit.purge_older_than(pool, config.audit_retention_days)
        ):
            log.info("purged %d auth events past AUDIT_RETENTION_DAYS", events)

    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "sessions": purge_sessions,
        "spent nonces": lambda: nonces.purge_spent(pool),
        "rate budgets": lambda: ratelimit.purge_expired(pool),
        "session changes": lambda: changes.run(pool),
        "auth events": purge_events,
    }
    while True:
        for name, step in steps.items():  # one failing does not hold up the others
            try:
                await step()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                log.warning("purging %s failed, will retry: %s", name, type(error).__name__)
        await asyncio.sleep(every)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        purge_forever(app[POOL], app[CONFIG], app[METRICS], every=PURGE_INTERVAL)
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
