"""Days split at period instants that are not 00:00 UTC: which part a day total carries, and
the value versions that stamp it inside that part. Expected values are worked out by hand from
the instants (seconds after midnight), not by the code under test."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from billing_pipelines.lib.metering.boundaries import (
    SubscriptionTimes,
    day_parts,
    day_segments,
    segment_to_report,
)
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    BillingAccount,
    DayTotal,
    LedgerEntry,
    desired_totals,
    plan_day,
)

# A subscription started on Jan 31 at 09:15:30 UTC renews on the last day of February at the
# same instant (Stripe clamps month-end anchors).
START = datetime(2027, 1, 31, 9, 15, 30, tzinfo=UTC)
RENEWAL = datetime(2027, 2, 28, 9, 15, 30, tzinfo=UTC)
NEXT = datetime(2027, 3, 31, 9, 15, 30, tzinfo=UTC)
TIMES = SubscriptionTimes(START, None, (START, RENEWAL, NEXT))
SECONDS = 9 * 3600 + 15 * 60 + 30  # 09:15:30 is 33,330 seconds after midnight


def test_the_renewal_day_is_split_at_the_period_instant() -> None:
    before, after = day_segments(date(2027, 2, 28), TIMES)
    assert (before.start, before.end) == (datetime(2027, 2, 28, tzinfo=UTC), RENEWAL)
    assert before.billable and before.closes_period
    assert (after.start, after.end) == (RENEWAL, datetime(2027, 3, 1, tzinfo=UTC))
    assert after.billable and not after.closes_period
    assert before.versions(date(2027, 2, 28)) == (1, SECONDS - 1)
    assert after.versions(date(2027, 2, 28)) == (SECONDS, 86_399)


def test_a_day_without_a_boundary_is_one_part_and_the_sign_up_day_starts_at_the_sign_up() -> None:
    assert len(day_segments(date(2027, 2, 10), TIMES)) == 1
    before, after = day_segments(date(2027, 1, 31), TIMES)
    assert not before.billable and after.billable and after.start == START
    part, closed = segment_to_report([before, after], lambda end: False)
    assert part == after and closed == []


def test_the_part_before_the_boundary_is_reported_until_its_invoice_is_final() -> None:
    segments = day_segments(date(2027, 2, 28), TIMES)
    draft, _ = segment_to_report(segments, lambda end: False)
    assert draft == segments[0]
    final, closed = segment_to_report(segments, lambda end: end == RENEWAL)
    assert final == segments[1] and closed == [segments[0]]


def test_a_cancellation_mid_day_leaves_nothing_after_it_to_report() -> None:
    ended = datetime(2027, 2, 10, 18, 0, tzinfo=UTC)
    times = SubscriptionTimes(START, ended, (START, ended))
    before, after = day_segments(date(2027, 2, 10), times)
    assert before.billable and before.closes_period and not after.billable
    assert segment_to_report([before, after], lambda end: False)[0] == before
    assert segment_to_report([before, after], lambda end: True)[0] is None


def test_day_parts_count_the_reported_part_from_raw_event_instants() -> None:
    day = date(2027, 2, 28)
    midnight = datetime(2027, 2, 28, tzinfo=UTC)
    # 5 queries before 09:15:30, 3 after it (one exactly at the instant belongs after).
    instants = [midnight + timedelta(seconds=s) for s in (0, 60, 3600, 33_000, 33_329)]
    instants += [RENEWAL, RENEWAL + timedelta(hours=2), midnight + timedelta(hours=23, minutes=59)]

    def count(tenant: str, start: datetime, end: datetime) -> int:
        return sum(start <= t < end for t in instants)

    plain = SubscriptionTimes(datetime(2026, 12, 1, tzinfo=UTC), None, ())
    times = {"t-split": TIMES, "t-plain": plain}
    draft = day_parts(day, times, count, lambda tenant, end: False)
    assert set(draft) == {"t-split"}  # a day without a boundary keeps its whole total
    assert draft["t-split"].usage == {"billable_queries": 5}
    assert draft["t-split"].versions == (1, SECONDS - 1)
    final = day_parts(day, times, count, lambda tenant, end: True)
    assert final["t-split"].usage == {"billable_queries": 3}
    assert final["t-split"].versions == (SECONDS, 86_399)


def _entry(value: int, version: int) -> LedgerEntry:
    return LedgerEntry(
        1, "t1", "queries", value, version, f"id-v{version}", "cus_1", "q", DELIVERED
    )


def test_the_later_part_gets_a_version_inside_it_even_with_the_same_value() -> None:
    day = date(2027, 2, 28)
    truth = [DayTotal("t1", "queries", 700, "cus_1", "q")]
    latest = {("t1", "queries"): _entry(700, 4)}  # the earlier part: 700, stamped 00:00:04
    plan = plan_day(day, truth, latest, {"t1": (SECONDS, 86_399)})
    (report,) = plan.new
    assert report.value_version == SECONDS and plan.unchanged == 0
    assert report.timestamp == int(RENEWAL.timestamp())  # stamped at 09:15:30 itself
    # Without a split the same ledger row is settled.
    assert plan_day(day, truth, latest).unchanged == 1


def test_a_part_whose_versions_are_used_up_is_flagged_not_sent() -> None:
    day = date(2027, 2, 28)
    truth = [DayTotal("t1", "queries", 800, "cus_1", "q")]
    plan = plan_day(day, truth, {("t1", "queries"): _entry(700, 3)}, {"t1": (1, 3)})
    assert plan.new == [] and plan.no_version_left == [("t1", "queries")]


def test_a_new_stripe_customer_gets_the_day_and_the_old_customer_total_is_withdrawn() -> None:
    day = date(2027, 2, 10)
    old = LedgerEntry(9, "t1", "queries", 500, 2, "id-v2", "cus_old", "q", DELIVERED)
    plan = plan_day(day, [DayTotal("t1", "queries", 520, "cus_new", "q")], {("t1", "queries"): old})
    assert [(r.stripe_customer_id, r.value, r.value_version) for r in plan.new] == [
        ("cus_old", 0, 3),  # the old customer's day window now holds 0
        ("cus_new", 520, 4),
    ]
    assert plan.new[0].timestamp < plan.new[1].timestamp


def test_a_tenant_without_usage_left_on_a_new_customer_only_withdraws_the_old_total() -> None:
    day = date(2027, 2, 10)
    old = LedgerEntry(9, "t1", "queries", 500, 2, "id-v2", "cus_old", "q", DELIVERED)
    desired = desired_totals(
        {},
        {"t1": BillingAccount("cus_new", "sub_1")},
        [("queries", "q", "billable_queries")],
        {("t1", "queries"): old},
    )
    plan = plan_day(day, desired.totals, {("t1", "queries"): old})
    assert [(r.stripe_customer_id, r.value) for r in plan.new] == [("cus_old", 0)]


def test_subscription_times_come_from_the_items_periods_trial_start_and_end() -> None:
    from billing_pipelines.lib.stripe.periods import times_of

    def ts(dt: datetime) -> int:
        return int(dt.timestamp())

    trial_end = datetime(2027, 2, 14, 9, 15, 30, tzinfo=UTC)
    raw = {
        "id": "sub_1",
        "start_date": ts(START),
        "created": ts(START),
        "trial_start": ts(START),
        "trial_end": ts(trial_end),
        "ended_at": None,
        "billing_cycle_anchor": ts(trial_end),
        "items": {
            "data": [
                {"current_period_start": ts(trial_end), "current_period_end": ts(NEXT)},
            ]
        },
    }
    times = times_of(raw)
    assert times.start == START and times.end is None
    assert times.boundaries == (START, trial_end, NEXT)
    before, after = day_segments(date(2027, 2, 14), times)
    assert before.end == trial_end and before.closes_period and after.start == trial_end


def test_a_period_that_began_without_a_start_date_or_before_it_is_not_taken_as_the_first() -> None:
    from billing_pipelines.lib.stripe.periods import in_first_period

    item = {"price": {"recurring": {"usage_type": "metered"}}, "current_period_start": 1_000}
    assert in_first_period({"start_date": 1_000, "items": {"data": [item]}})
    assert not in_first_period({"start_date": 2_000, "items": {"data": [item]}})  # backdated
    assert not in_first_period({"items": {"data": [item]}})
    assert not in_first_period({"start_date": 1_000, "items": {"data": []}})
    # The latest metered item's start decides: a yearly base item's older start does not.
    base = {"price": {"recurring": {"usage_type": "licensed"}}, "current_period_start": 500}
    renewed = {**item, "current_period_start": 3_000}
    assert not in_first_period({"start_date": 1_000, "items": {"data": [base, renewed]}})
