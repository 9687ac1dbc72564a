"""Which tenants the meter totals check reads from Stripe on a day, and over which days."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest

from billing_pipelines.lib.metering import rotation
from billing_pipelines.lib.metering.boundaries import SubscriptionTimes


def _slot(tenant: str, k: int) -> int:
    # Written out independently: the first 8 bytes of sha256, big-endian, modulo k.
    return int(hashlib.sha256(tenant.encode()).hexdigest()[:16], 16) % k


@pytest.mark.parametrize("k", [2, 3, 7, 10])
def test_every_tenant_is_read_exactly_once_in_any_k_consecutive_days(k: int) -> None:
    tenants = [f"t-{i:04d}" for i in range(300)]
    for first in (date(2026, 1, 1), date(2026, 2, 27), date(2027, 12, 30)):
        reads: Counter[str] = Counter()
        for offset in range(k):
            day = first + timedelta(days=offset)
            plan = rotation.rotation(day, tenants, k)
            assert not set(plan.due) & set(plan.left)
            assert set(plan.due) | set(plan.left) == set(tenants)
            assert all(_slot(t, k) == (first.toordinal() + offset) % k for t in plan.due)
            reads.update(list(plan.due))
        assert reads == Counter({t: 1 for t in tenants})


def test_the_slot_is_a_stable_hash_of_the_tenant_id() -> None:
    for tenant in ("acme", "t-0001", "ü-tenant", "x" * 200):
        for k in (2, 7, 31):
            assert rotation.slot_of(tenant, k) == _slot(tenant, k)
    assert rotation.slot_of("acme", 0) == rotation.slot_of("acme", 1) == 0


def test_a_day_serves_the_slot_of_its_ordinal() -> None:
    # 0001-01-01 (ordinal 1) was a Monday, so with 7 slots a day's slot is its ISO weekday
    # modulo 7: Monday 1 ... Saturday 6, Sunday 0.
    day = date(2026, 11, 30)  # a Monday
    assert rotation.slot_of_day(day, 7) == 1
    assert rotation.slot_of_day(day + timedelta(days=5), 7) == 6  # Saturday
    assert rotation.slot_of_day(day + timedelta(days=6), 7) == 0  # Sunday
    assert rotation.slot_of_day(day + timedelta(days=7), 7) == 1
    assert rotation.slot_of_day(day, 1) == rotation.slot_of_day(day, 0) == 0


def test_slots_spread_tenants_about_evenly() -> None:
    tenants = [f"tenant-{i}" for i in range(7000)]
    sizes = Counter(_slot(t, 7) for t in tenants)
    assert len(sizes) == 7 and all(900 <= n <= 1100 for n in sizes.values())
    day = date(2026, 3, 1)
    plan = rotation.rotation(day, tenants, 7)
    assert len(plan.due) == sizes[day.toordinal() % 7]
    assert len(plan.left) == 7000 - sizes[day.toordinal() % 7]


@pytest.mark.parametrize("k", [0, 1])
def test_every_days_0_or_1_reads_every_tenant_every_day(k: int) -> None:
    plan = rotation.rotation(date(2026, 5, 4), ["b", "a", "c"], k, resent={"a"})
    assert plan.due == {"a": ("slot", "re-sent"), "b": ("slot",), "c": ("slot",)}
    assert plan.left == []
    assert rotation.window(date(2026, 5, 4), k) == [date(2026, 5, 4)]


def test_closing_split_and_resent_tenants_are_read_off_their_slot_day() -> None:
    day = date(2026, 6, 10)
    k = 7
    tenants = [f"t{i}" for i in range(40)]
    off = [t for t in tenants if _slot(t, k) != day.toordinal() % k]
    on = [t for t in tenants if _slot(t, k) == day.toordinal() % k]
    assert len(off) >= 3 and on
    closing, split, resent = off[0], off[1], off[2]
    plan = rotation.rotation(
        day, tenants, k, closing={closing, "not-billable"}, split={split}, resent={resent, split}
    )
    assert plan.due[closing] == ("closing period",)
    assert plan.due[split] == ("split day", "re-sent")
    assert plan.due[resent] == ("re-sent",)
    assert all(plan.due[t] == ("slot",) for t in on)
    assert "not-billable" not in plan.due  # only the billable tenants given are read
    assert sorted(plan.left) == sorted(set(off) - {closing, split, resent})
    assert plan.count("slot") == len(on) and plan.count("re-sent") == 2


def test_the_window_reaches_back_to_the_day_after_the_previous_slot_day() -> None:
    assert rotation.window(date(2026, 3, 2), 7) == [
        date(2026, 2, 24),
        date(2026, 2, 25),
        date(2026, 2, 26),
        date(2026, 2, 27),
        date(2026, 2, 28),
        date(2026, 3, 1),
        date(2026, 3, 2),
    ]
    assert rotation.window(date(2027, 1, 1), 2) == [date(2026, 12, 31), date(2027, 1, 1)]


def test_earlier_days_are_compared_only_when_pushed_for_the_tenant_and_not_split() -> None:
    day = date(2026, 4, 8)
    window = rotation.window(day, 5)  # Apr 4 .. Apr 8
    days = rotation.days_to_compare(
        day,
        window,
        reported={date(2026, 4, 4), date(2026, 4, 5), date(2026, 4, 7)},
        split={date(2026, 4, 5), date(2026, 4, 8)},
    )
    # Apr 6: never pushed for it; Apr 5: split (compared on its own day); Apr 8 is the day
    # itself, compared whatever the ledger says (a split day itself against its part).
    assert days == [date(2026, 4, 4), date(2026, 4, 7), date(2026, 4, 8)]
    assert rotation.days_to_compare(day, [day], reported=(), split=()) == [day]


def test_split_tenants_are_those_with_an_instant_strictly_inside_the_day() -> None:
    day = date(2026, 2, 5)
    at = datetime(2026, 2, 5, 14, 30, tzinfo=UTC)
    midnight = datetime(2026, 2, 5, tzinfo=UTC)
    times = {
        "renews-at-14:30": SubscriptionTimes(None, None, (at,)),
        "renews-at-midnight": SubscriptionTimes(None, None, (midnight,)),
        "started-at-14:30": SubscriptionTimes(at, None, ()),
        "ended-next-day": SubscriptionTimes(None, midnight + timedelta(days=1), ()),
    }
    assert rotation.split_tenants(day, times) == {"renews-at-14:30", "started-at-14:30"}


def test_one_request_range_per_tenant_and_metric() -> None:
    d = date(2026, 7, 1)
    keys = [
        ("a", "queries", d + timedelta(days=3)),
        ("a", "queries", d),
        ("a", "tokens", d + timedelta(days=1)),
        ("b", "queries", d + timedelta(days=6)),
        ("a", "queries", d + timedelta(days=5)),
    ]
    assert rotation.request_ranges(keys) == {
        ("a", "queries"): (d, d + timedelta(days=5)),
        ("a", "tokens"): (d + timedelta(days=1), d + timedelta(days=1)),
        ("b", "queries"): (d + timedelta(days=6), d + timedelta(days=6)),
    }


def test_settling_rereads_only_the_differing_day_totals_until_they_agree() -> None:
    d1, d2 = date(2026, 8, 1), date(2026, 8, 2)
    expected = {("a", "q", d1): 10, ("a", "q", d2): 20, ("b", "q", d2): 5}
    answers = [
        {("a", "q", d1): 10, ("a", "q", d2): 19},  # b missing: 0, and a's d2 lags
        {("a", "q", d2): 20, ("b", "q", d2): 5},
    ]
    asked: list[list[rotation.DayKey]] = []
    now = [0.0]

    def fetch(keys: list[rotation.DayKey]) -> dict[rotation.DayKey, int]:
        asked.append(list(keys))
        return answers[len(asked) - 1]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = rotation.settle_day_totals(
        expected, fetch, timeout_seconds=10, poll_seconds=1, sleep=sleep, clock=lambda: now[0]
    )
    assert result == []
    assert asked == [sorted(expected), [("a", "q", d2), ("b", "q", d2)]]


def test_settling_gives_up_after_the_timeout_with_what_still_differs() -> None:
    d = date(2026, 8, 3)
    expected = {("a", "q", d): 7, ("b", "q", d): 0}
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = rotation.settle_day_totals(
        expected,
        lambda keys: {("a", "q", d): 9, ("b", "q", d): 3},
        timeout_seconds=3,
        poll_seconds=1,
        sleep=sleep,
        clock=lambda: now[0],
    )
    assert result == [
        rotation.DayMismatch("a", "q", d, 7, 9),
        rotation.DayMismatch("b", "q", d, 0, 3),
    ]
    assert [m.difference for m in result] == [2, 3]
    assert now[0] == 3


def test_a_total_missing_from_stripe_counts_as_zero_and_only_expected_days_are_judged() -> None:
    d = date(2026, 8, 4)
    expected = {("a", "q", d): 3, ("b", "q", d): 0, ("c", "q", d): 1}
    # Stripe lacks a (3 -> 0: a mismatch) and b (an expected 0: none); it holds an extra key
    # the check did not ask about, which is not this comparison's to judge.
    stripe = {("c", "q", d): 1, ("z", "q", d): 4}
    assert rotation.compare_day_totals(expected, stripe) == [
        rotation.DayMismatch("a", "q", d, 3, 0)
    ]
    # A 1 on either side is never hidden by a default of 1.
    assert rotation.compare_day_totals({("a", "q", d): 1}, {}) != []
    assert rotation.compare_day_totals({("a", "q", d): 0}, {("a", "q", d): 1}) != []


def test_settling_pauses_two_seconds_by_default_and_reads_last_at_the_deadline() -> None:
    d = date(2026, 8, 5)
    now = [0.0]
    pauses: list[float] = []
    reads: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    def fetch(keys: list[rotation.DayKey]) -> dict[rotation.DayKey, int]:
        reads.append(now[0])
        return {("a", "q", d): 0}

    left = rotation.settle_day_totals(
        {("a", "q", d): 1}, fetch, timeout_seconds=4, sleep=sleep, clock=lambda: now[0]
    )
    # Reads at 0, 2 and 4 s: the read at exactly the deadline is the last one.
    assert pauses == [2.0, 2.0] and reads == [0.0, 2.0, 4.0] and len(left) == 1
