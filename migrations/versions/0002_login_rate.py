"""Login rate limiting in Postgres, shared by every worker and instance.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per client IP: the "theoretical arrival time" of the generic cell rate algorithm.
    op.execute(
        """
        CREATE TABLE login_rate (
            ip text PRIMARY KEY,
            tat timestamptz NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE login_rate")
