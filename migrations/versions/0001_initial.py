"""Users, sessions, auth events, spent login nonces and customers.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE TABLE users (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        google_sub text UNIQUE,
        email text NOT NULL CHECK (email <> ''),
        name text NOT NULL DEFAULT '',
        picture text NOT NULL DEFAULT '',
        admin boolean NOT NULL DEFAULT false,
        disabled boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        last_login_at timestamptz
    )
    """,
    "CREATE UNIQUE INDEX users_email_key ON users (lower(email))",
    # Only the SHA-256 of a session's secret token is stored; `id` is safe to show.
    """
    CREATE TABLE sessions (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
        user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL DEFAULT now(),
        last_seen_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        ip text,
        user_agent text NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX sessions_user_id_idx ON sessions (user_id)",
    # Both for the background purge, so it never scans the whole table.
    "CREATE INDEX sessions_expires_at_idx ON sessions (expires_at)",
    "CREATE INDEX sessions_last_seen_at_idx ON sessions (last_seen_at)",
    """
    CREATE TABLE auth_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        kind text NOT NULL,
        user_id bigint REFERENCES users (id) ON DELETE SET NULL,
        ip text,
        user_agent text NOT NULL DEFAULT '',
        detail jsonb NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX auth_events_at_idx ON auth_events (at DESC, id DESC)",
    "CREATE INDEX auth_events_user_id_idx ON auth_events (user_id, at DESC)",
    # Nonces of ID tokens already used to sign in, kept until those tokens expire.
    """
    CREATE TABLE spent_nonces (
        nonce text PRIMARY KEY,
        expires_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE customers (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
        email text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
)

DOWNGRADE = (
    "DROP TABLE customers",
    "DROP TABLE spent_nonces",
    "DROP TABLE auth_events",
    "DROP TABLE sessions",
    "DROP TABLE users",
)


# asyncpg runs one statement per call, so each is its own op.execute.
def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
