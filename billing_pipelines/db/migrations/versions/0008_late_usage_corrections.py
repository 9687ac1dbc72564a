"""Late usage corrections: usage billed on a later invoice after its period's invoice was final.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per correction of one invoice line, keyed by the truth it brings the line
        -- to: the same shortfall is never billed twice, a later shortfall gets its own row.
        -- 'pending' is written before the call to Stripe, 'created' once Stripe answered.
        CREATE TABLE late_usage_corrections (
            invoice_id       text        NOT NULL,
            line_id          text        NOT NULL,
            truth_queries    bigint      NOT NULL,
            tenant_id        text        NOT NULL,
            customer_id      text        NOT NULL,
            plan             text        NOT NULL,
            period_start     timestamptz NOT NULL,
            period_end       timestamptz NOT NULL,
            queries          bigint      NOT NULL,
            amount           bigint      NOT NULL,
            currency         text        NOT NULL,
            description      text        NOT NULL,
            status           text        NOT NULL CHECK (status IN ('pending', 'created')),
            invoice_item_id  text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (invoice_id, line_id, truth_queries)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE late_usage_corrections")
