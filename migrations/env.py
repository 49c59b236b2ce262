"""Alembic environment: asyncpg through SQLAlchemy's postgresql+asyncpg dialect, under a lock."""

import asyncio
import os
import time
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Any constant works; every instance must use the same one.
MIGRATION_LOCK_KEY = 7_245_811_203
LOCK_TIMEOUT = "10s"

config = context.config
# The service configures logging itself; only the bare `alembic` command uses the ini's.
if config.config_file_name and not config.attributes.get("dsn"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    dsn = config.attributes.get("dsn") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise SystemExit("DATABASE_URL is not set (or run `python -m service migrate`)")
    return str(dsn)


def run_migrations(connection: Connection) -> None:
    # Each migration commits on its own, so the locks it takes are held only while it runs,
    # and one that builds an index CONCURRENTLY can step out of its transaction.
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    # Held by this connection until it closes: instances starting together apply each
    # migration once, in turn (the later ones find nothing left to do). Asked for again and
    # again rather than waited for: a statement waiting would hold a snapshot, which an index
    # built CONCURRENTLY by the instance holding the lock waits for (a deadlock).
    while not connection.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
    ).scalar():
        connection.commit()
        time.sleep(0.1)
    # A migration that waits on a busy table fails (and the start with it) rather than queue
    # every request behind its lock.
    connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.commit()
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    dsn = database_url()
    # asyncpg takes the URL as the service uses it, so no second driver or URL dialect is needed.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(dsn), poolclass=NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(run_migrations)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
asyncio.run(run_async_migrations())
