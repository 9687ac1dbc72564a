"""`make demo`: the local pipeline end to end on the embedded services, with a readable summary."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.settings import billing_home, load_settings
from billing_sandbox import guard, services, usage_generator

Echo = Callable[[str], object]

# Share of demo tenants on each plan, and how much of its included quantity a tenant uses in a
# month (below 1.0 pays the base fee only, above pays overage).
PLAN_MIX = (("starter", 0.56), ("pro", 0.34), ("enterprise", 0.10))
USAGE_FACTOR = {"starter": (0.5, 1.8), "pro": (0.5, 1.5), "enterprise": (0.1, 0.4)}


@dataclass(frozen=True)
class DemoTenant:
    """A simulated customer of the RAG API."""

    tenant_id: str
    plan: str
    monthly_queries: int


def demo_tenants(count: int, seed: int) -> list[DemoTenant]:
    """Deterministic tenants across plans, some under and some over their included queries."""
    rng = random.Random(seed)
    catalog = load_catalog()
    tenants = []
    for index in range(count):
        roll, cumulative, plan = rng.random(), 0.0, PLAN_MIX[-1][0]
        for key, share in PLAN_MIX:
            cumulative += share
            if roll < cumulative:
                plan = key
                break
        low, high = USAGE_FACTOR[plan]
        included = catalog.plan(plan).included_queries
        tenants.append(
            DemoTenant(f"t{index + 1:03d}", plan, int(included * rng.uniform(low, high)))
        )
    return tenants


def _store_tenants(database_url: str, tenants: list[DemoTenant]) -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO tenants (tenant_id, name, email, plan, billing_status)
            VALUES (%s, %s, %s, %s, 'active')
            ON CONFLICT (tenant_id) DO UPDATE SET plan = EXCLUDED.plan, updated_at = now()
            """,
            [
                (t.tenant_id, f"Tenant {t.tenant_id}", f"billing+{t.tenant_id}@example.com", t.plan)
                for t in tenants
            ],
        )


def generate(
    tenant_count: int, start: date, days: int, seed: int, scale: float = 1.0
) -> usage_generator.GenerationSummary:
    """Create the demo tenants and insert their synthetic usage into the warehouse."""
    guard.require_embedded("billing usage generate", billing_home())
    settings = load_settings()
    tenants = demo_tenants(tenant_count, seed)
    _store_tenants(settings.require_database_url(), tenants)
    client = warehouse.connect(settings.require_clickhouse_url())
    warehouse.ensure_usage_schema(client)
    return usage_generator.generate_usage(
        client,
        [t.tenant_id for t in tenants],
        start=start,
        days=days,
        seed=seed,
        monthly_queries={t.tenant_id: max(1, int(t.monthly_queries * scale)) for t in tenants},
    )


def run(
    tenant_count: int,
    seed: int,
    echo: Echo = print,
    start: datetime | None = None,
    stripe_limits: str = "test",
) -> None:
    """Start services, simulate a billing month on a test clock (from `start`, any instant;
    default the first of the month that began at least 45 days ago), and print the report.
    `stripe_limits`: "test" (Stripe's test-mode rate limits) or "live" (live mode's)."""
    import dagster as dg

    from billing_sandbox import instigators, month

    started = time.monotonic()
    # The demo wipes the warehouse's usage and sends emails: never near anything real.
    sandbox_mode.refuse_live_key()
    guard.require_embedded("billing demo", billing_home())
    sandbox_mode.enable()
    echo("1/3 starting embedded PostgreSQL and the chDB warehouse bridge ...")
    home = billing_home()
    env = services.up(home, with_stripe=False)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # The month's days are the partitions: they start on its first usage day (set before the
    # definitions load), not on a fixed date with months of empty partitions before it.
    first = start.date() if start is not None else month.month_start(datetime.now(UTC).date())
    os.environ["USAGE_START_DATE"] = first.isoformat()
    settings = load_settings()
    database_url = settings.require_database_url()
    clickhouse_url = settings.require_clickhouse_url()
    echo(
        "2/3 simulating a billing month day by day on a Stripe test clock "
        f"(Stripe's {stripe_limits}-mode rate limits) ..."
    )

    def final_report(result: month.MonthResult) -> None:
        echo("3/3 report")
        month.report(result, echo)
        last = result.start + timedelta(days=result.days - 1)
        client = warehouse.connect(clickhouse_url)
        _print_summary(database_url, client, result.start, last, echo)

    result = month.simulate(
        database_url=database_url,
        clickhouse_url=clickhouse_url,
        tenant_count=tenant_count,
        seed=seed,
        start=start if start is not None else first,
        echo=echo,
        on_done=final_report,
        stripe_limits=stripe_limits,
    )
    # `make ui` on this instance: judged on the month's clock, its partitions, and no
    # schedule or Stripe sensor ticking against the Stripe sandbox that just stopped.
    remembered = {"USAGE_START_DATE": first.isoformat()}
    if result.business_clock:
        remembered["BUSINESS_CLOCK"] = result.business_clock
    services.remember(home, remembered)
    stopped = instigators.stop_stripe_dependent(dg.DagsterInstance.get())
    echo(
        f"    business clock {result.business_clock} and partitions from {first} written to "
        f"sandbox.env; stopped on this instance (start them in the UI with Stripe served): "
        f"{', '.join(stopped)}"
    )
    if result.failed_runs:
        raise RuntimeError(f"{len(result.failed_runs)} run(s) failed: {result.failed_runs[:5]}")
    phases = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result.timings.items())
    echo(f"    time by phase: {phases}")
    requests = ", ".join(f"{name} {count:,}" for name, count in result.stripe_requests.items())
    echo(
        f"    Stripe requests by phase: {requests}; answered 429 (then retried): "
        f"{result.stripe_throttled:,}"
    )
    echo(
        f"done in {time.monotonic() - started:.0f}s. Browse the runs, lineage, checks and "
        "billing_health: make ui (the same Dagster instance)"
    )


# The ids one slice of the month's distinct count may hold in the warehouse at once.
DISTINCT_IDS_PER_SLICE = 4_000_000
_MONTH_QUERIES = (
    "FROM usage_events WHERE event_type = 'query' AND timestamp >= {start:DateTime64(3, 'UTC')} "
    "AND timestamp < {end:DateTime64(3, 'UTC')}"
)
_MONTH_EVENTS_BY_TENANT_SQL = (
    "SELECT tenant_id, count() " + _MONTH_QUERIES + " GROUP BY tenant_id ORDER BY tenant_id"
)
_MONTH_DISTINCT_SLICE_SQL = (
    "SELECT uniqExact(tenant_id, query_id) "
    + _MONTH_QUERIES
    + " AND tenant_id >= {low:String} AND tenant_id <= {high:String}"
    + " AND cityHash64(query_id) % {parts:UInt64} = {part:UInt64}"
)


def tenant_slices(
    events_by_tenant: Sequence[tuple[str, int]], per_slice: int
) -> list[tuple[str, str, int]]:
    """Consecutive tenants (in id order) grouped into ranges of at most per_slice events each,
    as (first tenant, last tenant, hash parts); a tenant with more events than that is a range
    of its own, split into parts by its query ids' hash."""
    slices: list[tuple[str, str, int]] = []
    low = high = ""
    held = 0
    for tenant, events in events_by_tenant:
        if held and held + events > per_slice:
            slices.append((low, high, max(1, -(-held // per_slice))))
            held = 0
        if not held:
            low = tenant
        high = tenant
        held += events
    if held:
        slices.append((low, high, max(1, -(-held // per_slice))))
    return slices


def distinct_queries(
    client: Any, start: datetime, end: datetime, per_slice: int = DISTINCT_IDS_PER_SLICE
) -> int:
    """Distinct queries with timestamps in [start, end): (tenant, query id) pairs, since a query
    is billed to the tenant that made it, counted a range of tenants at a time.

    One `uniqExact` over the whole month holds every id of the month in the warehouse at once
    (the month's memory peak, growing with its events). Ranges of tenants are disjoint and
    each reads only its own granules (the table is ordered by tenant first), so their counts
    add up to the same number while only one range's ids are held and the month is read once.
    """
    bounds = {"start": start, "end": end}
    by_tenant = [
        (str(tenant), int(events))
        for tenant, events in client.query(
            _MONTH_EVENTS_BY_TENANT_SQL, parameters=bounds
        ).result_rows
    ]
    return sum(
        int(
            client.query(
                _MONTH_DISTINCT_SLICE_SQL,
                parameters={**bounds, "low": low, "high": high, "parts": parts, "part": part},
            ).result_rows[0][0]
        )
        for low, high, parts in tenant_slices(by_tenant, per_slice)
        for part in range(parts)
    )


def _print_summary(database_url: str, client: object, first: date, last: date, echo: Echo) -> None:
    catalog = load_catalog()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT t.tenant_id, t.plan, coalesce(sum(u.billable_queries), 0)::bigint AS queries,
                   coalesce(sum(u.duplicate_events), 0)::bigint AS duplicates
            FROM tenants t
            LEFT JOIN daily_tenant_usage u
              ON u.tenant_id = t.tenant_id AND u.usage_date BETWEEN %s AND %s
            GROUP BY t.tenant_id, t.plan ORDER BY t.tenant_id
            """,
            (first, last),
        ).fetchall()
    start, _ = warehouse.day_bounds(first)
    _, end = warehouse.day_bounds(last)
    truth = distinct_queries(client, start, end)
    stored = sum(r[2] for r in rows)
    verdict = "match" if stored == truth else f"MISMATCH by {stored - truth:+,}"
    echo(f"    warehouse distinct queries {truth:,} vs daily_tenant_usage {stored:,}: {verdict}")
    echo(f"    duplicate events removed before billing: {sum(r[3] for r in rows):,}")
    echo("")
    echo(f"    {'plan':<11}{'tenants':>8}{'queries':>14}{'over included':>15}{'bill (USD)':>14}")
    total_cents = 0
    for key, plan in catalog.plans.items():
        mine = [r for r in rows if r[1] == key]
        queries = sum(r[2] for r in mine)
        over = sum(1 for r in mine if r[2] > plan.included_queries)
        cents = sum(plan.period_total_cents(r[2]) for r in mine)
        total_cents += cents
        echo(f"    {key:<11}{len(mine):>8}{queries:>14,}{over:>15}{cents / 100:>14,.2f}")
    echo(f"    {'total':<11}{len(rows):>8}{stored:>14,}{'':>15}{total_cents / 100:>14,.2f}")
    echo(
        "    (bill = monthly base fee + overage above the included queries, for the days shown;"
        " annual tenants pay their yearly base fee instead, once a year)"
    )
    if stored != truth:
        raise RuntimeError("daily_tenant_usage does not match the warehouse truth")
