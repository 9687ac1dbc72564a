"""Meter planning as properties: whatever the set of tenants, their ledger rows and their
totals, Stripe's day meters converge to the warehouse truth, every key is planned on its own
(its position among the others changes nothing) and nothing settled is sent again.

The oracle is a small model of Stripe's daily meter written from Stripe's documented behaviour,
not from the planner: an event is deduplicated by its identifier, and a day window holds the
value of its newest event (by timestamp) per customer and meter.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    MAX_VERSION,
    OUT_OF_WINDOW,
    PENDING,
    DayPlan,
    DayTotal,
    LedgerEntry,
    MeterReport,
    identifier_for,
    plan_day,
)

METRICS = {"queries": "rag_api_queries", "tokens": "rag_api_tokens"}
STATUSES = (DELIVERED, PENDING, FAILED, OUT_OF_WINDOW)
# Derandomized: the same examples every run, so a mutation-testing verdict is reproducible;
# no example database is written into the working tree.
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@dataclass(frozen=True)
class Case:
    """One key's situation: the ledger's newest row (if any) and the truth (if wanted)."""

    entry: LedgerEntry | None
    total: DayTotal | None
    delivered: bool  # for a pending/failed row: whether Stripe did receive it


@st.composite
def cases(draw: st.DrawFn) -> tuple[date, list[Case], dict[str, tuple[int, int]]]:
    """A day, a few tenants with one or two metrics each, and optional version bounds."""
    day = draw(st.dates(date(2024, 1, 1), date(2030, 12, 31)))
    tenants = draw(
        st.lists(
            st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=6),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    out: list[Case] = []
    versions: dict[str, tuple[int, int]] = {}
    for tenant in tenants:
        if draw(st.booleans()):
            floor = draw(st.integers(1, 40))
            versions[tenant] = (floor, draw(st.sampled_from([floor, floor + 1, floor + 30])))
        for metric in draw(st.sets(st.sampled_from(sorted(METRICS)), min_size=1)):
            event = METRICS[metric]
            entry = None
            if draw(st.booleans()):
                version = draw(st.integers(1, 35))
                customer = f"cus_{tenant}_{draw(st.sampled_from('ab'))}"
                entry = LedgerEntry(
                    id=draw(st.integers(1, 10**6)),
                    tenant_id=tenant,
                    metric=metric,
                    value=draw(st.integers(0, 3)),
                    value_version=version,
                    identifier=identifier_for(tenant, metric, day, version),
                    stripe_customer_id=customer,
                    event_name=event,
                    status=draw(st.sampled_from(STATUSES)),
                )
            total = None
            if draw(st.booleans()) or entry is None:
                total = DayTotal(
                    tenant,
                    metric,
                    draw(st.integers(0, 3)),
                    f"cus_{tenant}_{draw(st.sampled_from('ab'))}",
                    event,
                )
            out.append(Case(entry, total, draw(st.booleans())))
    return day, draw(st.permutations(out)), versions


def stripe_before(cases: list[Case]) -> dict[str, tuple[int, str, str, str, int]]:
    """The events Stripe holds: identifier -> (timestamp, customer, event, tenant, value)."""
    held = {}
    for case in cases:
        e = case.entry
        if e is None or e.status == OUT_OF_WINDOW:  # refused by Stripe: never held
            continue
        if e.status == DELIVERED or case.delivered:
            held[e.identifier] = (
                e.value_version,
                e.stripe_customer_id,
                e.event_name,
                e.tenant_id,
                e.value,
            )
    return held


def send(
    held: dict[str, tuple[int, str, str, str, int]], day: date, reports: list[MeterReport]
) -> None:
    """Stripe receiving meter events: a known identifier is a duplicate and changes nothing."""
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    for r in reports:
        assert midnight < r.timestamp < midnight + 86_400, "an event outside its UTC day"
        held.setdefault(
            r.identifier,
            (r.timestamp - midnight, r.stripe_customer_id, r.event_name, r.tenant_id, r.value),
        )


def day_total(
    held: dict[str, tuple[int, str, str, str, int]], customer: str, event: str, tenant: str
) -> int:
    """Stripe's day total of one customer's meter: the value of its newest event (0: none)."""
    mine = sorted(
        (ts, v) for ts, c, ev, t, v in held.values() if (c, ev, t) == (customer, event, tenant)
    )
    return mine[-1][1] if mine else 0


def run(day: date, cs: list[Case], versions: dict[str, tuple[int, int]]) -> DayPlan:
    truth = [c.total for c in cs if c.total is not None]
    latest = {(c.entry.tenant_id, c.entry.metric): c.entry for c in cs if c.entry is not None}
    return plan_day(day, truth, latest, versions)


@PROPERTY
@given(cases())
def test_stripe_converges_to_the_truth_for_every_key_whatever_its_position(
    drawn: tuple[date, list[Case], dict[str, tuple[int, int]]],
) -> None:
    day, cs, versions = drawn
    plan = run(day, cs, versions)
    held = stripe_before(cs)
    send(held, day, plan.to_send)
    blocked = set(plan.no_version_left)
    for case in cs:
        total, entry = case.total, case.entry
        if total is None:
            continue  # not wanted: left alone (checked below)
        key = (total.tenant_id, total.metric)
        floor, ceiling = versions.get(total.tenant_id, (1, MAX_VERSION))
        if key in blocked:
            assert not [r for r in plan.to_send if (r.tenant_id, r.metric) == key]
            continue
        if entry is not None and entry.status == OUT_OF_WINDOW:
            settled = (
                entry.value == total.value
                and entry.stripe_customer_id == total.stripe_customer_id
                and floor <= entry.value_version <= ceiling
            )
            if settled:
                continue  # Stripe refuses the day: flagged as stranded, not re-sent
        now = day_total(held, total.stripe_customer_id, total.event_name, total.tenant_id)
        assert now == total.value, (key, entry, total)
        if entry is not None and entry.stripe_customer_id != total.stripe_customer_id:
            old = day_total(held, entry.stripe_customer_id, entry.event_name, entry.tenant_id)
            assert old == 0, "the previous customer still holds the day"
        for r in plan.new:
            if (r.tenant_id, r.metric) == key:
                assert floor <= r.value_version <= ceiling
                assert r.identifier == identifier_for(r.tenant_id, r.metric, day, r.value_version)
                assert entry is None or r.value_version > entry.value_version
    wanted = {(c.total.tenant_id, c.total.metric) for c in cs if c.total is not None}
    assert all((r.tenant_id, r.metric) in wanted for r in plan.to_send)


@PROPERTY
@given(cases())
def test_each_key_is_planned_as_if_it_were_alone(
    drawn: tuple[date, list[Case], dict[str, tuple[int, int]]],
) -> None:
    day, cs, versions = drawn
    together = run(day, cs, versions)
    alone = [run(day, [c], versions) for c in cs]
    assert sorted(together.new, key=_order) == sorted((r for p in alone for r in p.new), key=_order)
    assert sorted(together.resend, key=_order) == sorted(
        (r for p in alone for r in p.resend), key=_order
    )
    # Keys are planned in sorted order, each key's events in version order.
    assert together.new == sorted(together.new, key=_order)
    assert together.resend == sorted(together.resend, key=_order)
    assert together.unchanged == sum(p.unchanged for p in alone)
    assert together.stranded == sum(p.stranded for p in alone)
    assert sorted(together.no_version_left) == sorted(k for p in alone for k in p.no_version_left)
    # Exactly one event per changed key (two when the day moves to another customer).
    for c in cs:
        if c.total is None:
            continue
        key = (c.total.tenant_id, c.total.metric)
        mine = [r for r in together.to_send if (r.tenant_id, r.metric) == key]
        moved = (
            c.entry is not None
            and c.entry.stripe_customer_id != c.total.stripe_customer_id
            and c.entry.value != 0
        )
        assert len(mine) <= 1 + int(moved and c.total.value != 0)


def _order(r: MeterReport) -> tuple[str, str, int]:
    return (r.tenant_id, r.metric, r.value_version)


@PROPERTY
@given(cases())
def test_nothing_settled_is_sent_and_every_settled_key_is_counted(
    drawn: tuple[date, list[Case], dict[str, tuple[int, int]]],
) -> None:
    day, cs, versions = drawn
    plan = run(day, cs, versions)
    unchanged = stranded = 0
    for c in cs:
        if c.total is None or c.entry is None:
            continue
        floor, ceiling = versions.get(c.total.tenant_id, (1, MAX_VERSION))
        same = (c.entry.value, c.entry.stripe_customer_id) == (
            c.total.value,
            c.total.stripe_customer_id,
        ) and floor <= c.entry.value_version <= ceiling
        if not same:
            continue
        key = (c.total.tenant_id, c.total.metric)
        mine = [r for r in plan.to_send if (r.tenant_id, r.metric) == key]
        if c.entry.status == DELIVERED:
            unchanged += 1
            assert mine == []
        elif c.entry.status == OUT_OF_WINDOW:
            stranded += 1
            assert mine == []
        else:  # unconfirmed: the same event again, recognised by Stripe if it arrived
            (again,) = mine
            assert again in plan.resend and again.ledger_id == c.entry.id
            assert (again.identifier, again.value_version, again.value) == (
                c.entry.identifier,
                c.entry.value_version,
                c.entry.value,
            )
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
            assert again.event_time == midnight + timedelta(seconds=c.entry.value_version)
    assert (plan.unchanged, plan.stranded) == (unchanged, stranded)
    assert all(r.usage_date == day for r in plan.to_send)
