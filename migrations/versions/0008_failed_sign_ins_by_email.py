"""An index for finding the failed sign-ins that tried an email address.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

The admin audit log finds a person by email (`GET /api/admin/audit?user_email=`): their own
events through `auth_events_user_id_idx`, and the failed sign-ins that tried the address, which
have no user, through this one. Partial: only failed sign-ins are in it (few rows, since repeats
are counted on one event), so a successful sign-in writes nothing more.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEXES = {
    "auth_events_failed_email_idx": (
        "auth_events (lower(detail->>'email')) "
        "WHERE kind IN ('login_failed', 'admin_user_created', 'admin_user_deleted')"
    ),
    # The audit log filtered by kind, newest first: a rare kind must not scan the whole table.
    "auth_events_kind_idx": "auth_events (kind, id DESC)",
}


def upgrade() -> None:
    # As in 0005: built without blocking writes, which cannot run in a transaction; a build that
    # was interrupted leaves an invalid index behind, so it is dropped first.
    # A concurrent build waits for every older transaction, which migrations/env.py's
    # lock_timeout would turn into a failed start (and an invalid index); it blocks no writer
    # while it waits, so it may wait.
    previous = op.get_bind().exec_driver_sql("SHOW lock_timeout").scalar()
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = 0")
        for name, definition in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {definition}")
        op.execute(f"SET lock_timeout = '{previous}'")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
