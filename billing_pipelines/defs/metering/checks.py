"""Checks that Stripe bills what the warehouse says, and that usage reaches Stripe on time."""

from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from billing_pipelines.defs.metering.assets import day_parts_of, stripe_meter_reports
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib import markdown
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.metering import cuts, ledger, rotation
from billing_pipelines.lib.metering.planning import BillingAccount, LedgerEntry
from billing_pipelines.lib.metering.rotation import DayKey
from billing_pipelines.lib.reconciliation.advice import names
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe import periods as stripe_periods

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import StripeClient

# A period ending on the partition's day or the next one is read in full before its invoice
# finalizes (the check of day D runs early on D+1, inside the invoice's grace period).
CLOSING_DAYS = 2


class TotalsCheckConfig(dg.Config):
    """Meter event summaries are eventually consistent: re-read differing totals this long.
    Each tenant is read on its slot day among `every_days` (all its days since in one
    request), and daily while a period of its closes, its day is split or re-sent."""

    settle_seconds: float = 120.0
    poll_seconds: float = 5.0
    every_days: int = Field(
        default=rotation.DEFAULT_EVERY_DAYS,
        ge=0,
        description=(
            "Days between a tenant's reads of Stripe's summaries (its days since are compared "
            "in one request); 0 or 1 reads every tenant every day."
        ),
    )


@dg.asset_check(
    asset=stripe_meter_reports,
    partitions_def=daily_partitions,
    description=(
        "Stripe's meter event summaries equal the warehouse totals per billable tenant, metric "
        "and day (after letting summaries settle): each tenant's days are read on its slot day "
        "(every 7 days by default, in one request), and on the day itself while a period of "
        "its closes, a boundary splits its day or its total was re-sent."
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
    boundary or lifecycle instant splits, the part the push reports now), read per tenant in
    rotation so the summaries endpoint's rate limit carries any tenant count."""
    day = date.fromisoformat(context.partition_key)
    every_days = config.every_days
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
    closing: set[str] = set()
    if every_days > 1:
        tenant_of = _tenant_of_subscription(accounts)
        closing = {
            tenant_of[s]
            for s in stripe_periods.closing_subscriptions(
                client, day, day + timedelta(days=CLOSING_DAYS - 1)
            )
            if s in tenant_of
        }
    plan = rotation.rotation(
        day,
        customers,
        every_days,
        closing=closing,
        split=set(parts),
        # Version 1 is a day's first total: a newer one is a correction sent for this day.
        resent={t for (t, _), e in reported.items() if e.value_version > 1},
    )
    expected: dict[DayKey, int] = {}
    for meter in catalog.meters.values():
        for tenant in plan.due:
            part = parts.get(tenant)
            if part is not None and part.usage is None:
                continue
            source = part.usage if part is not None and part.usage is not None else {}
            if meter.usage_column in source:
                value = source[meter.usage_column]
            else:
                value = usage.get(tenant, {}).get(meter.usage_column, 0)
            if value or (tenant, meter.metric) in reported:
                expected[(tenant, meter.metric, day)] = value
    expected.update(_earlier_days(client, billing_db, day, every_days, plan, accounts))

    meter_ids = stripe_meters.active_meter_ids(client)
    event_names = {m.metric: m.event_name for m in catalog.meters.values()}
    limiter = pacing.RateLimiter(pacing.default_rate(stripe.api_key))
    requests = 0

    def fetch(keys: list[DayKey]) -> dict[DayKey, int]:
        nonlocal requests
        out: dict[DayKey, int] = {}
        # One summaries request per tenant and metric, grouped by day over its days' range.
        for (tenant, metric), (first, last) in sorted(rotation.request_ranges(keys).items()):
            limiter.acquire()
            requests += 1
            customer = customers[tenant]
            assert customer is not None
            totals = stripe_meters.daily_totals(
                client, meter_ids[event_names[metric]], customer, first, last
            )
            out.update({(tenant, metric, d): int(v) for d, v in totals.items()})
        return out

    mismatches = rotation.settle_day_totals(
        expected, fetch, timeout_seconds=config.settle_seconds, poll_seconds=config.poll_seconds
    )
    compared_days = sorted({d for _, _, d in expected})
    tenant_days = len({(t, d) for t, _, d in expected})
    first_day = rotation.window(day, every_days)[0]
    scope = (
        f"Read {len(plan.due)} of {len(customers)} billable tenant(s) "
        f"({', '.join(f'{plan.count(r)} {r}' for r in rotation.REASONS)}) and compared "
        f"{len(expected)} total(s) of {len({t for t, _, _ in expected})} of them over "
        f"{tenant_days} tenant-day(s) from {compared_days[0] if compared_days else day} to "
        f"{day}, in {requests} summaries request(s); {len(plan.left)} tenant(s) left for their "
        f"slot days (a tenant's days are read on its slot day, one day in "
        f"{max(1, every_days)}, back to the day after its previous one: from {first_day} today)."
    )
    bad_days = sorted({m.day for m in mismatches})
    return dg.AssetCheckResult(
        passed=not mismatches,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"Stripe's totals differ from the warehouse for {len(mismatches)} tenant metric "
            f"day(s) ({names(m.tenant_id for m in mismatches)}) on "
            f"{', '.join(str(d) for d in bad_days)}. Next: re-run usage_to_stripe_job for "
            f"{', '.join(f'partition {d}' for d in bad_days)} (`billing usage push --date "
            f"{bad_days[0]}`, one per day), which sends changed totals as new versions; a day "
            "older than Stripe's 35 days cannot be re-sent (usage_within_stripe_window lists it "
            f"for a manual adjustment). {scope}"
            if mismatches
            else scope
        ),
        metadata={
            "compared": dg.MetadataValue.int(len(expected)),
            "tenants_read": dg.MetadataValue.int(len(plan.due)),
            "tenant_days": dg.MetadataValue.int(tenant_days),
            "tenants_left_for_later": dg.MetadataValue.int(len(plan.left)),
            "summary_requests": dg.MetadataValue.int(requests),
            "every_days": dg.MetadataValue.int(every_days),
            **{
                f"read_for_{r.replace(' ', '_').replace('-', '')}": dg.MetadataValue.int(
                    plan.count(r)
                )
                for r in rotation.REASONS
            },
            "mismatches": dg.MetadataValue.int(len(mismatches)),
            "over_billed_units": dg.MetadataValue.int(
                sum(m.difference for m in mismatches if m.difference > 0)
            ),
            "under_billed_units": dg.MetadataValue.int(
                sum(-m.difference for m in mismatches if m.difference < 0)
            ),
            "details": dg.MetadataValue.md(
                markdown.table(
                    ["tenant", "metric", "day", "warehouse", "stripe", "diff"],
                    [
                        (m.tenant_id, m.metric, m.day, m.warehouse, m.stripe, f"{m.difference:+}")
                        for m in mismatches
                    ],
                    empty="all totals match",
                )
            ),
        },
    )


def _tenant_of_subscription(accounts: Mapping[str, BillingAccount]) -> dict[str, str]:
    """Billable tenants by their Stripe subscription id."""
    return {
        a.stripe_subscription_id: t
        for t, a in accounts.items()
        if a.billable and a.stripe_subscription_id
    }


def _earlier_days(
    client: "StripeClient",
    billing_db: BillingDatabase,
    day: date,
    every_days: int,
    plan: rotation.Rotation,
    accounts: Mapping[str, BillingAccount],
) -> dict[DayKey, int]:
    """The due tenants' earlier days in the window, from the validated daily partitions (the
    warehouse totals each day's push sent): only days the ledger shows were pushed for the
    tenant, and not the days a boundary split (those are compared on their own day)."""
    earlier = [d for d in rotation.window(day, every_days) if d < day]
    if not earlier or not plan.due:
        return {}
    catalog = load_catalog()
    reported: dict[date, dict[tuple[str, str], LedgerEntry]] = {}
    usage: dict[date, dict[str, dict[str, int]]] = {}
    day_cuts: dict[date, dict[str, list[cuts.UsageCut]]] = {}
    with billing_db.transaction() as conn:
        for d in earlier:
            reported[d] = ledger.latest_entries(conn, d)
            usage[d] = ledger.stored_usage(conn, d)
            day_cuts[d] = cuts.cuts_on(conn, d)
    tenant_of = {s: t for s, t in _tenant_of_subscription(accounts).items() if t in plan.due}
    reported_tenants = {d: {t for t, _ in entries} for d, entries in reported.items()}
    split: dict[date, set[str]] = {}
    for d in earlier:
        times = stripe_periods.subscription_times(client, set(tenant_of), d)
        by_tenant = cuts.with_cuts({tenant_of[s]: t for s, t in times.items()}, day_cuts[d])
        split[d] = rotation.split_tenants(d, by_tenant)
    expected: dict[DayKey, int] = {}
    for tenant in plan.due:
        days = rotation.days_to_compare(
            day,
            earlier,
            reported={d for d in earlier if tenant in reported_tenants[d]},
            split={d for d in earlier if tenant in split[d]},
        )
        for d in days:
            for meter in catalog.meters.values():
                value = usage[d].get(tenant, {}).get(meter.usage_column, 0)
                if value or (tenant, meter.metric) in reported[d]:
                    expected[(tenant, meter.metric, d)] = value
    return expected
