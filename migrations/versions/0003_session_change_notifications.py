"""Notify listeners when a session or a user changes, so in-process session caches can drop it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Channel `session_changes`, payloads: `s:<hex token hashes, comma-separated>` for sessions
deleted or changed, `u:<user id>` for a user changed or deleted, and `flush` when too many
changed at once to list (or the table was truncated). Writes of `last_seen_at` alone notify no
one: they are the common case and change nothing a cache holds.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE FUNCTION notify_sessions_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changed bigint;
    BEGIN
        SELECT count(*) INTO changed FROM old_rows;
        IF changed > 100 THEN
            PERFORM pg_notify('session_changes', 'flush');
        ELSIF changed > 0 THEN
            PERFORM pg_notify(
                'session_changes', 's:' || string_agg(encode(token_hash, 'hex'), ',')
            ) FROM old_rows;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER sessions_deleted AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_sessions_deleted()
    """,
    """
    CREATE FUNCTION notify_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('session_changes', 's:' || encode(OLD.token_hash, 'hex'));
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER session_changed
    AFTER UPDATE OF token_hash, user_id, expires_at, created_at ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_session_changed()
    """,
    """
    CREATE FUNCTION notify_sessions_flushed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('session_changes', 'flush');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER sessions_truncated AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_sessions_flushed()
    """,
    """
    CREATE TRIGGER users_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_sessions_flushed()
    """,
    """
    CREATE FUNCTION notify_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('session_changes', 'u:' || OLD.id);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER user_deleted AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_user_changed()
    """,
    # Only real changes: a sign-in rewrites these columns, mostly with the same values, and a
    # NOTIFY serialises commits, which sign-ins under load would feel.
    """
    CREATE TRIGGER user_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (
        (OLD.email, OLD.name, OLD.picture, OLD.admin, OLD.disabled)
        IS DISTINCT FROM (NEW.email, NEW.name, NEW.picture, NEW.admin, NEW.disabled)
    )
    EXECUTE FUNCTION notify_user_changed()
    """,
)

DOWNGRADE = (
    "DROP TRIGGER user_changed ON users",
    "DROP TRIGGER user_deleted ON users",
    "DROP FUNCTION notify_user_changed()",
    "DROP TRIGGER users_truncated ON users",
    "DROP TRIGGER sessions_truncated ON sessions",
    "DROP FUNCTION notify_sessions_flushed()",
    "DROP TRIGGER session_changed ON sessions",
    "DROP FUNCTION notify_session_changed()",
    "DROP TRIGGER sessions_deleted ON sessions",
    "DROP FUNCTION notify_sessions_deleted()",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
