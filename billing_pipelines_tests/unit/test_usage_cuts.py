"""Lifecycle instants as the nightly push sees them, and the part of a day pushed before one."""

from __future__ import annotations

from datetime import UTC, date, datetime

from billing_pipelines.lib.metering.boundaries import SubscriptionTimes, day_parts
from billing_pipelines.lib.metering.cut_push import day_part_before
from billing_pipelines.lib.metering.cuts import CANCEL_NOW, PLAN_CHANGE, UsageCut, with_cuts

DAY = date(2026, 10, 14)
CHANGE = datetime(2026, 10, 14, 17, 31, 7, tzinfo=UTC)
SECONDS_AT_CHANGE = 17 * 3600 + 31 * 60 + 7  # 63,067


def _count(tenant: str, start: datetime, end: datetime) -> int:
    """One query a second (a stand-in warehouse whose count is easy to work out by hand)."""
    return int((end - start).total_seconds())


def test_the_part_before_a_change_ends_one_second_before_it() -> None:
    part = day_part_before(DAY, CHANGE, None)
    assert part == (
        datetime(2026, 10, 14, tzinfo=UTC),
        CHANGE,
        (1, SECONDS_AT_CHANGE - 1),
    )


def test_the_part_starts_at_an_earlier_instant_of_the_same_day() -> None:
    earlier = datetime(2026, 10, 14, 9, 0, 0, tzinfo=UTC)
    assert day_part_before(DAY, CHANGE, earlier) == (
        earlier,
        CHANGE,
        (32_400, SECONDS_AT_CHANGE - 1),
    )
    # A change at 00:00:00 (or in the first second) leaves nothing to push for the day.
    assert day_part_before(DAY, datetime(2026, 10, 14, 0, 0, 1, tzinfo=UTC), None) is None
    # A whole earlier day of the period.
    whole = day_part_before(date(2026, 10, 13), CHANGE, None)
    assert whole is not None and whole[2] == (1, 86_399)


def test_after_a_plan_change_the_night_push_reports_only_the_part_from_it() -> None:
    cut = UsageCut("t1", CHANGE, PLAN_CHANGE, "sub_1")
    times = with_cuts({}, {"t1": [cut]})
    parts = day_parts(DAY, times, _count, lambda tenant, end: end == CHANGE)
    part = parts["t1"]
    assert part.usage == {"billable_queries": 86_400 - SECONDS_AT_CHANGE}
    assert part.versions == (SECONDS_AT_CHANGE, 86_399)


def test_after_cancelling_now_the_night_push_leaves_the_day_as_stripe_has_it() -> None:
    cut = UsageCut("t1", CHANGE, CANCEL_NOW, "sub_1")
    renewal = datetime(2026, 10, 14, 8, 0, tzinfo=UTC)
    times = with_cuts({"t1": SubscriptionTimes(None, None, (renewal,))}, {"t1": [cut]})
    assert times["t1"].end == CHANGE
    assert times["t1"].boundaries == (renewal, CHANGE)
    parts = day_parts(DAY, times, _count, lambda tenant, end: True)
    assert parts["t1"].usage is None


def test_two_changes_in_a_day_report_the_part_after_the_last() -> None:
    first = datetime(2026, 10, 14, 11, 0, tzinfo=UTC)
    cuts = [UsageCut("t1", first, PLAN_CHANGE, "s"), UsageCut("t1", CHANGE, PLAN_CHANGE, "s")]
    parts = day_parts(
        DAY, with_cuts({}, {"t1": cuts}), _count, lambda t, end: end in (first, CHANGE)
    )
    assert parts["t1"].versions == (SECONDS_AT_CHANGE, 86_399)
    # Without the cuts recorded, the day has no boundary: its whole total is reported.
    assert day_parts(DAY, with_cuts({}, {}), _count, lambda t, end: True) == {}
