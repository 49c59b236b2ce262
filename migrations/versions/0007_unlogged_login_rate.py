"""The login rate limit's table is UNLOGGED: counting an attempt never waits for a WAL flush.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A limiter may forget its state in a crash (the table is then empty, and every client has its
whole budget again); in exchange an attempt's upsert writes no WAL, so its commit flushes
nothing to disk. The table is small (one row per client whose budget is not whole), so the
rewrite is quick.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE login_rate SET UNLOGGED")


def downgrade() -> None:
    op.execute("ALTER TABLE login_rate SET LOGGED")
