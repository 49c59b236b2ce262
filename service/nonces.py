"""Login nonces: a secret in a cookie, its hash sent to Google, and the `spent_nonces` table.

Each nonce has a cookie of its own, named for when it was issued, so that two tabs on the login
page each keep theirs (one cookie rewritten by both would lose one of them); a browser holds at
most MAX_OUTSTANDING, each for NONCE_COOKIE_LIFETIME seconds and for one sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import asyncpg

NONCE_COOKIE_LIFETIME = 600
MAX_OUTSTANDING = 5
# Instances' clocks may differ a little: a nonce issued by one just ahead is not refused.
CLOCK_SKEW = 30
_COOKIE_ID = re.compile(r"[0-9a-f]{1,16}_[0-9a-f]{6}")


def new_cookie_id(now: float) -> str:
    """What follows the prefix in a nonce cookie's name: the issue time and noise.

    In microseconds, so that a browser's nonces are ordered (the oldest are the ones let go).
    """
    return f"{int(now * 1_000_000):x}_{secrets.token_hex(3)}"


def issued_at(cookie_id: str) -> float | None:
    """When the nonce of a cookie named with `cookie_id` was issued; None if it is not one.

    Only names this module makes count: any other (which a response could not even delete, as
    some are not valid cookie names) is ignored.
    """
    if _COOKIE_ID.fullmatch(cookie_id) is None:
        return None
    return int(cookie_id.partition("_")[0], 16) / 1_000_000


def generate_nonce_secret() -> str:
    return secrets.token_urlsafe(32)


def nonce_for(secret: str) -> str:
    """The value Google puts in the ID token: base64url(sha256(secret)), unpadded."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matches(secret: str, nonce: str) -> bool:
    return hmac.compare_digest(nonce_for(secret).encode(), nonce.encode("utf-8", "surrogateescape"))


async def purge_spent(pool: asyncpg.Pool) -> None:
    """Forget spent nonces whose tokens have expired (they can no longer be replayed)."""
    await pool.execute("DELETE FROM spent_nonces WHERE expires_at <= now()")


async def spend(conn: asyncpg.Connection | asyncpg.Pool, nonce: str, *, until: float) -> bool:
    """Mark `nonce` used until the epoch time `until`; False when it already was."""
    spent = await conn.fetchval(
        """
        INSERT INTO spent_nonces (nonce, expires_at) VALUES ($1, to_timestamp($2))
        ON CONFLICT (nonce) DO NOTHING RETURNING true
        """,
        nonce,
        until,
    )
    return spent is True
