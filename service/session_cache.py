"""Session cache: sessions this worker validated, answered from memory once it has proven that it
has read every change to them.

Triggers on `sessions` and `users` append every change, whoever makes it (this service, the
CLI, plain SQL), to the `session_changes` log, in the transaction that makes it (migration
0006). A session check is answered from memory only after the worker read that log in a pass
that started at most FRESH_FOR before the check, or, after this worker made a change
itself, after that change. Any change committed before a pass started is in that pass, so a
revocation by plain SQL is refused by every worker within FRESH_FOR of its commit, and one made
through this worker at its very next request: a bound by causality, not by timers, and one
that a busy event loop only delays, never turns off.

Passes are read on demand, on a connection of the cache's own (never queued behind requests in
the pool), and shared by every request waiting for one: an idle worker reads nothing, a busy one
at most one pass per FRESH_FOR. A pass is one read-only SELECT: no transaction id, no LISTEN, so
it works through PgBouncer in transaction mode.

Which rows a pass reads: sequence values can commit out of order, so a pass asks for the rows
of every transaction that the previous pass's snapshot did not see as committed (from that
snapshot's xmin, below which every transaction had ended). A transaction that stays open
elsewhere does not make passes read the same rows again.

It fails closed. A pass that fails or outlasts its timeout (1 s; see Config) empties the cache; the
request is answered from Postgres, and the connection is made again at a later request. An entry
lives at most MAX_AGE seconds and never past its session's absolute or idle expiry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from service import sessions
from service.config import CONFIG, Config
from service.db import CONNECT_TIMEOUT, DATABASE_UNAVAILABLE, POOL
from service.sessions import CurrentSession

log = logging.getLogger(__name__)

FRESH_FOR = Config.session_cache_fresh_for  # seconds; see Config
RECONNECT_AFTER = 1.0  # after a failed pass, requests go to Postgres this long before a retry
MAX_AGE = 60.0  # less than CHANGES_KEPT: an entry never outlives the news of its changes
CHANGES_KEPT = 300  # seconds the change log keeps the rows of a transaction after it ended
MAX_ENTRIES = 100_000
SWEEP_EVERY = 10.0
APPLICATION_NAME = "session-cache"

# The rows of every transaction that the previous pass's snapshot ($1, as text) did not see
# committed, read in one snapshot whose text is the next pass's $1. The first pass after
# connecting reads none ($1 is NULL): the cache is empty then.
_READ_CHANGES = """
WITH unseen AS (
    SELECT token_hash, user_id FROM session_changes
    WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
      AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
)
SELECT pg_current_snapshot()::text AS snapshot,
       array(SELECT token_hash FROM unseen WHERE token_hash IS NOT NULL) AS tokens,
       array(SELECT user_id FROM unseen WHERE user_id IS NOT NULL) AS users,
       EXISTS (SELECT FROM unseen WHERE token_hash IS NULL AND user_id IS NULL) AS everything
"""


@dataclass
class _Entry:
    current: CurrentSession
    cached_at: float  # all times are time.monotonic()
    expires_at: float
    touched_at: float  # when `last_seen_at` was last written

    def valid_until(self, idle_timeout: float) -> float:
        return min(self.expires_at, self.touched_at + idle_timeout, self.cached_at + MAX_AGE)


# Session checks, by where the answer came from and what it was (counted for metrics).
FROM_MEMORY = ("memory", "ok")
FROM_DATABASE = ("database", "ok")
NO_SESSION = ("database", "none")


class SessionCache:
    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        assert config.database_url is not None
        self.enabled = config.session_cache
        self.fresh_for = config.session_cache_fresh_for
        self._pass_timeout = config.session_cache_pass_timeout
        self._pool = pool
        self._dsn = config.database_url
        self._statement_cache_size = config.db_statement_cache_size
        self._idle_timeout = float(config.session_idle_timeout)
        self._touch_interval = config.touch_interval
        self._entries: dict[bytes, _Entry] = {}
        self._by_user: dict[int, set[bytes]] = {}
        self._conn: asyncpg.Connection | None = None
        self._horizon: str | None = None  # the previous pass's snapshot, as text
        self._pass: asyncio.Task[bool] | None = None
        self._proven_at = -math.inf  # when the newest completed pass started
        self._changed_at = -math.inf  # when this worker last answered a request that changed one
        self._retry_at = -math.inf
        self._swept_at = 0.0
        # Bumped by every change read and every reset: a lookup that started before one may
        # have read what it dropped, so its result is not kept.
        self._version = 0
        # For metrics: checks by (where the answer came from, result), and recent passes' times.
        self.checks: collections.Counter[tuple[str, str]] = collections.Counter()
        self._pass_durations: collections.deque[float] = collections.deque(maxlen=1000)

    @property
    def coherent(self) -> bool:
        """Whether this worker may answer from memory now: it follows the change log, and is not
        resting after a failure. An idle worker stays coherent: it reads when asked."""
        return self.enabled and self._horizon is not None and time.monotonic() >= self._retry_at

    @property
    def last_pass_age(self) -> float | None:
        """Seconds since the newest completed pass started; None before the first, or since a
        failure."""
        return None if self._proven_at == -math.inf else time.monotonic() - self._proven_at

    def take_pass_durations(self) -> list[float]:
        """The seconds each pass over the change log took, since the last call (for metrics)."""
        taken = list(self._pass_durations)
        self._pass_durations.clear()
        return taken

    @property
    def size(self) -> tuple[int, int]:
        """How many sessions, and how many users' sessions, this worker holds."""
        return len(self._entries), len(self._by_user)

    async def lookup(self, token_hash: bytes, *, checked_at: float) -> CurrentSession | None:
        """The live session whose token hashes to `token_hash`: from memory when that is proven
        safe, else Postgres."""
        if token_hash in self._entries and await self._prove(checked_at - self.fresh_for):
            entry = self._entries.get(token_hash)  # unless the pass just dropped it
            now = time.monotonic()
            if entry is not None and now < entry.valid_until(self._idle_timeout):
                if now - entry.touched_at >= self._touch_interval:
                    await sessions.touch(self._pool, entry.current.session.id)
                    entry.touched_at = now
                self.checks[FROM_MEMORY] += 1
                return entry.current
        if self._horizon is None and (task := self.start()) is not None:
            # No pass yet (just started, or just reconnected): one sets the horizon, without
            # which nothing read now could be kept.
            await asyncio.shield(task)
        version, following = self._version, self._horizon is not None
        now = time.monotonic()
        check = await sessions.validate_session_token(
            self._pool,
            token_hash,
            idle_timeout=int(self._idle_timeout),
            touch_interval=self._touch_interval,
        )
        self._drop(token_hash)
        if check is None:
            self.checks[NO_SESSION] += 1
            return None
        self.checks[FROM_DATABASE] += 1
        # Kept only if every change committed after the read will be in a later pass.
        if following and version == self._version and self._horizon is not None:
            self._keep(token_hash, check, now)
        return check.current

    def changed(self) -> None:
        """This worker answered a request that changed sessions or users: the next answer from
        memory waits for a pass that started after it, so this worker never contradicts itself."""
        self._changed_at = time.monotonic()

    async def _prove(self, since: float) -> bool:
        """Whether a pass that started at `since` or later has been read (reading one if not)."""
        since = max(since, self._changed_at)
        while self._proven_at < since:
            task = self.start()
            # Shielded: a request whose client left does not cancel everyone's pass.
            if task is None or not await asyncio.shield(task):
                return False
        return True

    def start(self) -> asyncio.Task[bool] | None:
        """The pass in flight, or a new one; None while the cache is off or resting.

        At startup it sets the horizon, so that the first lookups can be kept.
        """
        if not self.enabled or time.monotonic() < self._retry_at:
            return None
        if self._pass is None:
            self._pass = asyncio.create_task(self._read_changes())
        return self._pass

    async def _read_changes(self) -> bool:
        try:
            async with asyncio.timeout(self._pass_timeout):
                conn = await self._connection()
                started = time.monotonic()
                row = await conn.fetchrow(_READ_CHANGES, self._horizon)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
            self._reset(f"reading changes failed: {type(error).__name__}")
            self._retry_at = time.monotonic() + RECONNECT_AFTER
            return False
        finally:
            self._pass = None
        assert row is not None
        if self._horizon is not None and _xmin(row["snapshot"]) < _xmin(self._horizon):
            # Transaction ids went back: another cluster (a restored backup behind the same
            # address). Nothing read before can be trusted.
            self._reset("the database's transaction ids went back")
            return False
        if row["everything"]:
            self._clear()
        elif row["tokens"] or row["users"]:
            self._version += 1
            for token_hash in row["tokens"]:
                self._drop(token_hash)
            for user_id in row["users"]:
                for token_hash in self._by_user.pop(user_id, set()):
                    self._entries.pop(token_hash, None)
        self._horizon = row["snapshot"]
        self._proven_at = max(self._proven_at, started)
        self._pass_durations.append(time.monotonic() - started)
        self._sweep()
        return True

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._reset("")
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT,
                statement_cache_size=self._statement_cache_size,
                # So that an operator can tell it from the pool's in pg_stat_activity.
                server_settings={"application_name": APPLICATION_NAME},
            )
        return self._conn

    def _reset(self, why: str) -> None:
        """Forget everything, the connection included: the next pass starts afresh."""
        if why and self._entries:
            log.warning("session cache emptied: %s", why)
        elif why:
            log.warning("session cache: %s", why)
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self._horizon = None
        self._proven_at = -math.inf
        self._clear()

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

    def _sweep(self) -> None:
        """Now and then, forget entries past their time (lookups skip them anyway)."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        for token_hash, entry in list(self._entries.items()):
            if now >= entry.valid_until(self._idle_timeout):
                self._drop(token_hash)

    async def close(self) -> None:
        if self._pass is not None:
            self._pass.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pass
        if self._conn is not None:
            with contextlib.suppress(*DATABASE_UNAVAILABLE, asyncpg.PostgresError):
                async with asyncio.timeout(1):
                    await self._conn.close()
            self._conn = None


def _xmin(snapshot: str) -> int:
    return int(snapshot.partition(":")[0])


class ChangeLogPurge:
    """Deletes the rows of transactions that ended more than CHANGES_KEPT seconds ago.

    By transaction, not by a timestamp: a transaction left open for an hour before it commits
    a revocation must still have its row read. Each run notes the snapshot xmin (every
    transaction below it has ended); rows below an xmin noted CHANGES_KEPT ago go. An entry
    lives at most MAX_AGE, so no cache needs them any more.
    """

    def __init__(self) -> None:
        self._noted: collections.deque[tuple[float, int]] = collections.deque()

    async def run(self, pool: asyncpg.Pool) -> None:
        now = time.monotonic()
        xmin: int = await pool.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())")
        self._noted.append((now, xmin))
        ended_long_ago = None
        while self._noted and self._noted[0][0] <= now - CHANGES_KEPT:
            ended_long_ago = self._noted.popleft()[1]
        if ended_long_ago is not None:
            await pool.execute("DELETE FROM session_changes WHERE xid < $1", ended_long_ago)


SESSION_CACHE = web.AppKey("session_cache", SessionCache)


async def session_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    cache = app[SESSION_CACHE] = SessionCache(app[POOL], app[CONFIG])
    cache.start()
    yield
    await cache.close()
