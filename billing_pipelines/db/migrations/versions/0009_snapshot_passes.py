"""Snapshot passes: how each day's invoice and subscription snapshot was taken, and its frontier.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per snapshot kind and date: how the day's snapshot was taken. An incremental
        -- pass starts from the newest row: objects created since its frontier (real time when
        -- it started, each test clock's frozen time) and the movable ones it held are read
        -- again, the rest is carried forward. full_pass_date is the newest full pass, so the
        -- periodic full pass is due by date even when a day is re-run.
        CREATE TABLE stripe_snapshot_passes (
            kind            text        NOT NULL CHECK (kind IN ('invoices', 'subscriptions')),
            snapshot_date   date        NOT NULL,
            mode            text        NOT NULL CHECK (mode IN ('full', 'incremental')),
            reason          text        NOT NULL,
            taken_at        timestamptz NOT NULL,
            wall_started    bigint      NOT NULL,
            clocks          jsonb       NOT NULL DEFAULT '{}',
            full_pass_date  date        NOT NULL,
            objects_read    integer     NOT NULL,
            read_by_id      integer     NOT NULL,
            carried         integer     NOT NULL,
            PRIMARY KEY (kind, snapshot_date)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE stripe_snapshot_passes")
