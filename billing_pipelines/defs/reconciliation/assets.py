"""Reconciliation: Stripe snapshots, the tenant DB against them, usage against invoices, health."""

import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
from pydantic import Field

from billing_pipelines.defs import metadata as metadata_values
from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.resources import (
    STRIPE_POOL,
    BillingDatabase,
    StripeResource,
    UsageWarehouse,
)
from billing_pipelines.defs.sources import assets as sources
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib import markdown
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.notifications.emails import format_money
from billing_pipelines.lib.reconciliation import (
    advice,
    health,
    health_view,
    late_usage,
    snapshot_passes,
    usage_audit,
)
from billing_pipelines.lib.reconciliation import audit_table as audit_view
from billing_pipelines.lib.reconciliation import diff as reconciliation
from billing_pipelines.lib.reconciliation.invoice_totals import billed_totals
from billing_pipelines.lib.reconciliation.period_truths import period_truths
from billing_pipelines.lib.reconciliation.read_ahead import ReadAhead
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import prices as stripe_prices
from billing_pipelines.lib.usage.periods import PeriodTruth
from billing_pipelines.settings import load_settings

GROUP = "reconciliation"

CANCELED_CHECK = "no_canceled_subscription_served"
TRIAL_CHECK = "no_trial_ended_without_payment_method_served"
UNPAID_CHECK = "no_unpaid_service"
CONSISTENT_CHECK = "tenant_db_matches_stripe"
AUDIT_CHECK = "usage_matches_invoices"

# Leak checks: which finding categories each one fails on.
LEAK_CHECKS = {
    CANCELED_CHECK: (reconciliation.CANCELED_ACTIVE,),
    TRIAL_CHECK: (reconciliation.TRIAL_ENDED_NO_PAYMENT_METHOD,),
    UNPAID_CHECK: (reconciliation.INVOICE_STUCK_IN_DRAFT, reconciliation.SUBSCRIPTION_INCOMPLETE),
}


class SnapshotConfig(dg.Config):
    """How a snapshot is taken: incremental from the previous pass, with a periodic full pass."""

    full_pass: bool = Field(
        default=False, description="List every object in Stripe now, whatever the schedule."
    )
    full_pass_every_days: int = Field(
        default=snapshot_passes.FULL_PASS_EVERY_DAYS,
        ge=1,
        description="A full pass is due when the last one is this many days old.",
    )


def _pass_metadata(rec: snapshot_passes.PassRecord) -> dict[str, dg.MetadataValue]:
    """How the snapshot was taken: full or incremental, why, and what it read and carried."""
    return {
        "pass": dg.MetadataValue.text(rec.mode),
        "pass_reason": dg.MetadataValue.text(rec.reason),
        "objects_read": dg.MetadataValue.int(rec.objects_read),
        "read_by_id": dg.MetadataValue.int(rec.read_by_id),
        "carried_forward": dg.MetadataValue.int(rec.carried),
        "last_full_pass": dg.MetadataValue.text(rec.full_pass_date.isoformat()),
    }


@dg.asset(
    deps=[sources.stripe_customers, sources.stripe_subscriptions, sources.plan_catalog],
    group_name=GROUP,
    kinds={"stripe", "postgres"},
    tags={"domain": GROUP},
    pool=STRIPE_POOL,
)
def stripe_subscription_snapshot(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """Every Stripe customer and subscription (all statuses) as of today, stored by date."""
    # On the business clock, so the snapshot's date is the day it describes; the frontier of
    # the pass is real time (Stripe stamps `created` with it).
    taken_at = load_settings().now()
    result = snapshot_passes.subscription_pass(
        billing_db.transaction,
        stripe.client(),
        set(load_catalog().plans),
        taken_at,
        int(time.time()),
        test_mode=not stripe.livemode(),
        every_days=config.full_pass_every_days,
        force_full=config.full_pass,
    )
    with billing_db.transaction() as conn:
        statuses = snapshot_passes.status_counts(
            conn, "stripe_subscription_snapshots", taken_at.date()
        )
    rec = result.record
    context.log.info(
        "snapshot %s (%s pass: %s): %d customers, %d subscriptions, %d read, %d carried",
        taken_at.date(),
        rec.mode,
        rec.reason,
        result.customers,
        result.subscriptions,
        rec.objects_read,
        rec.carried,
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": dg.MetadataValue.text(taken_at.date().isoformat()),
            "customers": dg.MetadataValue.int(result.customers),
            "subscriptions": dg.MetadataValue.int(result.subscriptions),
            "by_status": dg.MetadataValue.json(statuses),
            **_pass_metadata(rec),
        }
    )


@dg.asset(
    deps=[sources.stripe_invoices],
    group_name=GROUP,
    kinds={"stripe", "postgres"},
    tags={"domain": GROUP},
    pool=STRIPE_POOL,
)
def stripe_invoice_snapshot(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """Every Stripe invoice with its lines (quantities, amounts, periods) as of today."""
    # On the business clock, so the snapshot's date is the day it describes.
    taken_at = load_settings().now()
    result = snapshot_passes.invoice_pass(
        billing_db.transaction,
        stripe.client(),
        taken_at,
        int(time.time()),
        test_mode=not stripe.livemode(),
        every_days=config.full_pass_every_days,
        force_full=config.full_pass,
    )
    day = taken_at.date()
    with billing_db.transaction() as conn:
        statuses = snapshot_passes.status_counts(conn, "stripe_invoice_snapshots", day)
        totals = conn.execute(
            "SELECT count(*) AS lines, count(*) FILTER (WHERE metered) AS metered "
            "FROM stripe_invoice_line_snapshots WHERE snapshot_date = %s",
            (day,),
        ).fetchone()
        amounts = conn.execute(
            "SELECT status, currency, subtotal, tax, total FROM stripe_invoice_snapshots "
            "WHERE snapshot_date = %s",
            (day,),
        ).fetchall()
    rec = result.record
    invoices = sum(statuses.values())
    # What the finalized invoices bill: before tax, the tax Stripe added, and in total.
    billed = billed_totals(
        (a["status"], a["currency"], a["subtotal"], a["tax"], a["total"]) for a in amounts
    )
    context.log.info(
        "snapshot %s (%s pass: %s): %d invoices, %d lines, %d read, %d carried",
        day,
        rec.mode,
        rec.reason,
        invoices,
        totals["lines"] if totals else 0,
        rec.objects_read,
        rec.carried,
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": dg.MetadataValue.text(day.isoformat()),
            "invoices": dg.MetadataValue.int(invoices),
            "lines": dg.MetadataValue.int(int(totals["lines"]) if totals else 0),
            "metered_lines": dg.MetadataValue.int(int(totals["metered"]) if totals else 0),
            "by_status": dg.MetadataValue.json(statuses),
            **_pass_metadata(rec),
            "billed": dg.MetadataValue.text(
                "; ".join(f"{t.invoices} invoices: {t.describe()}" for t in billed.values())
                or "no finalized invoice"
            ),
            "billed_tax_cents": dg.MetadataValue.int(sum(t.tax for t in billed.values())),
        }
    )


# ---- the tenant database against the snapshot --------------------------------------------------


@dg.asset(
    deps=[stripe_subscription_snapshot, stripe_invoice_snapshot, sources.tenants],
    group_name=GROUP,
    kinds={"postgres"},
    tags={"domain": GROUP},
    check_specs=[
        dg.AssetCheckSpec(
            CANCELED_CHECK,
            asset="subscription_state_diff",
            description="No tenant keeps API access after Stripe cancelled its subscription.",
        ),
        dg.AssetCheckSpec(
            TRIAL_CHECK,
            asset="subscription_state_diff",
            description="No tenant is served after its trial ended without a payment method.",
        ),
        dg.AssetCheckSpec(
            UNPAID_CHECK,
            asset="subscription_state_diff",
            description="No invoice is stuck in draft, no served subscription is incomplete.",
        ),
        dg.AssetCheckSpec(
            CONSISTENT_CHECK,
            asset="subscription_state_diff",
            description="The tenant database agrees with Stripe in every category.",
        ),
    ],
)
def subscription_state_diff(
    context: dg.AssetExecutionContext, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    """Where the tenant database and Stripe disagree, by category, for the newest snapshot."""
    with billing_db.transaction() as conn:
        try:
            day, taken_at, tenants, subs, customers, invoices = reconciliation.load_snapshot(conn)
        except LookupError as exc:
            raise dg.Failure(str(exc)) from None
        result = reconciliation.diff(tenants, subs, customers, invoices, as_of=taken_at)
        reconciliation.store_findings(conn, day, result.findings)
    grouped = result.by_category()
    for finding in result.findings:
        context.log.warning("%s: %s", finding.category, finding.detail)
    checks = []
    for name, categories in LEAK_CHECKS.items():
        leaks = [f for c in categories for f in result.leaks(c)]
        checks.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not leaks,
                severity=dg.AssetCheckSeverity.ERROR,
                description=advice.describe(leaks),
                metadata={
                    "leaks": dg.MetadataValue.int(len(leaks)),
                    "tenants": dg.MetadataValue.md(reconciliation.findings_table(leaks)),
                },
            )
        )
    checks.append(
        dg.AssetCheckResult(
            check_name=CONSISTENT_CHECK,
            passed=not result.findings,
            # Money at risk (a tenant served without a charge) is an error; bookkeeping
            # differences that cost nothing yet are warnings.
            severity=dg.AssetCheckSeverity.ERROR
            if any(f.revenue_leak for f in result.findings)
            else dg.AssetCheckSeverity.WARN,
            description=advice.describe(result.findings),
            metadata={
                "findings": dg.MetadataValue.int(len(result.findings)),
                **{f"{c}": dg.MetadataValue.int(len(grouped[c])) for c in grouped},
            },
        )
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_date": dg.MetadataValue.text(day.isoformat()),
            "tenants": dg.MetadataValue.int(result.tenants),
            "subscriptions": dg.MetadataValue.int(result.subscriptions),
            "findings": dg.MetadataValue.int(len(result.findings)),
            "state_mismatches": dg.MetadataValue.int(result.mismatches),
            "revenue_leaks": dg.MetadataValue.int(sum(f.revenue_leak for f in result.findings)),
            **{f"n_{c}": dg.MetadataValue.int(len(grouped[c])) for c in grouped},
            "details": dg.MetadataValue.md(reconciliation.findings_table(result.findings)),
        },
        check_results=checks,
    )


# ---- usage against invoices --------------------------------------------------------------------


class UsageAuditConfig(dg.Config):
    """Which closed periods to audit: those whose period ended within the lookback."""

    lookback_days: int = 40


def _days_read(line: usage_audit.BilledLine) -> bool:
    """True when the audit compares Stripe's total on some day of the line: every day of its
    period but the one its end instant splits."""
    end = line.period_end.astimezone(UTC)
    split = None if end == end.replace(hour=0, minute=0, second=0, microsecond=0) else end.date()
    return any(d != split for d in usage_audit.period_days(line.period_start, line.period_end))


def audit_table(rows: list[usage_audit.AuditRow], limit: int = 50) -> str:
    """Differences as a markdown table: tenant, period, amount, causes."""
    return markdown.table(
        ["tenant", "period", "invoice", "difference", "causes"],
        [
            (
                r.line.tenant_id or r.line.customer_id,
                f"{r.line.period_start:%Y-%m-%d} to "
                f"{r.line.period_end - timedelta(seconds=1):%Y-%m-%d}",
                r.line.invoice_id,
                format_money(r.difference_cents, r.line.currency),
                "; ".join(r.causes),
            )
            for r in rows
            if not r.clean
        ],
        limit=limit,
        empty="every audited period matches to the cent",
    )


@dg.asset(
    # Everything the audit lines up: the warehouse, daily usage, the report ledger (written by
    # stripe_meter_reports), Stripe's meter summaries, the snapshots, the catalog's tiers.
    deps=[
        stripe_invoice_snapshot,
        stripe_subscription_snapshot,
        sources.usage_events,
        daily_tenant_usage,
        stripe_meter_reports,
        sources.stripe_meters,
        sources.plan_catalog,
        sources.tenants,
    ],
    group_name=GROUP,
    kinds={"stripe", "clickhouse", "postgres"},
    tags={"domain": GROUP},
    pool=STRIPE_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            AUDIT_CHECK,
            asset="usage_invoice_audit",
            description=(
                "For every tenant and closed period, the warehouse, daily usage, ledger, Stripe "
                "meters and the invoice agree, and the amount equals the catalog tiers."
            ),
        )
    ],
)
def usage_invoice_audit(
    context: dg.AssetExecutionContext,
    config: UsageAuditConfig,
    billing_db: BillingDatabase,
    warehouse: UsageWarehouse,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """Per tenant and closed billing period: every usage source and the invoice, side by side."""
    catalog = load_catalog()
    with billing_db.transaction() as conn:
        latest = conn.execute(
            "SELECT max(snapshot_date) AS d, max(taken_at) AS t FROM stripe_invoice_snapshots "
            "WHERE snapshot_date = (SELECT max(snapshot_date) FROM stripe_invoice_snapshots)"
        ).fetchone()
        if latest is None or latest["d"] is None:
            raise dg.Failure("no invoice snapshot yet: materialize stripe_invoice_snapshot first")
        audit_date, taken_at = latest["d"], latest["t"]
        lines = usage_audit.billed_lines(
            conn, audit_date, catalog.plans, since=taken_at - timedelta(days=config.lookback_days)
        )
    client = stripe.client()
    # Each line is priced by its own price's plan (a plan change leaves an old-price line).
    lines = usage_audit.priced_by_line(
        lines,
        catalog.plans,
        stripe_prices.plans_of_prices(client, {ln.price_id for ln in lines if ln.price_id}),
    )
    # Late usage billed on a later invoice counts for the line it corrects.
    with billing_db.transaction() as conn:
        done = late_usage.corrected(conn, [(ln.invoice_id, ln.line_id) for ln in lines])
    lines = late_usage.with_corrections(lines, done)
    tenants = [ln.tenant_id for ln in lines if ln.tenant_id]
    days = [d for ln in lines for d in usage_audit.period_days(ln.period_start, ln.period_end)]
    # One summaries list per line (grouped by day). The lists are read ahead in a few threads,
    # in the lines' order, while this thread reads the warehouse and the billing database: the
    # same requests (paced by the client), overlapped with the warehouse's queries.
    SummaryKey = tuple[str, str, datetime, datetime]

    def summary_key(line: usage_audit.BilledLine) -> SummaryKey:
        assert line.meter_id is not None
        return (line.meter_id, line.customer_id, line.period_start, line.period_end)

    def read_summaries(key: SummaryKey) -> dict[date, Decimal]:
        meter_id, customer_id, start, end = key
        period = usage_audit.period_days(start, end)
        if not period:
            return {}
        return stripe_meters.daily_totals(client, meter_id, customer_id, period[0], period[-1])

    def stripe_day_total(line: usage_audit.BilledLine, day: date) -> int:
        if line.meter_id is None:
            return 0
        return int(summaries.get(summary_key(line)).get(day, Decimal(0)))

    # Only the lines the audit reads Stripe for: a metered line with a day besides a split one.
    read = [ln for ln in lines if ln.meter_id is not None and _days_read(ln)]
    with ReadAhead(read_summaries, [summary_key(ln) for ln in read]) as summaries:
        warehouse_truth: dict[usage_audit.Key, int] = {}
        stored: dict[usage_audit.Key, int] = {}
        delivered: dict[usage_audit.Key, int] = {}
        # Truth by event timestamps over each line's own period, never by whole days: every
        # line's at once, in slices of tenants.
        truths: dict[tuple[str, datetime, datetime], PeriodTruth] = {}
        if tenants and days:
            first, last = min(days), max(days)
            usage = warehouse.client()
            warehouse_truth = usage_audit.warehouse_queries(usage, tenants, first, last)
            with billing_db.transaction() as conn:
                stored = usage_audit.stored_queries(conn, tenants, first, last)
                delivered = usage_audit.ledger_queries(conn, tenants, first, last)
        if tenants:
            truths = period_truths(
                warehouse.client(),
                [(ln.tenant_id, ln.period_start, ln.period_end) for ln in lines if ln.tenant_id],
            )

        def truth_of(line: usage_audit.BilledLine) -> PeriodTruth | None:
            if line.tenant_id is None:
                return None
            start, end = line.period_start.astimezone(UTC), line.period_end.astimezone(UTC)
            return truths[(line.tenant_id, start, end)]

        rows = usage_audit.audit_lines(
            lines,
            warehouse=warehouse_truth,
            stored=stored,
            ledger=delivered,
            stripe_day_total=stripe_day_total,
            truth_of=truth_of,
        )
    with billing_db.transaction() as conn:
        usage_audit.store(conn, audit_date, rows)
        fees = usage_audit.fee_explanations(
            conn, audit_date, [r.line.invoice_id for r in rows], catalog.plans
        )
        invoices = audit_view.invoice_summaries(conn, audit_date, [r.line.invoice_id for r in rows])
    bad = [r for r in rows if not r.clean]
    for row in bad:
        context.log.error(
            "%s %s: %s", row.line.tenant_id, row.line.invoice_id, "; ".join(row.causes)
        )
    over = sum(r.difference_cents for r in rows if r.difference_cents > 0)
    under = -sum(r.difference_cents for r in rows if r.difference_cents < 0)
    tenant_of = {r.line.invoice_id: r.line.tenant_id or r.line.customer_id for r in rows}
    explained = [(r.line.invoice_id, r.line.line_id, r.explanation) for r in rows] + fees
    explanations = "\n".join(
        f"- {tenant_of.get(invoice, '')} / {invoice} / {line}: {text}"
        for invoice, line, text in sorted(explained)[:100]
    )
    return dg.MaterializeResult(
        metadata={
            "audit_date": dg.MetadataValue.text(audit_date.isoformat()),
            "periods_audited": dg.MetadataValue.int(len(rows)),
            "truth": dg.MetadataValue.text(
                "distinct billable query ids (each at its first event) with timestamps in each "
                "invoice line's own [period start, period end), priced by the line's own price"
            ),
            "periods_with_differences": dg.MetadataValue.int(len(bad)),
            "over_charged_cents": dg.MetadataValue.int(over),
            "under_charged_cents": dg.MetadataValue.int(under),
            "over_charged": dg.MetadataValue.text(format_money(over, catalog.currency)),
            "under_charged": dg.MetadataValue.text(format_money(under, catalog.currency)),
            "explanations": dg.MetadataValue.md(explanations or "no closed periods"),
            "audit_lines": metadata_values.table(audit_view.audit_lines_table(rows, invoices)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=AUDIT_CHECK,
                passed=not bad,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{len(bad)} billing period(s) differ: over-charged "
                    f"{format_money(over, catalog.currency)}, under-charged "
                    f"{format_money(under, catalog.currency)}"
                    if bad
                    else None
                ),
                metadata={
                    "differences": dg.MetadataValue.int(len(bad)),
                    "difference_cents": dg.MetadataValue.int(over - under),
                    "difference": dg.MetadataValue.text(
                        format_money(over - under, catalog.currency)
                    ),
                    "details": dg.MetadataValue.md(audit_table(rows)),
                },
            )
        ],
    )


HEALTH_CHECKS = (
    "webhook_success_rate",
    "first_attempt_payment_success_rate",
    "usage_sync_lag",
    "invoice_generation_failures",
    "state_mismatches",
)


class HealthConfig(dg.Config):
    """Alert thresholds of the health record; unset fields are read from the environment."""

    usage_sync_lag_hours: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Hours after a day ends by which its usage must be in Stripe; "
            "unset: USAGE_SYNC_LAG_HOURS."
        ),
    )


@dg.asset(
    # Webhook outcomes from the queue, sync lag from the report ledger, payments and failures
    # from the invoice snapshot, mismatches from the state diff.
    deps=[
        subscription_state_diff,
        stripe_invoice_snapshot,
        sources.webhook_events,
        stripe_meter_reports,
    ],
    group_name="reconciliation",
    kinds={"postgres"},
    tags={"domain": "reconciliation"},
    check_specs=[
        dg.AssetCheckSpec(name, asset="billing_health", description=f"{name} within threshold")
        for name in HEALTH_CHECKS
    ],
)
def billing_health(
    context: dg.AssetExecutionContext, config: HealthConfig, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    """Webhook and payment success, usage sync lag, invoice failures, mismatches, dunning funnel."""
    settings = load_settings()
    # The business clock: a simulated month is judged on its test clock's days.
    now = settings.now()
    day = health.utc_today(now)
    lag_hours = config.usage_sync_lag_hours
    thresholds = health.Thresholds(
        usage_sync_lag_hours=settings.usage_sync_lag_hours if lag_hours is None else lag_hours
    )
    with billing_db.transaction() as conn:
        findings = conn.execute(
            "SELECT tenant_id, revenue_leak FROM subscription_state_findings WHERE snapshot_date "
            "= (SELECT max(snapshot_date) FROM subscription_state_findings) "
            "AND category <> 'customer_without_tenant' ORDER BY tenant_id"
        ).fetchall()
        mismatches = len(findings)
        delivered = conn.execute(
            "SELECT max(usage_date) AS d FROM usage_report_ledger WHERE status = 'delivered'"
        ).fetchone()
        # The newest day whose meter push completed (quiet days send nothing to the ledger).
        pushed = [
            date.fromisoformat(key)
            for key in context.instance.get_materialized_partitions(
                dg.AssetKey("stripe_meter_reports")
            )
        ]
        synced_through = max([d for d in pushed if d <= day], default=None)
        metrics = health.compute(
            conn, day, now=now, state_mismatches=mismatches, synced_through=synced_through
        )
        health.store(conn, metrics)
        series = health.series(conn, day)
    verdicts = health.evaluate(
        metrics,
        thresholds,
        revenue_leaks=sum(1 for f in findings if f["revenue_leak"]),
        mismatched_tenants=list(dict.fromkeys(f["tenant_id"] for f in findings if f["tenant_id"])),
        reported_through=max(
            [d for d in (delivered["d"] if delivered else None, synced_through) if d],
            default=None,
        ),
    )
    numbers = health_view.plotted_values(metrics)
    context.log.info("billing health %s: %s", day, numbers)
    return dg.MaterializeResult(
        metadata={
            "day": dg.MetadataValue.text(day.isoformat()),
            # One number per metric (rates in percent): Dagster plots each over materializations.
            **{
                key: dg.MetadataValue.float(float(value))
                if isinstance(value, float)
                else dg.MetadataValue.int(value)
                for key, value in numbers.items()
            },
            "thresholds": metadata_values.table(health_view.thresholds_table(verdicts, thresholds)),
            "history": metadata_values.table(health_view.history_table(series)),
            "dunning_funnel": dg.MetadataValue.md(
                f"failed {metrics.dunning_failed} -> recovered {metrics.dunning_recovered}, "
                f"suspended {metrics.dunning_suspended}, still open {metrics.dunning_open}"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=v.name,
                passed=v.passed,
                severity=dg.AssetCheckSeverity.ERROR if v.alert else dg.AssetCheckSeverity.WARN,
                description=v.description,
                metadata=_verdict_metadata(v, thresholds),
            )
            for v in verdicts
        ],
    )


def _verdict_metadata(v: health.Verdict, t: health.Thresholds) -> dict[str, dg.MetadataValue]:
    """The checked value beside its target and alert level, in the same unit."""
    _, _, target, alert = health_view.limits(v.name, t)
    value = health_view.check_value(v.name, v.value)
    return {
        **({} if value is None else {"value": dg.MetadataValue.float(value)}),
        "target": dg.MetadataValue.float(float(target)),
        "alert_level": dg.MetadataValue.float(float(alert)),
    }
