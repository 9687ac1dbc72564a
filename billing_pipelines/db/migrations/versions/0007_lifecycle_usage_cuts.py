"""Lifecycle instants that cut a tenant's usage: a plan change or an immediate cancellation.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The instant a lifecycle action fixed the old part of a tenant's period (the replaced
        -- price's usage, or a cancelled subscription's final invoice). The nightly push splits
        -- that day at the instant and reports only the part after it.
        CREATE TABLE lifecycle_usage_cuts (
            tenant_id       text        NOT NULL,
            instant         timestamptz NOT NULL,
            action          text        NOT NULL CHECK (action IN ('plan_change', 'cancel_now')),
            subscription_id text        NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, instant, action)
        );
        CREATE INDEX lifecycle_usage_cuts_instant ON lifecycle_usage_cuts (instant);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE lifecycle_usage_cuts")
