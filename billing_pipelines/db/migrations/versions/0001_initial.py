"""Initial billing schema: tenants, webhook queue, usage, report ledger, dunning, outbox, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain SQL: the schema is the contract with the SaaS API (access flags) and with finance
    # (ledger, audit), so it is written out in full rather than generated from models.
    op.execute(
        """
        CREATE TABLE tenants (
            tenant_id              text PRIMARY KEY,
            name                   text NOT NULL,
            email                  text NOT NULL,
            plan                   text NOT NULL,
            stripe_customer_id     text UNIQUE,
            stripe_subscription_id text UNIQUE,
            billing_status         text NOT NULL DEFAULT 'pending'
                CHECK (billing_status IN ('pending', 'trialing', 'active', 'past_due',
                                          'unpaid', 'suspended', 'canceled', 'paused',
                                          'incomplete')),
            -- The contract the SaaS API reads on every request.
            api_access_enabled     boolean NOT NULL DEFAULT true,
            rate_limit_multiplier  numeric(4, 2) NOT NULL DEFAULT 1.00
                CHECK (rate_limit_multiplier >= 0 AND rate_limit_multiplier <= 1),
            trial_end              timestamptz,
            created_at             timestamptz NOT NULL DEFAULT now(),
            updated_at             timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE webhook_events (
            id              bigserial PRIMARY KEY,
            event_id        text NOT NULL UNIQUE,
            event_type      text NOT NULL,
            api_version     text,
            livemode        boolean NOT NULL DEFAULT false,
            stripe_created  timestamptz,
            payload         jsonb NOT NULL,
            received_at     timestamptz NOT NULL DEFAULT now(),
            status          text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processing', 'processed', 'ignored',
                                  'failed', 'dead')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            processed_at    timestamptz,
            last_error      text
        );
        CREATE INDEX webhook_events_pending ON webhook_events (next_attempt_at, id)
            WHERE status IN ('pending', 'failed');

        CREATE TABLE daily_tenant_usage (
            usage_date         date NOT NULL,
            tenant_id          text NOT NULL,
            billable_queries   bigint NOT NULL CHECK (billable_queries >= 0),
            tokens             bigint NOT NULL CHECK (tokens >= 0),
            embeddings         bigint NOT NULL CHECK (embeddings >= 0),
            raw_events         bigint NOT NULL CHECK (raw_events >= 0),
            duplicate_events   bigint NOT NULL CHECK (duplicate_events >= 0),
            computed_at        timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (usage_date, tenant_id)
        );

        CREATE TABLE usage_report_ledger (
            id               bigserial PRIMARY KEY,
            tenant_id        text NOT NULL,
            metric           text NOT NULL,
            usage_date       date NOT NULL,
            value            bigint NOT NULL CHECK (value >= 0),
            value_version    integer NOT NULL,
            identifier       text NOT NULL UNIQUE,
            stripe_customer_id text NOT NULL,
            meter_event_name text NOT NULL,
            status           text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts         integer NOT NULL DEFAULT 0,
            created_at       timestamptz NOT NULL DEFAULT now(),
            delivered_at     timestamptz,
            last_error       text,
            UNIQUE (tenant_id, metric, usage_date, value_version)
        );

        CREATE TABLE dunning_actions (
            id           bigserial PRIMARY KEY,
            invoice_id   text NOT NULL,
            tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
            step         integer NOT NULL CHECK (step >= 1),
            action       text NOT NULL,
            details      jsonb NOT NULL DEFAULT '{}'::jsonb,
            executed_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (invoice_id, step)
        );

        CREATE TABLE notification_outbox (
            id          bigserial PRIMARY KEY,
            dedup_key   text NOT NULL UNIQUE,
            tenant_id   text,
            template    text NOT NULL,
            recipient   text NOT NULL,
            subject     text NOT NULL,
            body        text NOT NULL,
            context     jsonb NOT NULL DEFAULT '{}'::jsonb,
            status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
            attempts    integer NOT NULL DEFAULT 0,
            created_at  timestamptz NOT NULL DEFAULT now(),
            sent_at     timestamptz,
            last_error  text
        );

        CREATE TABLE audit_log (
            id           bigserial PRIMARY KEY,
            occurred_at  timestamptz NOT NULL DEFAULT now(),
            actor        text NOT NULL,
            action       text NOT NULL,
            entity_type  text NOT NULL,
            entity_id    text NOT NULL,
            reason       text NOT NULL,
            before       jsonb,
            after        jsonb
        );
        CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, occurred_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE audit_log, notification_outbox, dunning_actions, usage_report_ledger,
                   daily_tenant_usage, webhook_events, tenants;
        """
    )
