"""Webhooks and dunning: queue dispatch/claim columns, dunning cases, outbox retries, alerts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The queue: where a row came from, what its handler decided, who claims it and when
        -- the sensor last asked for a run for it (dispatch_count is part of the run_key).
        ALTER TABLE webhook_events
            ADD COLUMN object_id      text,
            ADD COLUMN source         text NOT NULL DEFAULT 'webhook'
                CHECK (source IN ('webhook', 'recovery')),
            ADD COLUMN outcome        text,
            ADD COLUMN claimed_at     timestamptz,
            ADD COLUMN claimed_by     text,
            ADD COLUMN dispatched_at  timestamptz,
            ADD COLUMN dispatch_count integer NOT NULL DEFAULT 0;
        CREATE INDEX webhook_events_claimed ON webhook_events (claimed_at)
            WHERE status = 'processing';
        CREATE INDEX webhook_events_dead ON webhook_events (received_at) WHERE status = 'dead';

        -- What Stripe says about the subscription, kept apart from billing_status (which also
        -- reflects our own dunning decisions), and the failure count the ladder is at.
        ALTER TABLE tenants
            ADD COLUMN subscription_status text,
            ADD COLUMN payment_failures    integer NOT NULL DEFAULT 0
                CHECK (payment_failures >= 0);

        -- One row per unpaid invoice we are chasing; resolved when Stripe says paid or void.
        CREATE TABLE dunning_cases (
            invoice_id           text PRIMARY KEY,
            tenant_id            text NOT NULL REFERENCES tenants (tenant_id),
            status               text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'resolved')),
            attempt_count        integer NOT NULL CHECK (attempt_count >= 0),
            amount_due           bigint NOT NULL CHECK (amount_due >= 0),
            currency             text NOT NULL,
            first_failed_at      timestamptz NOT NULL,
            next_payment_attempt timestamptz,
            opened_at            timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now(),
            resolved_at          timestamptz,
            resolution           text
        );
        CREATE INDEX dunning_cases_open ON dunning_cases (tenant_id) WHERE status = 'open';

        -- The outbox retries with backoff and is claimed like the webhook queue.
        ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_status_check;
        ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_status_check
            CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead'));
        ALTER TABLE notification_outbox
            ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN claimed_at      timestamptz,
            ADD COLUMN dispatched_at   timestamptz,
            ADD COLUMN dispatch_count  integer NOT NULL DEFAULT 0;
        CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at, id)
            WHERE status IN ('pending', 'failed');

        -- Operator alerts (dead letters, finalization failures): one per dedup key.
        CREATE TABLE alerts (
            id              bigserial PRIMARY KEY,
            dedup_key       text NOT NULL UNIQUE,
            kind            text NOT NULL,
            severity        text NOT NULL CHECK (severity IN ('warning', 'critical')),
            summary         text NOT NULL,
            details         jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at      timestamptz NOT NULL DEFAULT now(),
            acknowledged_at timestamptz
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE alerts;
        DROP INDEX notification_outbox_due;
        ALTER TABLE notification_outbox
            DROP COLUMN next_attempt_at, DROP COLUMN claimed_at,
            DROP COLUMN dispatched_at, DROP COLUMN dispatch_count;
        ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_status_check;
        ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_status_check
            CHECK (status IN ('pending', 'sent', 'failed', 'dead'));
        DROP TABLE dunning_cases;
        ALTER TABLE tenants DROP COLUMN subscription_status, DROP COLUMN payment_failures;
        DROP INDEX webhook_events_claimed;
        DROP INDEX webhook_events_dead;
        ALTER TABLE webhook_events
            DROP COLUMN object_id, DROP COLUMN source, DROP COLUMN outcome,
            DROP COLUMN claimed_at, DROP COLUMN claimed_by,
            DROP COLUMN dispatched_at, DROP COLUMN dispatch_count;
        """
    )
