"""Alembic environment: asyncpg through SQLAlchemy's postgresql+asyncpg dialect, under a lock."""

import asyncio
import os
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Any constant works; every instance must use the same one.
MIGRATION_LOCK_KEY = 7_245_811_203

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
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        # Held until commit: instances starting together apply each migration once, in turn.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
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
