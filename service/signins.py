"""A returning user's sign-in in one statement: the nonce spent, the user's row brought up to
date, the new session and its audit event, all in one round trip to Postgres.

Round trips are most of what a sign-in costs (each one a send, a wake-up of a Postgres backend
and a turn of the event loop), and nearly every sign-in is a returning user's. The statement
writes the same rows, the same way, as the full path in routes/login.py (`nonces.spend`,
`users.sign_in`, `sessions.create_session`, `audit.record`); tests/test_accounts.py proves that
the two agree. Anything else (a first sign-in, a row claimed by email, a disabled user, a
replayed nonce, a new email that another row holds) changes nothing here and returns None, for
the full path to handle and explain.
"""

from __future__ import annotations

import asyncpg

from service.auth import GoogleIdentity
from service.sessions import hash_token
from service.users import User

# A statement is one transaction: its parts commit together or not at all. The user's row is
# locked first; a nonce is spent only for a user this statement then signs in.
_SIGN_IN = """
WITH returning_user AS (
    SELECT id FROM users WHERE google_sub = $1 AND NOT disabled FOR UPDATE
), spent AS (
    INSERT INTO spent_nonces (nonce, expires_at) SELECT $2, to_timestamp($3) FROM returning_user
    ON CONFLICT (nonce) DO NOTHING
    RETURNING true
), signed_in AS (
    UPDATE users u SET email = $4, name = coalesce(nullif($5, ''), u.name), picture = $6,
        admin = u.admin OR $7, last_login_at = now()
    FROM returning_user r
    WHERE u.id = r.id AND EXISTS (SELECT FROM spent)
    RETURNING u.*
), session AS (
    INSERT INTO sessions (token_hash, user_id, expires_at, ip, user_agent)
    SELECT $8, id, now() + make_interval(secs => $9), $10, $11 FROM signed_in
    RETURNING id, user_id
), event AS (
    INSERT INTO auth_events (kind, user_id, email, ip, user_agent, detail)
    SELECT 'login_ok', s.id, s.email, $10, $11, jsonb_build_object('session_id', n.id::text)
    FROM signed_in s JOIN session n ON n.user_id = s.id
)
SELECT signed_in.* FROM signed_in JOIN session ON session.user_id = signed_in.id
"""


async def sign_in_returning_user(
    pool: asyncpg.Pool,
    identity: GoogleIdentity,
    *,
    nonce: str,
    nonce_until: float,
    make_admin: bool,
    token: str,
    lifetime: int,
    ip: str | None,
    user_agent: str,
) -> User | None:
    """The user, signed in with a session for `token`; None when this is not that simple case."""
    try:
        row = await pool.fetchrow(
            _SIGN_IN,
            identity.sub,
            nonce,
            nonce_until,
            identity.email,
            identity.name,
            identity.picture,
            make_admin,
            hash_token(token),
            lifetime,
            ip,
            user_agent,
        )
    except asyncpg.UniqueViolationError:  # the new email is another row's: rolled back
        return None
    return None if row is None else User.from_row(row)
