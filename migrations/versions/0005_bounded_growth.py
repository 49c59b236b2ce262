"""Indexes for every background purge, and for finding the last failed sign-in of a source.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = (
    "CREATE INDEX spent_nonces_expires_at_idx ON spent_nonces (expires_at)",
    "CREATE INDEX login_rate_tat_idx ON login_rate (tat)",
    # Failed sign-ins from one source (an IPv4 address or an IPv6 network) within a few
    # minutes are counted on one event.
    """
    CREATE INDEX auth_events_failures_idx ON auth_events ((detail->>'source'), at DESC)
    WHERE kind = 'login_failed'
    """,
)

DOWNGRADE = (
    "DROP INDEX auth_events_failures_idx",
    "DROP INDEX login_rate_tat_idx",
    "DROP INDEX spent_nonces_expires_at_idx",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
