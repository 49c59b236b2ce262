"""Session cache: sessions this worker validated, kept until Postgres says they changed.

Triggers on `sessions` and `users` NOTIFY the `session_changes` channel (see migration 0003)
whenever a session is deleted or changed or a user is changed, whoever made the change: this
service, the CLI or plain SQL. Each worker LISTENs on a connection of its own and drops what a
notification names.

It fails closed. Every HEARTBEAT_EVERY the worker sends itself a notification through
Postgres; once it comes back, every change committed before it was sent has been heard, since
Postgres delivers notifications in commit order. A lookup answers from memory only while such a
proof is at most FRESH_FOR old, so a change is acted on within FRESH_FOR of its commit even if
the listener dies silently. While the listener is down, reconnecting or behind, every lookup
goes to the database, and the cache is emptied before it is trusted again. An entry lives at
most MAX_AGE seconds and never past its session's absolute or idle expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from service import sessions
from service.config import CONFIG, Config
from service.db import DATABASE_UNAVAILABLE, POOL
from service.sessions import CurrentSession

log = logging.getLogger(__name__)

CHANNEL = "session_changes"
HEARTBEAT_EVERY = 0.02
FRESH_FOR = 0.045  # with a heartbeat's own round trip, under the 50 ms promised for revocation
HEARTBEAT_TIMEOUT = 1.0
RECONNECT_DELAY = 1.0
MAX_AGE = 60.0
MAX_ENTRIES = 100_000
SWEEP_EVERY = 10.0


class ListenerLost(Exception):
    """The listener stopped hearing Postgres in time."""


@dataclass
class _Entry:
    current: CurrentSession
    cached_at: float  # all times are time.monotonic()
    expires_at: float
    touched_at: float  # when `last_seen_at` was last written

    def valid_until(self, idle_timeout: float) -> float:
        return min(self.expires_at, self.touched_at + idle_timeout, self.cached_at + MAX_AGE)


class SessionCache:
    def __init__(self, pool: asyncpg.Pool, dsn: str, config: Config) -> None:
        self._pool = pool
        self._dsn = dsn
        self._idle_timeout = float(config.session_idle_timeout)
        self._touch_interval = config.touch_interval
        self._entries: dict[bytes, _Entry] = {}
        self._by_user: dict[int, set[bytes]] = {}
        self._pings: dict[str, asyncio.Future[None]] = {}
        # Heartbeats go on a channel of this worker's own, so no other listener hears them;
        # Postgres keeps commit order across channels, which is what a heartbeat relies on.
        self._ping_channel = f"session_cache_{uuid.uuid4().hex}"
        self._ping_numbers = itertools.count()
        # Bumped by every change heard and every reconnect: a lookup that started before one
        # of those may have read what it dropped, so its result is not kept.
        self._version = 0
        self.healthy = False
        self._heard_at = -FRESH_FOR  # when the newest heartbeat that came back was sent
        self._swept_at = 0.0

    async def lookup(self, token: str) -> CurrentSession | None:
        """The live session for `token`, from memory when that is safe, else from Postgres."""
        token_hash = sessions.hash_token(token)
        now = time.monotonic()
        entry = self._entries.get(token_hash) if self._fresh(now) else None
        if entry is not None and now < entry.valid_until(self._idle_timeout):
            if now - entry.touched_at >= self._touch_interval:
                await sessions.touch(self._pool, entry.current.session.id)
                entry.touched_at = now
            return entry.current
        version, healthy = self._version, self.healthy
        check = await sessions.validate_session_token(
            self._pool,
            token_hash,
            idle_timeout=int(self._idle_timeout),
            touch_interval=self._touch_interval,
        )
        self._drop(token_hash)
        if check is None:
            return None
        if healthy and self.healthy and version == self._version:
            self._keep(token_hash, check, now)
        return check.current

    def _fresh(self, now: float) -> bool:
        return self.healthy and now - self._heard_at <= FRESH_FOR

    def _keep(self, token_hash: bytes, check: sessions.SessionCheck, now: float) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._clear()
        self._entries[token_hash] = _Entry(
            current=check.current,
            cached_at=now,
            expires_at=now + check.expires_in,
            touched_at=now - check.last_seen_age,
        )
        self._by_user.setdefault(check.current.user.id, set()).add(token_hash)

    @property
    def size(self) -> tuple[int, int]:
        """How many sessions, and how many users' sessions, this worker holds."""
        return len(self._entries), len(self._by_user)

    def _drop(self, token_hash: bytes) -> None:
        entry = self._entries.pop(token_hash, None)
        if entry is None:
            return
        user_id = entry.current.user.id
        tokens = self._by_user.get(user_id)
        if tokens is not None:
            tokens.discard(token_hash)
            if not tokens:  # a user whose last session went leaves no trace
                del self._by_user[user_id]

    def _clear(self) -> None:
        self._entries.clear()
        self._by_user.clear()
        self._version += 1

    def _on_ping(self, conn: object, pid: int, channel: str, payload: str) -> None:
        future = self._pings.pop(payload, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        self._version += 1
        try:
            if kind == "s":
                for token_hash in [bytes.fromhex(part) for part in rest.split(",")]:
                    self._drop(token_hash)
            elif kind == "u":
                for token_hash in self._by_user.pop(int(rest), set()):
                    self._entries.pop(token_hash, None)
            else:  # "flush", or anything this version does not know
                self._clear()
        except ValueError:  # a payload no trigger of ours sends: forget everything
            self._clear()

    def _on_termination(self, conn: object) -> None:
        self._lose("the listening connection closed")

    def _lose(self, why: str) -> None:
        if self.healthy:
            log.warning("session cache off until the listener is back: %s", why)
        self.healthy = False
        self._clear()

    async def catch_up(self) -> None:
        """Return once this worker has heard every change committed before the call."""
        if self.healthy:
            try:
                await self._ping()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError, ListenerLost) as error:
                self._lose(type(error).__name__)

    async def _ping(self) -> None:
        # Postgres delivers notifications in commit order, so once this one is back, every
        # change committed before it has been heard.
        name = str(next(self._ping_numbers))
        future = self._pings[name] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", self._ping_channel, name)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the future completes, and the listener would never stop.
            async with asyncio.timeout(HEARTBEAT_TIMEOUT):
                await future
            self._heard_at = max(self._heard_at, sent)
        except TimeoutError:
            raise ListenerLost("a heartbeat did not come back in time") from None
        finally:
            self._pings.pop(name, None)

    async def listen_forever(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                conn.add_termination_listener(self._on_termination)
                await conn.add_listener(CHANNEL, self._on_notification)
                await conn.add_listener(self._ping_channel, self._on_ping)
                await self._ping()  # heard from: the subscription works
                self._clear()
                self.healthy = True
                while not conn.is_closed():
                    await asyncio.sleep(HEARTBEAT_EVERY)
                    await self._ping()
                    self._sweep()
            except asyncio.CancelledError:
                self.healthy = False  # shutting down: nothing to warn about
                raise
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError, ListenerLost) as error:
                self._lose(type(error).__name__)
            finally:
                self._lose("reconnecting")
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(RECONNECT_DELAY)

    def _sweep(self) -> None:
        """Now and then, forget entries past their time (lookups skip them anyway)."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        for token_hash, entry in list(self._entries.items()):
            if now >= entry.valid_until(self._idle_timeout):
                self._drop(token_hash)


SESSION_CACHE = web.AppKey("session_cache", SessionCache)


async def session_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    assert config.database_url is not None
    cache = app[SESSION_CACHE] = SessionCache(app[POOL], config.database_url, config)
    if not config.session_cache:
        yield  # never healthy: every lookup goes to the database
        return
    task = asyncio.create_task(cache.listen_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
