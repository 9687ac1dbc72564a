"""Recovery: dunning dispatch generations, and one valid address in tenants.email.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- How often the sensor has asked for a run of each (invoice, step): the count is part
        -- of the run_key, so a step whose run failed (with its retries) is asked for again.
        CREATE TABLE dunning_dispatches (
            invoice_id     text NOT NULL,
            step           integer NOT NULL CHECK (step >= 1),
            dispatch_count integer NOT NULL DEFAULT 1 CHECK (dispatch_count >= 1),
            dispatched_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (invoice_id, step)
        );

        -- The application validates addresses; the database refuses the dangerous ones (header
        -- injection, several recipients) from any writer. NOT VALID: existing rows are not
        -- re-checked here (the outbox run refuses them one by one), new writes are.
        ALTER TABLE tenants ADD CONSTRAINT tenants_email_one_address
            CHECK (email ~ '^[^@[:space:][:cntrl:],;<>"]+@[^@[:space:][:cntrl:],;<>"]+$')
            NOT VALID;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE tenants DROP CONSTRAINT tenants_email_one_address;
        DROP TABLE dunning_dispatches;
        """
    )
