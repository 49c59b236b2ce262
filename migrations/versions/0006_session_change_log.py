"""Session caches learn of changes by reading a change log, instead of LISTEN/NOTIFY.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Triggers on `sessions` and `users` append to `session_changes`, in the transaction that made
the change, whoever made it (this service, the CLI, plain SQL). Each worker reads the rows of
transactions it has not seen yet when it needs to prove its cache fresh (see
service/session_cache.py). Reading takes no transaction id and needs no LISTEN, so it works
through PgBouncer in transaction mode, and an idle worker reads nothing at all.

A row names the SHA-256 of a session token that changed or went (`token_hash`), or a user who
changed or went (`user_id`), or neither: then every cache forgets everything (a TRUNCATE, or one
statement ending more than 10,000 sessions, such as signing everyone out). Writes of
`last_seen_at` alone, and sign-ins that change nothing a cache holds, log nothing.

The table is logged like any other, so a crash or a failover keeps what it says as it keeps the
changes themselves. 0003's NOTIFY triggers stay for now: replicas still running the version
before this one rely on them until they are replaced (a later migration drops them).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE TABLE session_changes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        token_hash bytea,
        user_id bigint
    )
    """,
    # Readers ask for the rows of transactions at or after a snapshot's xmin, and the purge
    # deletes those of transactions that ended long ago.
    "CREATE INDEX session_changes_xid_idx ON session_changes (xid)",
    """
    CREATE FUNCTION log_sessions_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (SELECT count(*) FROM ended) > 10000 THEN
            INSERT INTO session_changes DEFAULT VALUES;
        ELSE
            INSERT INTO session_changes (token_hash) SELECT token_hash FROM ended;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER sessions_ended AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS ended
    FOR EACH STATEMENT EXECUTE FUNCTION log_sessions_ended()
    """,
    # Per row (a trigger with a column list cannot see a statement's rows); a bulk UPDATE logs
    # a row per session, which a cache reads once (or, if too many to read in time, starts
    # afresh: it fails closed).
    """
    CREATE FUNCTION log_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO session_changes (token_hash) VALUES (OLD.token_hash);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER session_changed_logged
    AFTER UPDATE OF token_hash, user_id, expires_at, created_at ON sessions FOR EACH ROW
    WHEN (
        (OLD.token_hash, OLD.user_id, OLD.expires_at, OLD.created_at)
        IS DISTINCT FROM (NEW.token_hash, NEW.user_id, NEW.expires_at, NEW.created_at)
    )
    EXECUTE FUNCTION log_session_changed()
    """,
    """
    CREATE FUNCTION log_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO session_changes (user_id) VALUES (OLD.id);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER user_deleted_logged AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION log_user_changed()
    """,
    """
    CREATE TRIGGER user_changed_logged AFTER UPDATE ON users FOR EACH ROW
    WHEN (
        (OLD.email, OLD.name, OLD.picture, OLD.admin, OLD.disabled)
        IS DISTINCT FROM (NEW.email, NEW.name, NEW.picture, NEW.admin, NEW.disabled)
    )
    EXECUTE FUNCTION log_user_changed()
    """,
    """
    CREATE FUNCTION log_everything_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO session_changes DEFAULT VALUES;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER sessions_truncated_logged AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION log_everything_changed()
    """,
    """
    CREATE TRIGGER users_truncated_logged AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION log_everything_changed()
    """,
)

DOWNGRADE = (
    "DROP TRIGGER users_truncated_logged ON users",
    "DROP TRIGGER sessions_truncated_logged ON sessions",
    "DROP FUNCTION log_everything_changed()",
    "DROP TRIGGER user_changed_logged ON users",
    "DROP TRIGGER user_deleted_logged ON users",
    "DROP FUNCTION log_user_changed()",
    "DROP TRIGGER session_changed_logged ON sessions",
    "DROP FUNCTION log_session_changed()",
    "DROP TRIGGER sessions_ended ON sessions",
    "DROP FUNCTION log_sessions_ended()",
    "DROP TABLE session_changes",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
