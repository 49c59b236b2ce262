"""Demo data: the seed's 20 customers and four users, loaded idempotently."""

from __future__ import annotations

import asyncpg

from service import customers, users

DEMO_USERS = (
    # email, admin, disabled
    ("admin01@example.com", True, False),
    ("admin02@example.com", True, True),
    ("user01@example.com", False, False),
    ("user02@example.com", False, True),
)


DEMO_CUSTOMERS = [(f"a{n:03}", f"a{n:03}@example.com") for n in range(1, 21)]


async def seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for email, admin, disabled in DEMO_USERS:
                await users.create(
                    conn, email, name=email.partition("@")[0], admin=admin, disabled=disabled
                )
            await customers.add_missing(conn, DEMO_CUSTOMERS)
    finally:
        await conn.close()
