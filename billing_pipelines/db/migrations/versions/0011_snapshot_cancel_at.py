"""Scheduled cancellations in the subscription snapshot: each subscription's `cancel_at`.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- When a scheduled cancellation takes effect (`cancel_at_period_end` or `cancel_at`):
        -- NULL when none is scheduled, and on rows snapshotted before this column existed.
        ALTER TABLE stripe_subscription_snapshots ADD COLUMN cancel_at timestamptz;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE stripe_subscription_snapshots DROP COLUMN cancel_at;")
