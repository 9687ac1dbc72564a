"""Usage to Stripe: each day's usage as exactly-once meter events."""

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import dagster as dg
import psycopg

from billing_pipelines.defs.catalog.assets import stripe_catalog
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import STRIPE_POOL, BillingDatabase, StripeResource
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import describe_connection_error
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    OUT_OF_WINDOW,
    MeterReport,
    RefusedValue,
    desired_totals,
    plan_day,
    screen_usage,
)
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe.meters import RetryableStripeError, SendOutcome
from billing_pipelines.settings import load_settings

WINDOW_CHECK = "usage_within_stripe_window"

BILLABLE_CHECK = "usage_tenants_billable"

# Ledger confirmations are flushed every this many outcomes or seconds, whichever comes first.
CONFIRM_BATCH = 25

CONFIRM_EVERY_SECONDS = 0.25


class MeterPushConfig(dg.Config):
    """How fast to push; the defaults are a safe share of Stripe's test or live limits."""

    requests_per_second: float | None = None
    workers: int = 8
    retry_attempts: int = 6
    progress_every_seconds: float = 10.0


@dg.asset(
    partitions_def=daily_partitions,
    deps=[daily_tenant_usage, stripe_catalog],
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
    meters = [(m.metric, m.event_name, m.usage_column) for m in catalog.meters.values()]
    rate = config.requests_per_second or pacing.default_rate(stripe.api_key)
    ceiling = load_settings().meter_daily_value_ceiling

    # One reporter per day at a time, even outside the pool (the lock ends with the transaction).
    with _database_outage_fails_the_push(day), billing_db.transaction() as lock_conn:
        ledger.lock_day(lock_conn, day)
        with billing_db.transaction() as conn:
            latest = ledger.latest_entries(conn, day)
            # Values that cannot be a day's usage (negative, above the ceiling, not a whole
            # number) are never sent; those tenants are held as Stripe has them, the others
            # are pushed (one bad row must not leave every tenant unbilled at period end).
            usage, refused = screen_usage(
                day, ledger.stored_usage(conn, day), [c for _, _, c in meters], ceiling
            )
            held = {r.tenant_id for r in refused}
            desired = desired_totals(
                usage, ledger.billing_accounts(conn), meters, latest, held=held
            )
            plan = plan_day(day, desired.totals, latest)
        for refusal in refused:
            context.log.error("refused, not sent: %s", refusal.describe())
        # The ledger rows exist (committed) before any call to Stripe.
        with billing_db.transaction() as conn:
            fresh = ledger.record_pending(conn, plan.new, context.run.run_id)
        to_send = [*plan.resend, *fresh]
        context.log.info(
            "%s: %d meter events to send (%d new versions, %d unconfirmed re-sends), "
            "%d unchanged, at most %.0f requests/s",
            day,
            len(to_send),
            len(fresh),
            len(plan.resend),
            plan.unchanged,
            rate,
        )
        outcomes: dict[str, int] = {DELIVERED: 0, FAILED: 0, OUT_OF_WINDOW: 0, "duplicate": 0}

        unconfirmed: list[tuple[int, str, str | None]] = []
        last_flush = [time.monotonic()]

        def flush() -> None:
            with billing_db.transaction() as conn:
                ledger.record_outcomes(conn, unconfirmed)
            unconfirmed.clear()
            last_flush[0] = time.monotonic()

        def confirm(report: MeterReport, outcome: SendOutcome) -> None:
            # Confirmations are written in small batches (a crash leaves them pending, and a
            # re-run re-sends them with the same identifier: Stripe answers "already have it").
            assert report.ledger_id is not None
            unconfirmed.append((report.ledger_id, outcome.status, outcome.error))
            outcomes[outcome.status] += 1
            outcomes["duplicate"] += outcome.duplicate
            if outcome.status == FAILED:
                context.log.error("%s: %s", report.identifier, outcome.error)
            due = time.monotonic() - last_flush[0] >= CONFIRM_EVERY_SECONDS
            if len(unconfirmed) >= CONFIRM_BATCH or due:
                flush()

        retried = [0]

        def send(report: MeterReport) -> SendOutcome:
            try:
                return stripe_meters.send_meter_event(client, report)
            except RetryableStripeError:
                retried[0] += 1  # a lost race for a slot is not worth a log line each
                raise

        started = time.monotonic()
        exhausted = pacing.run_paced(
            to_send,
            send,
            confirm,
            limiter=pacing.RateLimiter(rate),
            retryable=RetryableStripeError,
            retry=pacing.RetryPolicy(attempts=config.retry_attempts),
            workers=config.workers,
            on_progress=lambda p: context.log.info(p.line(f"meter events for {day}")),
            progress_every_seconds=config.progress_every_seconds,
        )
        for report, error in exhausted:
            confirm(report, SendOutcome(FAILED, error=f"retries exhausted: {error}"))
        flush()
        push_seconds = time.monotonic() - started
        with billing_db.transaction() as conn:
            stranded = ledger.out_of_window(conn, day)

    problems = [_refused_message(day, refused)] if refused else []
    if outcomes[FAILED]:
        # Failed rows stay in the ledger and are re-sent with the same identifier next run.
        problems.append(
            f"{outcomes[FAILED]} of {len(to_send)} meter events for {day} failed; "
            "re-run the partition to retry them (same identifiers, no double count)"
        )
    if problems:
        raise dg.Failure(
            "\n".join(problems),
            metadata={
                "sent": dg.MetadataValue.int(outcomes[DELIVERED] - outcomes["duplicate"]),
                "failed": dg.MetadataValue.int(outcomes[FAILED]),
                "refused_values": dg.MetadataValue.int(len(refused)),
                "refused": dg.MetadataValue.md(_table([dataclasses.asdict(r) for r in refused])),
            },
        )
    totals = {
        metric: sum(t.value for t in desired.totals if t.metric == metric)
        for metric, _, _ in meters
    }
    return dg.MaterializeResult(
        metadata={
            "sent": dg.MetadataValue.int(outcomes[DELIVERED] - outcomes["duplicate"]),
            "already_delivered": dg.MetadataValue.int(outcomes["duplicate"]),
            "unchanged": dg.MetadataValue.int(plan.unchanged),
            "out_of_window": dg.MetadataValue.int(len(stranded)),
            "billable_tenants": dg.MetadataValue.int(len({t.tenant_id for t in desired.totals})),
            "unbillable_tenants": dg.MetadataValue.int(len(desired.unbillable)),
            **{f"total_{m}": dg.MetadataValue.int(v) for m, v in totals.items()},
            "requests_per_second_limit": dg.MetadataValue.float(float(rate)),
            "push_seconds": dg.MetadataValue.float(round(push_seconds, 2)),
            "retried_requests": dg.MetadataValue.int(retried[0]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=WINDOW_CHECK,
                passed=not stranded,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    "changed totals Stripe refused as older than 35 days: bill or credit "
                    "the difference by hand"
                    if stranded
                    else None
                ),
                metadata={
                    "stranded": dg.MetadataValue.int(len(stranded)),
                    "tenants": dg.MetadataValue.md(_table(stranded)),
                },
            ),
            dg.AssetCheckResult(
                check_name=BILLABLE_CHECK,
                passed=not desired.unbillable,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "unbillable": dg.MetadataValue.int(len(desired.unbillable)),
                    "tenants": dg.MetadataValue.md(
                        _table(
                            [{"tenant_id": t, **usage} for t, usage in desired.unbillable.items()]
                        )
                    ),
                },
            ),
        ],
    )


def _refused_message(day: date, refused: list[RefusedValue], limit: int = 20) -> str:
    tenants = sorted({r.tenant_id for r in refused})
    lines = [r.describe() for r in refused[:limit]]
    if len(refused) > limit:
        lines.append(f"... and {len(refused) - limit} more")
    return (
        f"{len(refused)} stored usage value(s) for {day} refused: nothing was sent for "
        f"{len(tenants)} tenant(s), the others were pushed; fix daily_tenant_usage and "
        "re-run the partition:\n" + "\n".join(lines)
    )


@contextmanager
def _database_outage_fails_the_push(day: date) -> Iterator[None]:
    """A billing database lost mid-push (e.g. restarted) ends the run with a plain failure."""
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


def _table(rows: list[dict[str, object]], limit: int = 50) -> str:
    if not rows:
        return "none"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)
