"""Housekeeping: a background task that deletes dead sessions, spent nonces and old rate rows.

Requests never rely on it: expiry is decided when a session is looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from service import nonces, ratelimit, sessions
from service.config import CONFIG
from service.db import DATABASE_UNAVAILABLE, POOL

log = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0


async def purge_forever(pool: asyncpg.Pool, *, idle_timeout: int, every: float) -> None:
    while True:
        try:
            purged = await sessions.purge_expired(pool, idle_timeout=idle_timeout)
            await nonces.purge_spent(pool)
            await ratelimit.purge_expired(pool)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning("purging expired sessions failed, will retry: %s", type(error).__name__)
        else:
            if purged:
                log.info("purged %d expired sessions", purged)
        await asyncio.sleep(every)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(
        purge_forever(
            app[POOL], idle_timeout=app[CONFIG].session_idle_timeout, every=PURGE_INTERVAL
        )
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
