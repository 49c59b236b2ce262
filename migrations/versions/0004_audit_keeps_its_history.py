"""Auth events keep who acted: the actor's email as it was, and their id after they are deleted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Both are instant: no row is rewritten (older events keep a NULL email, and the audit log
# shows the user's current one for them while the user exists).
UPGRADE = (
    "ALTER TABLE auth_events ADD COLUMN email text",
    # History is not rewritten when a user goes: the id stays (ids are never reused).
    "ALTER TABLE auth_events DROP CONSTRAINT auth_events_user_id_fkey",
)

DOWNGRADE = (
    "UPDATE auth_events e SET user_id = NULL"
    " WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = e.user_id)",
    """
    ALTER TABLE auth_events ADD CONSTRAINT auth_events_user_id_fkey
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL
    """,
    "ALTER TABLE auth_events DROP COLUMN email",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
