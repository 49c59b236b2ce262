"""The schema's version: applying Alembic migrations and telling whether a database is at head."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(dsn: str) -> AlembicConfig:
    config = AlembicConfig(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["dsn"] = dsn
    return config


def upgrade(dsn: str) -> None:
    """Apply pending migrations; env.py holds an advisory lock, so concurrent callers are safe.

    Synchronous (Alembic runs its own event loop): call it before the service's loop starts.
    """
    command.upgrade(alembic_config(dsn), "head")


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: asyncpg.Connection) -> str | None:
    try:
        revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return None
    return revision
