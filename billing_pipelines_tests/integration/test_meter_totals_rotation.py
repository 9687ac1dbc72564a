"""The meter totals check reads each tenant's Stripe summaries on its slot day (all its days
since in one request) and daily while its period closes: drift planted off the slot day is
caught, correct days pass, and the summaries requests are what the rotation promises. Runs
the loaded `usage_to_stripe_job` against the sandbox, embedded PostgreSQL and chDB."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.definitions import defs
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.integration.reconciliation.test_period_boundary_push import insert
from billing_pipelines_tests.support import API_KEY, advance

TODAY = datetime.now(UTC).date()
CHECK = "meter_totals_match_warehouse"
EVERY = 7  # the check's default rotation


def slot(tenant: str, k: int = EVERY) -> int:
    """The tenant's slot as the README states it: sha256 of its id, first 8 bytes, modulo k."""
    return int(hashlib.sha256(tenant.encode()).hexdigest()[:16], 16) % k


def serves(day: date, k: int = EVERY) -> int:
    # date(1, 1, 1) has ordinal 1, so a day's slot is its day count since then plus one, mod k.
    return ((day - date(1, 1, 1)).days + 1) % k


def tenant_with(prefix: str, wanted: Any) -> str:
    """A fresh tenant id whose slot satisfies `wanted`."""
    while True:
        tenant = f"{prefix}{uuid.uuid4().hex[:8]}"
        if wanted(slot(tenant)):
            return tenant


@pytest.fixture
def env(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    fresh_database_url: str,
    embedded_services: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The loaded definitions' resources from the environment, an empty warehouse, the
    catalog in the sandbox; yields the billing database URL."""
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_sandbox.url)
    monkeypatch.setenv("CLICKHOUSE_URL", embedded_services["CLICKHOUSE_URL"])
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    support.catalog(stripe_client)
    yield fresh_database_url


def plain_tenant(c: stripe.StripeClient, db_url: str, tenant: str) -> str:
    """A billable tenant on the wall clock (subscribed now, so no period boundary in the past
    days the tests push). Returns its customer id."""
    cus = c.v1.customers.create({"metadata": {"tenant_id": tenant}})
    pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    sub = c.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": p} for p in support.prices(c, "pro")]}
    )
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id) VALUES (%s, %s, %s, 'pro', %s, %s)",
            (tenant, tenant, f"{tenant}@example.com", cus.id, sub.id),
        )
    return cus.id


def queries(tenant: str, day: date, count: int, first: int = 0) -> None:
    """`count` distinct queries of the tenant on the day (ids first..first+count-1)."""
    start = wh.day_bounds(day)[0]
    wh.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({tenant:String}, {day:String}, toString(number)),
               {tenant:String}, {start:DateTime64(3, 'UTC')} + toIntervalSecond(number * 7),
               'query', 10, 1, 30
        FROM numbers({first:UInt64}, {count:UInt64})
        """,
        parameters={
            "tenant": tenant,
            "day": day.isoformat(),
            "start": start,
            "first": first,
            "count": count,
        },
    )


def plant(c: stripe.StripeClient, customer: str, day: date, value: int, at: int) -> None:
    """A meter event sent behind the pipeline's back: the newest of its day, so Stripe's day
    total becomes `value` (the meter keeps the newest event of a UTC day)."""
    c.v1.billing.meter_events.create(
        {
            "event_name": "rag_api_queries",
            "identifier": f"planted-{uuid.uuid4().hex}",
            "timestamp": int(wh.day_bounds(day)[0].timestamp()) + at,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }
    )


def summaries(handle: SandboxHandle) -> int:
    """Meter event summaries requests the sandbox has answered so far."""
    paths = handle.app.state.paths
    return sum(n for path, n in paths.items() if path.endswith("/event_summaries"))


def push(day: date, **check: Any) -> dg.ExecuteInProcessResult:
    """The loaded usage_to_stripe_job for a day, as the schedules launch it."""
    return (
        defs()
        .resolve_job_def("usage_to_stripe_job")
        .execute_in_process(
            partition_key=day.isoformat(),
            instance=dg.DagsterInstance.ephemeral(),
            run_config={
                "ops": {
                    # The sandbox's summaries are immediately consistent: settle briefly.
                    f"stripe_meter_reports_{CHECK}": {
                        "config": {"settle_seconds": 0.5, "poll_seconds": 0.25, **check}
                    }
                }
            },
            raise_on_error=False,
        )
    )


def check_of(result: dg.ExecuteInProcessResult) -> Any:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    return evaluation


def test_drift_off_the_slot_day_is_caught_on_the_slot_day_and_daily_as_a_period_closes(
    env: str, stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
) -> None:
    c = stripe_client
    # B's monthly period ends at 15:00 on `close`, two days or more before today (day 28 at
    # most, so no month-end anchor moves it): the last day pushed is the day before.
    target = TODAY - timedelta(days=2)
    signup_day = date(
        target.year - (target.month == 1), (target.month - 2) % 12 + 1, min(target.day, 28)
    )
    signup = datetime(signup_day.year, signup_day.month, signup_day.day, 15, tzinfo=UTC)
    close_at = datetime(
        signup.year + (signup.month == 12), signup.month % 12 + 1, signup.day, 15, tzinfo=UTC
    )
    last = close_at.date() - timedelta(days=1)
    days = [last - timedelta(days=n) for n in range(6, -1, -1)]  # last-6 .. last
    slot_day, a_drift_day, b_drift_day = last - timedelta(days=3), days[1], last - timedelta(2)
    a = tenant_with("rot-a-", lambda s: s == serves(slot_day))
    b = tenant_with(
        "rot-b-", lambda s: s not in {serves(last - timedelta(days=n)) for n in range(3)}
    )
    calm = tenant_with("rot-c-", lambda s: True)
    a_customer = plain_tenant(c, env, a)
    calm_customer = plain_tenant(c, env, calm)
    b_customer, b_sub, b_clock = support.tenant(c, env, b, frozen_time=int(signup.timestamp()))
    item = c.v1.subscriptions.retrieve(b_sub)["items"].data[0]
    assert item.current_period_end == int(close_at.timestamp())
    truth = {a: 40, b: 70, calm: 9}
    for day in days:
        for tenant, count in truth.items():
            queries(tenant, day, count)

    outcomes = {}
    for day in days:
        # As the schedule runs it: just after the day ends on B's clock.
        advance(c, b_clock, int((wh.day_bounds(day)[1] + timedelta(minutes=10)).timestamp()))
        result = push(day)
        assert result.success
        outcomes[day] = check_of(result)
        if day == a_drift_day:
            plant(c, a_customer, day, truth[a] + 5, at=50_000)  # A's slot is days later
        if day == b_drift_day:
            plant(c, b_customer, day, truth[b] - 3, at=50_000)  # B's period closes in 3 days
        if day == slot_day:
            # Caught: repair A's day as a re-push would, so the later days are judged alone.
            plant(c, a_customer, a_drift_day, truth[a], at=60_000)

    failed = {day for day, evaluation in outcomes.items() if not evaluation.passed}
    assert failed == {slot_day, last}
    on_slot, on_close = outcomes[slot_day], outcomes[last]
    assert a in str(on_slot.description) and b not in str(on_slot.description)
    assert f"partition {a_drift_day}" in str(on_slot.description)
    assert "| " + a + " | queries | " + str(a_drift_day) + " | 40 | 45 | +5 |" in str(
        on_slot.metadata["details"].value
    )
    assert on_slot.metadata["over_billed_units"].value == 5
    assert b in str(on_close.description) and a not in str(on_close.description)
    assert f"partition {b_drift_day}" in str(on_close.description)
    assert on_close.metadata["under_billed_units"].value == 3
    assert on_close.metadata["read_for_closing_period"].value == 1
    assert on_close.severity == dg.AssetCheckSeverity.ERROR
    assert calm not in str(on_close.description) and calm not in str(on_slot.description)
    assert calm_customer


def test_correct_days_pass_with_one_summaries_request_per_tenant_read(
    env: str, stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
) -> None:
    c = stripe_client
    tenants = [f"rot-{n}-{uuid.uuid4().hex[:6]}" for n in range(9)]
    for tenant in tenants:
        plain_tenant(c, env, tenant)
    busy = tenants[1:]  # tenants[0] never uses the API: nothing to compare, no request
    days = [TODAY - timedelta(days=n) for n in range(12, 2, -1)]  # 10 days, oldest first
    for i, tenant in enumerate(busy):
        for j, day in enumerate(days):
            queries(tenant, day, 5 + i + j)

    total = 0
    for day in days:
        before = summaries(stripe_sandbox)
        result = push(day)
        assert result.success
        evaluation = check_of(result)
        assert evaluation.passed, evaluation.description
        read = [t for t in busy if slot(t) == serves(day)]
        made = summaries(stripe_sandbox) - before
        # One request per tenant read (one metric), whatever the days it covers.
        assert made == len(read) == evaluation.metadata["summary_requests"].value
        # Each reaches back to the day after its previous slot day, or the first day pushed.
        reach = min(EVERY, (day - days[0]).days + 1)
        assert evaluation.metadata["tenant_days"].value == len(read) * reach
        assert evaluation.metadata["tenants_left_for_later"].value == 9 - len(
            [t for t in tenants if slot(t) == serves(day)]
        )
        total += made
    # Each busy tenant is read once per 7 days instead of once a day.
    assert total == sum(1 for t in busy for d in days if slot(t) == serves(d)) < len(busy) * 10

    # Late events change a past day of a tenant off its slot: the re-push reads it that day.
    late_day = days[-3]
    off = next(t for t in busy if slot(t) != serves(late_day))
    queries(off, late_day, 4, first=1000)
    before = summaries(stripe_sandbox)
    again = check_of(push(late_day))
    assert again.passed and again.metadata["read_for_resent"].value == 1
    slotted = [t for t in busy if slot(t) == serves(late_day)]
    assert summaries(stripe_sandbox) - before == len(slotted) + 1

    # every_days 1 reads every tenant with something to compare, the day alone.
    before = summaries(stripe_sandbox)
    daily = check_of(push(days[-1], every_days=1))
    assert daily.passed
    assert summaries(stripe_sandbox) - before == len(busy)
    assert daily.metadata["tenant_days"].value == len(busy)


def test_a_split_day_is_not_compared_again_on_a_later_slot_day(
    env: str, stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
) -> None:
    # A renewal at 14:30 splits its day. Pushed while the closing invoice is a draft, the day's
    # event carries the part before 14:30; once that invoice is final the part the push would
    # report is the one after it (sent by the next re-push of that day). A later slot day must
    # not judge the split day by the whole day's or the other part's total.
    c = stripe_client
    target = TODAY - timedelta(days=8)
    month_ago = date(
        target.year - (target.month == 1), (target.month - 2) % 12 + 1, min(target.day, 28)
    )
    signup = datetime(month_ago.year, month_ago.month, month_ago.day, 14, 30, tzinfo=UTC)
    renewal = datetime(
        signup.year + (signup.month == 12), signup.month % 12 + 1, signup.day, 14, 30, tzinfo=UTC
    )
    split_day = renewal.date()
    slot_day = split_day + timedelta(days=3)
    tenant = tenant_with("rot-s-", lambda s: s == serves(slot_day))
    customer, sub, clock = support.tenant(c, env, tenant, frozen_time=int(signup.timestamp()))
    assert c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end == int(
        renewal.timestamp()
    )
    days = [split_day + timedelta(days=n) for n in range(-1, 4)]
    for day in days:
        if day != split_day:
            queries(tenant, day, 30)
    midnight = wh.day_bounds(split_day)[0]
    insert(tenant, "before-", 60, midnight, renewal)
    insert(tenant, "after-", 40, renewal, midnight + timedelta(days=1))

    outcomes = {}
    for day in days:
        due = wh.day_bounds(day)[1] + timedelta(minutes=10)
        if day == split_day:
            due = renewal + timedelta(minutes=10)  # the renewal's invoice is still a draft
        advance(c, clock, int(due.timestamp()))
        result = push(day)
        assert result.success
        outcomes[day] = check_of(result)
    assert all(e.passed for e in outcomes.values()), [e.description for e in outcomes.values()]
    # The split day was read on its own day, against the part before 14:30 ...
    assert outcomes[split_day].metadata["read_for_split_day"].value == 1
    meter = next(m for m in c.v1.billing.meters.list().data if m.event_name == "rag_api_queries")
    (summary,) = c.v1.billing.meters.event_summaries.list(
        meter.id,
        {
            "customer": customer,
            "start_time": int(midnight.timestamp()),
            "end_time": int((midnight + timedelta(days=1)).timestamp()),
        },
    ).data
    assert summary.aggregated_value == 60
    # ... and on the slot day, now that the invoice is final, its other days only.
    later = outcomes[slot_day]
    assert later.metadata["read_for_slot"].value == 1
    assert later.metadata["tenant_days"].value == len(days) - 1
