"""Metering: ledger statuses for superseded and out-of-window reports, event timestamps, lookups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The ledger keeps one row per (tenant, metric, day, value version). A newer version
    # supersedes an older one that never got confirmed; a day beyond Stripe's 35-day window
    # is recorded as out_of_window so the change is flagged, never dropped.
    op.execute(
        """
        ALTER TABLE usage_report_ledger DROP CONSTRAINT usage_report_ledger_status_check;
        ALTER TABLE usage_report_ledger ADD CONSTRAINT usage_report_ledger_status_check
            CHECK (status IN ('pending', 'delivered', 'failed', 'superseded', 'out_of_window'));
        ALTER TABLE usage_report_ledger
            ADD COLUMN event_timestamp timestamptz,
            ADD COLUMN run_id          text,
            ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now();
        CREATE INDEX usage_report_ledger_latest
            ON usage_report_ledger (usage_date, tenant_id, metric, value_version DESC);
        CREATE INDEX usage_report_ledger_open
            ON usage_report_ledger (usage_date) WHERE status IN ('pending', 'failed');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX usage_report_ledger_open;
        DROP INDEX usage_report_ledger_latest;
        ALTER TABLE usage_report_ledger
            DROP COLUMN updated_at, DROP COLUMN run_id, DROP COLUMN event_timestamp;
        DELETE FROM usage_report_ledger WHERE status IN ('superseded', 'out_of_window');
        ALTER TABLE usage_report_ledger DROP CONSTRAINT usage_report_ledger_status_check;
        ALTER TABLE usage_report_ledger ADD CONSTRAINT usage_report_ledger_status_check
            CHECK (status IN ('pending', 'delivered', 'failed'));
        """
    )
