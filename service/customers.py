"""Customers: the `customers` table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Customer:
    id: int
    name: str
    email: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Customer:
        return cls(row["id"], row["name"], row["email"], row["created_at"])

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email}


async def list_page(pool: asyncpg.Pool, *, offset: int, limit: int) -> tuple[list[Customer], int]:
    """One page, oldest first, and the total count (from the same snapshot)."""
    rows = await pool.fetch(
        """
        SELECT id, name, email, created_at, count(*) OVER () AS total
        FROM customers ORDER BY id OFFSET $1 LIMIT $2
        """,
        offset,
        limit,
    )
    if rows or offset == 0:
        return [Customer.from_row(row) for row in rows], rows[0]["total"] if rows else 0
    total: int = await pool.fetchval("SELECT count(*) FROM customers")  # past the last page
    return [], total


async def get(pool: asyncpg.Pool, customer_id: int) -> Customer | None:
    row = await pool.fetchrow(
        "SELECT id, name, email, created_at FROM customers WHERE id = $1", customer_id
    )
    return None if row is None else Customer.from_row(row)


async def create(pool: asyncpg.Pool, name: str, email: str) -> Customer:
    row = await pool.fetchrow(
        "INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id, name, email, created_at",
        name,
        email,
    )
    assert row is not None
    return Customer.from_row(row)


async def update(pool: asyncpg.Pool, customer_id: int, name: str, email: str) -> Customer | None:
    row = await pool.fetchrow(
        """
        UPDATE customers SET name = $2, email = $3 WHERE id = $1
        RETURNING id, name, email, created_at
        """,
        customer_id,
        name,
        email,
    )
    return None if row is None else Customer.from_row(row)


async def delete(pool: asyncpg.Pool, customer_id: int) -> bool:
    status: str = await pool.execute("DELETE FROM customers WHERE id = $1", customer_id)
    return status == "DELETE 1"


async def add_missing(conn: asyncpg.Connection, rows: list[tuple[str, str]]) -> None:
    """Insert each (name, email) that no customer has yet."""
    await conn.executemany(
        """
        INSERT INTO customers (name, email) SELECT $1, $2
        WHERE NOT EXISTS (SELECT 1 FROM customers WHERE email = $2)
        """,
        rows,
    )
