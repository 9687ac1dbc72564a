"""Meter planning at its edges: identifiers at the 100-character limit, exact refusal reasons,
totals missing on one side, the settle loop's clock and pause, and the day totals wanted for
any mix of billable, unbillable, held and deleted tenants (a property: each tenant's totals
are what it alone would get, whatever tenants sort before it)."""

from __future__ import annotations

import hashlib
import string
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    BillingAccount,
    DayTotal,
    LedgerEntry,
    desired_totals,
    event_timestamp,
    identifier_for,
    screen_usage,
)

DAY = date(2026, 7, 9)
METERS = [
    ("queries", "rag_api_queries", "billable_queries"),
    ("tokens", "rag_api_tokens", "tokens"),
]


def test_an_identifier_of_exactly_100_characters_keeps_the_tenant_id() -> None:
    prefix = "bp-20260709-queries-v7-"
    tenant = "t" * (100 - len(prefix))
    assert identifier_for(tenant, "queries", DAY, 7) == prefix + tenant
    longer = tenant + "x"
    digest = hashlib.sha256(longer.encode()).hexdigest()
    hashed = identifier_for(longer, "queries", DAY, 7)
    assert hashed == f"bp-20260709-queries-v7-h{digest[:32]}" and len(hashed) <= 100


def test_a_version_outside_the_day_is_refused_by_number() -> None:
    with pytest.raises(ValueError, match=r"^value version 86400 out of range 1\.\.86399$"):
        event_timestamp(DAY, 86_400)
    midnight = int(datetime(2026, 7, 9, tzinfo=UTC).timestamp())
    assert event_timestamp(DAY, 86_399) == midnight + 86_399


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("7", "not a number"),
        (float("nan"), "not a finite number"),
        (Decimal("Infinity"), "not a finite number"),
        (Decimal("2.5"), "not a whole number"),
        (-3, "negative"),
    ],
)
def test_each_refusal_has_its_exact_reason(value: object, reason: str) -> None:
    clean, refused = screen_usage(
        DAY, {"t1": {"billable_queries": value}}, ["billable_queries"], 10
    )
    assert clean == {} and [r.reason for r in refused] == [reason]


def _entry(tenant: str, metric: str, value: int, customer: str = "cus_old") -> LedgerEntry:
    return LedgerEntry(
        1, tenant, metric, value, 3, f"id-{tenant}", customer, f"ev_{metric}", DELIVERED
    )


def test_a_deleted_total_of_one_is_withdrawn() -> None:
    latest = {("t1", "queries"): _entry("t1", "queries", 1)}
    out = desired_totals({}, {"t1": BillingAccount("cus_new", "sub")}, METERS, latest)
    assert out.totals == [DayTotal("t1", "queries", 0, "cus_new", "ev_queries")]


TENANT = st.text(string.ascii_lowercase + "_-0", min_size=1, max_size=4)


@st.composite
def days(draw: st.DrawFn) -> tuple[dict, dict, dict, set]:
    tenants = draw(st.lists(TENANT, min_size=1, max_size=6, unique=True))
    usage: dict[str, dict[str, int]] = {}
    accounts: dict[str, BillingAccount] = {}
    latest: dict[tuple[str, str], LedgerEntry] = {}
    held: set[str] = set()
    for t in tenants:
        if draw(st.booleans()):
            row = {}
            for column in ("billable_queries", "tokens"):
                if draw(st.booleans()):
                    row[column] = draw(st.integers(0, 2))
            usage[t] = row
        if draw(st.integers(0, 3)):
            accounts[t] = BillingAccount(
                draw(st.sampled_from([None, f"cus_{t}"])), draw(st.sampled_from([None, "sub"]))
            )
        for metric in ("queries", "tokens"):
            if draw(st.booleans()):
                latest[(t, metric)] = _entry(t, metric, draw(st.integers(0, 2)), f"cus_{t}_old")
        if t not in usage and draw(st.booleans()):
            held.add(t)
    return usage, accounts, latest, held


def expected_for(tenant: str, usage: dict, accounts: dict, latest: dict, held: set) -> tuple:
    """The documented rules for one tenant, written out."""
    account = accounts.get(tenant)
    billable = (
        account is not None
        and bool(account.stripe_customer_id)
        and bool(account.stripe_subscription_id)
    )
    totals, unbillable = [], {}
    if tenant in usage:
        row = usage[tenant]
        if account is not None and billable:
            totals = [
                DayTotal(tenant, m, row.get(c, 0), account.stripe_customer_id, e)
                for m, e, c in METERS
            ]
        elif any(row.get(c, 0) for _, _, c in METERS):
            unbillable = {m: row.get(c, 0) for m, _, c in METERS}
    elif tenant not in held and account is not None and account.stripe_customer_id:
        totals = [
            DayTotal(tenant, m, 0, account.stripe_customer_id, e.event_name)
            for (t, m), e in sorted(latest.items())
            if t == tenant and e.value != 0
        ]
    return totals, unbillable


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(days())
def test_every_tenant_gets_its_own_totals_whatever_sorts_before_it(drawn: tuple) -> None:
    usage, accounts, latest, held = drawn
    out = desired_totals(usage, accounts, METERS, latest, held)
    tenants = sorted({*usage, *(t for t, _ in latest)})
    for tenant in tenants:
        totals, unbillable = expected_for(tenant, usage, accounts, latest, held)
        assert [t for t in out.totals if t.tenant_id == tenant] == totals, tenant
        assert out.unbillable.get(tenant, {}) == unbillable, tenant
    assert set(out.unbillable) <= set(usage)
