"""Customers: the `customers` table."""

from __future__ import annotations

import asyncpg


async def add_missing(conn: asyncpg.Connection, rows: list[tuple[str, str]]) -> None:
    """Insert each (name, email) that no customer has yet."""
    await conn.executemany(
        """
        INSERT INTO customers (name, email) SELECT $1, $2
        WHERE NOT EXISTS (SELECT 1 FROM customers WHERE email = $2)
        """,
        rows,
    )
