"""Postgres counts the sessions ended by anyone but the service (plain SQL, the operator CLI).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

The service counts the sessions it ends itself (a metric per cause); a `DELETE FROM sessions`
by an operator never passes through it. The statement trigger that logs ended sessions for the
caches now also adds them to `sessions_ended_outside` when the deleting connection is not the
service's own pool (whose `application_name` is `google-session-service`), in the transaction
that deleted them: counted once, however many workers and instances there are. Only such
deletions write the row, which are rare; the service's own deletions cost a `current_setting`.

During the rolling deploy that brings this in, replicas still on the version before (whose pool
sets no application_name) are counted as outside until they are replaced: a one-off step.
A role that deletes sessions needs INSERT and UPDATE on the new table too.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# 0006's function, and the same with the count added.
LOGGING_ONLY = """
CREATE OR REPLACE FUNCTION log_sessions_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM ended) > 10000 THEN
        INSERT INTO session_changes DEFAULT VALUES;
    ELSE
        INSERT INTO session_changes (token_hash) SELECT token_hash FROM ended;
    END IF;
    RETURN NULL;
END
$$
"""
LOGGING_AND_COUNTING = """
CREATE OR REPLACE FUNCTION log_sessions_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM ended) > 10000 THEN
        INSERT INTO session_changes DEFAULT VALUES;
    ELSE
        INSERT INTO session_changes (token_hash) SELECT token_hash FROM ended;
    END IF;
    -- PgBouncer's application_name_add_host appends " - host:port".
    IF split_part(current_setting('application_name'), ' - ', 1)
       IS DISTINCT FROM 'google-session-service' THEN
        INSERT INTO sessions_ended_outside AS o (sessions)
        SELECT count(*) FROM ended HAVING count(*) > 0
        ON CONFLICT (id) DO UPDATE SET sessions = o.sessions + EXCLUDED.sessions;
    END IF;
    RETURN NULL;
END
$$
"""
# A TRUNCATE deletes no rows one by one: it is counted as it starts (a TRUNCATE of users cascades
# to sessions, and fires this too). The service never truncates.
COUNT_TRUNCATE = """
CREATE FUNCTION count_sessions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sessions_ended_outside AS o (sessions)
    SELECT count(*) FROM sessions HAVING count(*) > 0
    ON CONFLICT (id) DO UPDATE SET sessions = o.sessions + EXCLUDED.sessions;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sessions_ended_outside (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            sessions bigint NOT NULL
        )
        """
    )
    op.execute(LOGGING_AND_COUNTING)
    op.execute(COUNT_TRUNCATE)
    op.execute(
        "CREATE TRIGGER sessions_truncated_counted BEFORE TRUNCATE ON sessions "
        "FOR EACH STATEMENT EXECUTE FUNCTION count_sessions_truncated()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER sessions_truncated_counted ON sessions")
    op.execute("DROP FUNCTION count_sessions_truncated()")
    op.execute(LOGGING_ONLY)
    op.execute("DROP TABLE sessions_ended_outside")
