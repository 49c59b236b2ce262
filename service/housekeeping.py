"""Housekeeping: a background task that deletes rows that have outlived their use.

Dead sessions, spent nonces, whole rate budgets, old session changes and auth events past
AUDIT_RETENTION_DAYS.
Requests never rely on it: expiry is decided when a session is looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from service import audit, nonces, ratelimit, session_cache, sessions
from service.config import CONFIG, Config
from service.db import DATABASE_UNAVAILABLE, POOL

log = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0


async def purge_forever(pool: asyncpg.Pool, config: Config, *, every: float) -> None:
    while True:
        try:
            purged = await sessions.purge_expired(pool, idle_timeout=config.session_idle_timeout)
            await nonces.purge_spent(pool)
            await ratelimit.purge_expired(pool)
            await session_cache.purge_changes(pool)
            if config.audit_retention_days:
                events = await audit.purge_older_than(pool, config.audit_retention_days)
                if events:
                    log.info("purged %d auth events past AUDIT_RETENTION_DAYS", events)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning("purging expired rows failed, will retry: %s", type(error).__name__)
        else:
            if purged:
                log.info("purged %d expired sessions", purged)
        await asyncio.sleep(every)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(purge_forever(app[POOL], app[CONFIG], every=PURGE_INTERVAL))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
