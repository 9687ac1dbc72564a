"""Checks that Stripe bills what the warehouse says, and that usage reaches Stripe on time."""

from datetime import date

import dagster as dg

from billing_pipelines.defs.metering.assets import day_parts_of, stripe_meter_reports
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib import markdown
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.planning import Key, settle_totals
from billing_pipelines.lib.reconciliation.advice import names
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing


class TotalsCheckConfig(dg.Config):
    """Meter event summaries are eventually consistent: re-read differing totals this long."""

    settle_seconds: float = 120.0
    poll_seconds: float = 5.0


@dg.asset_check(
    asset=stripe_meter_reports,
    partitions_def=daily_partitions,
    description=(
        "Stripe's meter event summaries for the day equal the warehouse totals per billable "
        "tenant and metric (after letting summaries settle)."
    ),
    pool="stripe_api",
)
def meter_totals_match_warehouse(
    context: dg.AssetCheckExecutionContext,
    config: TotalsCheckConfig,
    warehouse: UsageWarehouse,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.AssetCheckResult:
    """Stripe's day totals equal the warehouse's distinct-event totals (on a day a period
    boundary or lifecycle instant splits, the part the push reports now)."""
    day = date.fromisoformat(context.partition_key)
    catalog = load_catalog()
    usage: dict[str, dict[str, int]] = {
        str(row["tenant_id"]): {str(k): int(v) for k, v in row.items() if k != "tenant_id"}
        for row in warehouse.daily_usage(day).to_dict("records")
    }
    with billing_db.transaction() as conn:
        accounts = ledger.billing_accounts(conn)
        reported = ledger.latest_entries(conn, day)
    customers = {t: a.stripe_customer_id for t, a in accounts.items() if a.billable}
    client = stripe.client()
    # A split day's meter event carries one part at a time (the newest event of the day wins),
    # so the truth to compare with is that part, counted the way the push counts it; a tenant
    # with no part to report now is left as it is in Stripe and not compared.
    parts = day_parts_of(client, warehouse, billing_db)(day, accounts)
    expected: dict[Key, int] = {}
    for meter in catalog.meters.values():
        for tenant in customers:
            part = parts.get(tenant)
            if part is not None and part.usage is None:
                continue
            source = part.usage if part is not None and part.usage is not None else {}
            if meter.usage_column in source:
                value = source[meter.usage_column]
            else:
                value = usage.get(tenant, {}).get(meter.usage_column, 0)
            if value or (tenant, meter.metric) in reported:
                expected[(tenant, meter.metric)] = value
    meter_ids = stripe_meters.active_meter_ids(client)
    event_names = {m.metric: m.event_name for m in catalog.meters.values()}
    limiter = pacing.RateLimiter(pacing.default_rate(stripe.api_key))

    def fetch(keys: list[Key]) -> dict[Key, int]:
        out = {}
        for tenant, metric in keys:
            limiter.acquire()
            customer = customers[tenant]
            assert customer is not None
            total = stripe_meters.day_total(client, meter_ids[event_names[metric]], customer, day)
            out[(tenant, metric)] = int(total)
        return out

    mismatches = settle_totals(
        expected, fetch, timeout_seconds=config.settle_seconds, poll_seconds=config.poll_seconds
    )
    return dg.AssetCheckResult(
        passed=not mismatches,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"Stripe's totals for {day} differ from the warehouse for {len(mismatches)} tenant "
            f"metric(s) ({names(m.tenant_id for m in mismatches)}). Next: re-run "
            f"usage_to_stripe_job for partition {day} (`billing usage push --date {day}`), which "
            "sends changed totals as new versions; a day older than Stripe's 35 days cannot be "
            "re-sent (usage_within_stripe_window lists it for a manual adjustment)"
            if mismatches
            else None
        ),
        metadata={
            "compared": dg.MetadataValue.int(len(expected)),
            "mismatches": dg.MetadataValue.int(len(mismatches)),
            "over_billed_units": dg.MetadataValue.int(
                sum(m.difference for m in mismatches if m.difference > 0)
            ),
            "under_billed_units": dg.MetadataValue.int(
                sum(-m.difference for m in mismatches if m.difference < 0)
            ),
            "details": dg.MetadataValue.md(
                markdown.table(
                    ["tenant", "metric", "warehouse", "stripe", "diff"],
                    [
                        (m.tenant_id, m.metric, m.warehouse, m.stripe, f"{m.difference:+}")
                        for m in mismatches
                    ],
                    empty="all totals match",
                )
            ),
        },
    )
