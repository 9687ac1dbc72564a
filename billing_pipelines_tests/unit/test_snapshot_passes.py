"""When a snapshot may be incremental, and the frontier it starts from (pure decisions)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from billing_pipelines.lib.reconciliation.snapshot_passes import PassRecord, choose_pass
from billing_pipelines.lib.stripe.incremental import (
    CLOCK_MARGIN_SECONDS,
    Frontier,
    subscription_needs_recheck,
)


def _record(day: date, full: date, clocks: dict[str, int] | None = None) -> PassRecord:
    return PassRecord(
        kind="invoices",
        snapshot_date=day,
        mode="incremental",
        reason="",
        taken_at=datetime(day.year, day.month, day.day, 6, tzinfo=UTC),
        frontier=Frontier(1_800_000_000, clocks or {}),
        full_pass_date=full,
        objects_read=0,
        read_by_id=0,
        carried=0,
    )


@pytest.mark.parametrize("start", [date(2026, 1, 1), date(2026, 2, 27), date(2027, 12, 30)])
def test_incremental_until_the_last_full_pass_is_a_week_old(start: date) -> None:
    now = Frontier(1_800_000_100, {})
    for days_after_full in range(0, 10):
        today = start + timedelta(days=days_after_full)
        last = _record(today - timedelta(days=1), start)
        mode, reason = choose_pass(last, {last.snapshot_date}, today, now, every_days=7)
        expected = "full" if days_after_full >= 7 else "incremental"
        assert mode == expected, (days_after_full, reason)
    # Another cadence: every 3 days.
    last = _record(start + timedelta(days=2), start)
    assert choose_pass(last, {last.snapshot_date}, start + timedelta(days=3), now, 3)[0] == "full"


def test_full_when_there_is_nothing_to_start_from() -> None:
    today = date(2026, 3, 10)
    now = Frontier(1_800_000_000, {"clock_a": 5})
    assert choose_pass(None, set(), today, now) == ("full", "no previous pass to start from")
    last = _record(date(2026, 3, 9), date(2026, 3, 8), {"clock_a": 4})
    # The previous pass's rows are gone.
    assert choose_pass(last, set(), today, now)[0] == "full"
    # The business clock moved backwards past the previous pass.
    assert choose_pass(last, {last.snapshot_date}, date(2026, 3, 8), now)[0] == "full"
    # Asked for.
    assert choose_pass(last, {last.snapshot_date}, today, now, force_full=True)[0] == "full"
    # Otherwise incremental, also on a re-run of the previous pass's own day.
    assert choose_pass(last, {last.snapshot_date}, today, now)[0] == "incremental"
    assert choose_pass(last, {last.snapshot_date}, last.snapshot_date, now)[0] == "incremental"


def test_a_test_clock_the_previous_pass_did_not_see_forces_a_full_pass() -> None:
    last = _record(date(2026, 3, 9), date(2026, 3, 9), {"clock_a": 100})
    seen = Frontier(2_000_000_000, {"clock_a": 900})
    new = Frontier(2_000_000_000, {"clock_a": 900, "clock_b": 50})
    assert choose_pass(last, {last.snapshot_date}, date(2026, 3, 10), seen)[0] == "incremental"
    mode, reason = choose_pass(last, {last.snapshot_date}, date(2026, 3, 10), new)
    assert mode == "full" and "clock_b" in reason
    # A clock deleted since leaves nothing without a frontier.
    gone = Frontier(2_000_000_000, {})
    assert choose_pass(last, {last.snapshot_date}, date(2026, 3, 10), gone)[0] == "incremental"


@pytest.mark.parametrize(
    ("wall", "clocks", "expected"),
    [
        (1_800_000_000, {}, 1_800_000_000 - CLOCK_MARGIN_SECONDS),
        (1_800_000_000, {"a": 1_700_000_000, "b": 1_750_000_000}, 1_700_000_000),
        (1_800_000_000, {"a": 1_799_999_900}, 1_800_000_000 - CLOCK_MARGIN_SECONDS),
    ],
)
def test_the_frontier_is_the_earliest_time_anything_new_can_carry(
    wall: int, clocks: dict[str, int], expected: int
) -> None:
    assert Frontier(wall, clocks).since() == expected


@pytest.mark.parametrize(
    ("status", "latest", "recheck"),
    [
        ("active", "paid", True),
        ("past_due", "open", True),
        ("trialing", None, True),
        ("paused", "paid", True),
        ("canceled", "paid", False),
        ("canceled", "void", False),
        ("canceled", "open", True),
        ("canceled", "draft", True),
        ("incomplete_expired", "uncollectible", True),
        ("incomplete_expired", "void", False),
    ],
)
def test_only_ended_subscriptions_with_a_final_last_bill_are_carried(
    status: str, latest: str | None, recheck: bool
) -> None:
    assert subscription_needs_recheck(status, latest) is recheck
