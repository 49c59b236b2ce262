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

INDEXES = {
    "spent_nonces_expires_at_idx": "spent_nonces (expires_at)",
    "login_rate_tat_idx": "login_rate (tat)",
    # Failed sign-ins from one source (an IPv4 address or an IPv6 network) within a few
    # minutes are counted on one event.
    "auth_events_failures_idx": (
        "auth_events ((detail->>'source'), at DESC) WHERE kind = 'login_failed'"
    ),
}


def upgrade() -> None:
    # Built without blocking writes to these tables: CONCURRENTLY cannot run in a transaction.
    # A build that was interrupted leaves an invalid index behind, so it is dropped first.
    with op.get_context().autocommit_block():
        for name, definition in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {definition}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
