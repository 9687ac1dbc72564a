"""Reconciliation: Stripe snapshots, state findings, usage-vs-invoice audit, health, chat alerts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Snapshots are keyed by the UTC date they were taken: a re-run the same day replaces them,
    # earlier days stay for audits ("what did Stripe say on the 3rd?").
    op.execute(
        """
        CREATE TABLE stripe_customer_snapshots (
            snapshot_date              date NOT NULL,
            customer_id                text NOT NULL,
            email                      text,
            metadata_tenant_id         text,
            has_default_payment_method boolean NOT NULL,
            created                    timestamptz,
            PRIMARY KEY (snapshot_date, customer_id)
        );

        CREATE TABLE stripe_subscription_snapshots (
            snapshot_date                date NOT NULL,
            subscription_id              text NOT NULL,
            customer_id                  text NOT NULL,
            status                       text NOT NULL,
            plan                         text,
            price_ids                    text[] NOT NULL DEFAULT '{}',
            -- Item-level current period (the API moved it from the subscription to its items).
            current_period_start         timestamptz,
            current_period_end           timestamptz,
            trial_end                    timestamptz,
            trial_end_behavior           text,
            cancel_at_period_end         boolean NOT NULL,
            canceled_at                  timestamptz,
            ended_at                     timestamptz,
            has_payment_method           boolean NOT NULL,
            latest_invoice_id            text,
            latest_invoice_status        text,
            latest_invoice_attempt_count integer,
            created                      timestamptz,
            taken_at                     timestamptz NOT NULL,
            PRIMARY KEY (snapshot_date, subscription_id)
        );
        CREATE INDEX stripe_subscription_snapshots_customer
            ON stripe_subscription_snapshots (snapshot_date, customer_id);

        CREATE TABLE stripe_invoice_snapshots (
            snapshot_date              date NOT NULL,
            invoice_id                 text NOT NULL,
            customer_id                text NOT NULL,
            subscription_id            text,
            status                     text NOT NULL,
            billing_reason             text,
            number                     text,
            currency                   text NOT NULL,
            amount_due                 bigint NOT NULL,
            amount_paid                bigint NOT NULL,
            amount_remaining           bigint NOT NULL,
            attempt_count              integer NOT NULL,
            attempted                  boolean NOT NULL,
            period_start               timestamptz,
            period_end                 timestamptz,
            created                    timestamptz,
            finalized_at               timestamptz,
            paid_at                    timestamptz,
            automatically_finalizes_at timestamptz,
            finalization_error         text,
            taken_at                   timestamptz NOT NULL,
            PRIMARY KEY (snapshot_date, invoice_id)
        );
        CREATE INDEX stripe_invoice_snapshots_customer
            ON stripe_invoice_snapshots (snapshot_date, customer_id);

        CREATE TABLE stripe_invoice_line_snapshots (
            snapshot_date date NOT NULL,
            invoice_id    text NOT NULL,
            line_id       text NOT NULL,
            price_id      text,
            metered       boolean NOT NULL,
            meter_id      text,
            quantity      bigint,
            amount        bigint NOT NULL,
            period_start  timestamptz,
            period_end    timestamptz,
            description   text,
            PRIMARY KEY (snapshot_date, invoice_id, line_id)
        );

        -- What the tenant database and Stripe disagree about, by category, per snapshot.
        CREATE TABLE subscription_state_findings (
            id              bigserial PRIMARY KEY,
            snapshot_date   date NOT NULL,
            category        text NOT NULL,
            revenue_leak    boolean NOT NULL,
            tenant_id       text,
            customer_id     text,
            subscription_id text,
            detail          text NOT NULL,
            local_state     jsonb,
            stripe_state    jsonb
        );
        CREATE INDEX subscription_state_findings_day
            ON subscription_state_findings (snapshot_date, category);

        -- One row per tenant and closed billing period (metered invoice line), side by side.
        CREATE TABLE usage_invoice_audit (
            audit_date           date NOT NULL,
            invoice_id           text NOT NULL,
            line_id              text NOT NULL,
            tenant_id            text,
            customer_id          text NOT NULL,
            plan                 text,
            period_start         timestamptz NOT NULL,
            period_end           timestamptz NOT NULL,
            warehouse_queries    bigint NOT NULL,
            daily_usage_queries  bigint NOT NULL,
            ledger_queries       bigint NOT NULL,
            stripe_meter_queries bigint NOT NULL,
            invoice_quantity     bigint NOT NULL,
            invoice_amount       bigint NOT NULL,
            recomputed_amount    bigint NOT NULL,
            difference_cents     bigint NOT NULL,
            causes               jsonb NOT NULL DEFAULT '[]'::jsonb,
            explanation          text NOT NULL,
            PRIMARY KEY (audit_date, invoice_id, line_id)
        );

        -- The daily health series the Dagster UI plots and the thresholds are checked on.
        CREATE TABLE billing_health_daily (
            day                        date PRIMARY KEY,
            webhook_events             integer NOT NULL,
            webhook_success_rate       numeric(6, 5),
            payment_first_attempts     integer NOT NULL,
            first_attempt_success_rate numeric(6, 5),
            usage_sync_lag_hours       numeric(10, 2),
            invoice_failures           integer NOT NULL,
            state_mismatches           integer NOT NULL,
            dunning_failed             integer NOT NULL,
            dunning_recovered          integer NOT NULL,
            dunning_suspended          integer NOT NULL,
            dunning_open               integer NOT NULL,
            computed_at                timestamptz NOT NULL DEFAULT now()
        );

        -- Alerts to a chat webhook, delivered (and retried) apart from the email outbox.
        CREATE TABLE alert_deliveries (
            alert_id    bigint NOT NULL REFERENCES alerts (id),
            channel     text NOT NULL CHECK (channel IN ('chat')),
            status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'dead')),
            attempts    integer NOT NULL DEFAULT 0,
            last_error  text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            sent_at     timestamptz,
            PRIMARY KEY (alert_id, channel)
        );
        CREATE INDEX alert_deliveries_pending ON alert_deliveries (created_at)
            WHERE status = 'pending';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE alert_deliveries, billing_health_daily, usage_invoice_audit,
                   subscription_state_findings, stripe_invoice_line_snapshots,
                   stripe_invoice_snapshots, stripe_subscription_snapshots,
                   stripe_customer_snapshots;
        """
    )
