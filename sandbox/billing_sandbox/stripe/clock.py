"""Time as each object sees it: the frozen time of the customer's test clock, or real time."""

from __future__ import annotations

from typing import Any

from .store import SandboxState

DAY = 86400
HOUR = 3600

CLOCKS = "test_helpers.test_clock"


def clock_of_customer(state: SandboxState, customer_id: str | None) -> dict[str, Any] | None:
    if not customer_id:
        return None
    cus = state.table("customer").get(customer_id)
    if not cus or not cus.get("test_clock"):
        return None
    return state.table(CLOCKS).get(cus["test_clock"])


def customer_now(state: SandboxState, customer_id: str | None) -> int:
    clock = clock_of_customer(state, customer_id)
    if clock is not None:
        return int(clock["_now"] if clock.get("_now") is not None else clock["frozen_time"])
    return state.real_now()


def add_months(ts: int, months: int, anchor_day: int | None = None) -> int:
    """Calendar-month arithmetic in UTC, clamping to the month's last day (like Stripe)."""
    import calendar
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(ts, UTC)
    m = dt.month - 1 + months
    year, month = dt.year + m // 12, m % 12 + 1
    day = min(anchor_day or dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def add_interval(ts: int, interval: str, count: int, anchor_day: int | None = None) -> int:
    if interval == "month":
        return add_months(ts, count, anchor_day)
    if interval == "year":
        return add_months(ts, 12 * count, anchor_day)
    if interval == "week":
        return ts + 7 * DAY * count
    return ts + DAY * count
