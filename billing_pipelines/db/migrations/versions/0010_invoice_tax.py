"""Invoice tax in the snapshots: each invoice's subtotal, tax and total, each line's tax.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Stripe's invoice subtotal (before tax), the sum of its total_taxes and its total
        -- (after tax): NULL on rows snapshotted before these columns existed.
        ALTER TABLE stripe_invoice_snapshots
            ADD COLUMN subtotal bigint,
            ADD COLUMN tax      bigint,
            ADD COLUMN total    bigint;
        -- The tax on one line (the sum of its taxes); the line's amount stays pre-tax.
        ALTER TABLE stripe_invoice_line_snapshots
            ADD COLUMN tax bigint NOT NULL DEFAULT 0;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE stripe_invoice_line_snapshots DROP COLUMN tax;
        ALTER TABLE stripe_invoice_snapshots
            DROP COLUMN subtotal, DROP COLUMN tax, DROP COLUMN total;
        """
    )
