"""Usage to Stripe: each day's usage as exactly-once meter events."""

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from billing_pipelines.defs.catalog.assets import stripe_catalog
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import (
    STRIPE_POOL,
    BillingDatabase,
    StripeResource,
    UsageWarehouse,
)
from billing_pipelines.defs.sources.assets import plan_catalog, tenants
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import describe_connection_error
from billing_pipelines.lib.markdown import records_table
from billing_pipelines.lib.metering import cuts, ledger
from billing_pipelines.lib.metering import shards as metering_shards
from billing_pipelines.lib.metering.boundaries import DayPart, day_parts
from billing_pipelines.lib.metering.planning import BillingAccount
from billing_pipelines.lib.metering.push import MeterPush, Pace, PartsOf, PushResult, ShardTarget
from billing_pipelines.lib.reconciliation.advice import names
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe import periods as stripe_periods
from billing_pipelines.lib.usage.periods import interval_queries
from billing_pipelines.settings import load_settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from billing_pipelines.lib.stripe.client import StripeClient

WINDOW_CHECK = "usage_within_stripe_window"

BILLABLE_CHECK = "usage_tenants_billable"


class MeterPushConfig(dg.Config):
    """How fast to push and what to refuse; unset fields are read from the environment when the
    run starts."""

    requests_per_second: float | None = Field(
        default=None,
        description="Meter events per second; unset: a safe share of Stripe's test or live limit.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Concurrent requests to Stripe; unset: enough for the rate at 250 ms per answer "
            "(rate x 0.25, at least 8, at most 256)."
        ),
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Processes that send the day's events, tenants split by a stable hash, each with "
            "1/shards of the rate and of the Stripe budget; unset: METER_PUSH_SHARDS, else one "
            "per 500 events/s of the rate (1 at Stripe's default live share), at most one per "
            "CPU and one per 2,000 events of the day."
        ),
    )
    retry_attempts: int = Field(
        default=6, description="Attempts per meter event on 429, 5xx or network errors."
    )
    progress_every_seconds: float = Field(
        default=10.0, description="Seconds between progress log lines."
    )
    daily_value_ceiling: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Largest day total per tenant and metric that is sent (above it the value is "
            "refused); unset: METER_DAILY_VALUE_CEILING."
        ),
    )


@dg.asset(
    partitions_def=daily_partitions,
    # The day's usage, the catalog's meters (in Stripe and in plans.toml), billing accounts.
    deps=[daily_tenant_usage, stripe_catalog, plan_catalog, tenants],
    group_name="metering",
    kinds={"stripe", "postgres"},
    tags={"domain": "metering"},
    pool=STRIPE_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            WINDOW_CHECK,
            asset="stripe_meter_reports",
            description="No changed day total is stranded beyond Stripe's 35-day window.",
        ),
        dg.AssetCheckSpec(
            BILLABLE_CHECK,
            asset="stripe_meter_reports",
            description="Every tenant with usage has a Stripe customer and subscription.",
        ),
    ],
)
def stripe_meter_reports(
    context: dg.AssetExecutionContext,
    config: MeterPushConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
    warehouse: UsageWarehouse,
) -> dg.MaterializeResult:
    """Each billable tenant's day totals in Stripe's meters, sent exactly once per value."""
    day = date.fromisoformat(context.partition_key)
    catalog = load_catalog()
    client = stripe.client()
    meter_ids = stripe_meters.active_meter_ids(client)
    missing = [m.event_name for m in catalog.meters.values() if m.event_name not in meter_ids]
    if missing:
        raise dg.Failure(
            f"no active Stripe meter for {', '.join(missing)}: materialize stripe_catalog first"
        )
    ceiling = config.daily_value_ceiling
    settings = load_settings()
    rate = config.requests_per_second or pacing.default_rate(stripe.api_key)
    shards = config.shards or settings.meter_push_shards  # None: chosen from rate and events
    push = MeterPush(
        day,
        transaction=billing_db.transaction,
        client=client,
        meters=[(m.metric, m.event_name, m.usage_column) for m in catalog.meters.values()],
        ceiling=settings.meter_daily_value_ceiling if ceiling is None else ceiling,
        run_id=context.run.run_id,
        log=context.log,
        parts=day_parts_of(client, warehouse, billing_db),
        shard_target=ShardTarget(stripe.client_spec(), billing_db.url),
    )
    pace = Pace(
        requests_per_second=rate,
        workers=config.workers or pacing.workers_for(rate),
        retry_attempts=config.retry_attempts,
        progress_every_seconds=config.progress_every_seconds,
        shards=shards,
    )
    # One reporter per day at a time, even outside the pool (the lock ends with the transaction).
    with _database_outage_fails_the_push(day), billing_db.transaction() as lock_conn:
        ledger.lock_day(lock_conn, day)
        try:
            result = push.push(push.plan(), pace)
        except metering_shards.ShardLost as exc:
            raise dg.Failure(f"meter push for {day}: {exc}") from exc
    problems = result.problems()
    if problems:
        raise dg.Failure("\n".join(problems), metadata=_failure_metadata(result))
    return dg.MaterializeResult(
        metadata=_push_metadata(result), check_results=_check_results(result)
    )


def day_parts_of(
    client: "StripeClient", warehouse: UsageWarehouse, billing_db: BillingDatabase
) -> PartsOf:
    """The parts of days split by a period boundary or a lifecycle instant: subscription
    times from one paged listing, the instants plan changes and cancellations recorded (their
    old part was billed when they happened), the part's usage counted in the warehouse by
    event timestamps."""

    def parts(day: date, accounts: Mapping[str, BillingAccount]) -> dict[str, DayPart]:
        tenant_of = {
            a.stripe_subscription_id: t
            for t, a in accounts.items()
            if a.billable and a.stripe_subscription_id
        }
        times = stripe_periods.subscription_times(client, set(tenant_of), day)
        with billing_db.transaction() as conn:
            day_cuts = {t: c for t, c in cuts.cuts_on(conn, day).items() if t in accounts}
        settled = cuts.final_at(day_cuts)
        clients: list[Client] = []  # the warehouse is opened only when a day is split

        def count(tenant_id: str, start: datetime, end: datetime) -> int:
            if not clients:
                clients.append(warehouse.client())
            return interval_queries(clients[0], tenant_id, start, end)

        finals: list[set[tuple[str, int]]] = []  # listed once, when a period ends that day

        def invoice_final(tenant: str, end: datetime) -> bool:
            if end in settled.get(tenant, ()):
                return True
            if not finals:
                finals.append(stripe_periods.final_period_ends(client, day))
            subscription = accounts[tenant].stripe_subscription_id or ""
            return (subscription, int(end.timestamp())) in finals[0]

        return day_parts(
            day,
            cuts.with_cuts({tenant_of[s]: t for s, t in times.items()}, day_cuts),
            count,
            invoice_final,
        )

    return parts


def _failure_metadata(result: PushResult) -> dict[str, dg.MetadataValue]:
    """What a failed push reports: what went out, what failed, what was refused."""
    return {
        "sent": dg.MetadataValue.int(result.outcomes.sent),
        "failed": dg.MetadataValue.int(result.outcomes.failed),
        "refused_values": dg.MetadataValue.int(len(result.refused)),
        "refused": dg.MetadataValue.md(
            records_table([dataclasses.asdict(r) for r in result.refused])
        ),
    }


def _push_metadata(result: PushResult) -> dict[str, dg.MetadataValue]:
    """What a successful push reports: counts, day totals per metric, pace."""
    return {
        "sent": dg.MetadataValue.int(result.outcomes.sent),
        "already_delivered": dg.MetadataValue.int(result.outcomes.duplicate),
        "unchanged": dg.MetadataValue.int(result.unchanged),
        "out_of_window": dg.MetadataValue.int(len(result.stranded)),
        "billable_tenants": dg.MetadataValue.int(result.billable_tenants),
        "unbillable_tenants": dg.MetadataValue.int(len(result.desired.unbillable)),
        **{f"total_{m}": dg.MetadataValue.int(v) for m, v in result.totals.items()},
        "requests_per_second_limit": dg.MetadataValue.float(float(result.requests_per_second)),
        "push_seconds": dg.MetadataValue.float(round(result.push_seconds, 2)),
        "retried_requests": dg.MetadataValue.int(result.retried_requests),
        "shards": dg.MetadataValue.int(result.shards),
    }


def _check_results(result: PushResult) -> list[dg.AssetCheckResult]:
    """Stranded totals beyond Stripe's window (ERROR) and unbillable tenants (WARN)."""
    stranded, unbillable = result.stranded, result.desired.unbillable
    return [
        dg.AssetCheckResult(
            check_name=WINDOW_CHECK,
            passed=not stranded,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{len(stranded)} changed total(s) for {result.day} that Stripe refused as older "
                f"than 35 days ({names(str(r.get('tenant_id', '?')) for r in stranded)}). Next: "
                "bill or credit the difference by hand (an invoice item in Stripe); the "
                "metadata lists each tenant, metric and amount"
                if stranded
                else None
            ),
            metadata={
                "stranded": dg.MetadataValue.int(len(stranded)),
                "tenants": dg.MetadataValue.md(records_table(stranded)),
            },
        ),
        dg.AssetCheckResult(
            check_name=BILLABLE_CHECK,
            passed=not unbillable,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{len(unbillable)} tenant(s) used the API on {result.day} without a Stripe "
                f"customer and subscription: {names(unbillable)}. Next: onboard them "
                "(`billing tenant create`), then re-run usage_to_stripe_job for this partition"
                if unbillable
                else None
            ),
            metadata={
                "unbillable": dg.MetadataValue.int(len(unbillable)),
                "tenants": dg.MetadataValue.md(
                    records_table([{"tenant_id": t, **usage} for t, usage in unbillable.items()])
                ),
            },
        ),
    ]


@contextmanager
def _database_outage_fails_the_push(day: date) -> Iterator[None]:
    """A billing database lost mid-push (e.g. restarted) ends the run with a plain failure."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as exc:  # PoolTimeout included
        # The connection holding the day lock died with the server, and the lock with it: the
        # push can no longer claim it ran alone, so it fails. Sent events keep their ledger
        # rows and identifiers: a re-run confirms them (Stripe recognises each identifier).
        raise dg.Failure(
            description=(
                f"the billing database connection was lost during the meter push for {day} "
                f"({describe_connection_error(exc)}); re-run the partition to confirm and finish "
                "it (same identifiers, no double count)"
            )
        ) from exc
