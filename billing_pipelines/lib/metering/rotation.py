"""Which tenants the daily meter totals check reads from Stripe, and over which days.

Reading Stripe's meter event summaries one request per tenant per day spends the summaries
endpoint's whole rate limit (25 requests/s) on large tenant counts. Instead each tenant has a
stable slot among `every_days` days (a hash of its id): on its slot day the check reads all its
days since its previous slot day in one request grouped by day, so every pushed tenant-day is
compared within `every_days` days at one request per tenant per `every_days` days. A tenant is
also read on the day itself, whatever its slot, when a period of its closes around the day (so
the closing period is verified before its invoice finalizes), when a period boundary or a
lifecycle instant splits the day (a split day is compared only on its own day, against the part
the push reports then), or when the day's total was re-sent as a new version (a correction).

Everything here is derived from the day, the tenant ids and what the caller read from Stripe and
the ledger for that day: a backfill or a re-run of any day selects the same tenants.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from billing_pipelines.lib.metering.boundaries import SubscriptionTimes, day_segments

DEFAULT_EVERY_DAYS = 7

SLOT = "slot"
CLOSING = "closing period"
SPLIT = "split day"
RESENT = "re-sent"
REASONS = (SLOT, CLOSING, SPLIT, RESENT)

DayKey = tuple[str, str, date]  # (tenant_id, metric, usage day)


def slot_of(tenant_id: str, every_days: int) -> int:
    """The tenant's stable slot in 0..every_days-1 (the same in every process and release)."""
    if every_days <= 1:
        return 0
    digest = hashlib.sha256(tenant_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % every_days


def slot_of_day(day: date, every_days: int) -> int:
    """Which slot a UTC day serves: consecutive days serve consecutive slots."""
    return 0 if every_days <= 1 else day.toordinal() % every_days


def window(day: date, every_days: int) -> list[date]:
    """The days a tenant read on `day` is compared over: since the day after its previous slot
    day, oldest first (the day alone when every tenant is read every day)."""
    span = max(1, every_days)
    return [day - timedelta(days=back) for back in range(span - 1, -1, -1)]


@dataclass(frozen=True)
class Rotation:
    """The tenants read on one day, each with why, and those left for their slot days."""

    day: date
    every_days: int
    due: dict[str, tuple[str, ...]]  # tenant -> reasons, in REASONS order
    left: list[str] = field(default_factory=list)

    def count(self, reason: str) -> int:
        """How many due tenants have this reason (a tenant may have several)."""
        return sum(1 for reasons in self.due.values() if reason in reasons)


def rotation(
    day: date,
    tenants: Iterable[str],
    every_days: int,
    *,
    closing: Collection[str] = (),
    split: Collection[str] = (),
    resent: Collection[str] = (),
) -> Rotation:
    """Split the billable tenants into those read on `day` (slot, closing period, split day,
    re-sent total) and those left for a later slot day; with every_days <= 1 all are read."""
    today = slot_of_day(day, every_days)
    due: dict[str, tuple[str, ...]] = {}
    left: list[str] = []
    for tenant in sorted(set(tenants)):
        reasons = {
            SLOT: every_days <= 1 or slot_of(tenant, every_days) == today,
            CLOSING: tenant in closing,
            SPLIT: tenant in split,
            RESENT: tenant in resent,
        }
        named = tuple(r for r in REASONS if reasons[r])
        if named:
            due[tenant] = named
        else:
            left.append(tenant)
    return Rotation(day, every_days, due, left)


def days_to_compare(
    day: date,
    days: Iterable[date],
    *,
    reported: Collection[date],
    split: Collection[date],
) -> list[date]:
    """Of a due tenant's window, the days compared now: the day itself always; an earlier day
    only when the ledger shows the tenant was reported for it (that day was pushed for it) and
    no boundary split it (a split day is compared on its own day, against the part the push
    reported then; later it may legitimately carry the part after the boundary)."""
    return sorted(
        d for d in set(days) if d == day or (d < day and d in reported and d not in split)
    )


def split_tenants(day: date, times: Mapping[str, SubscriptionTimes]) -> set[str]:
    """The tenants (keyed as `times`) whose UTC day a boundary or lifecycle instant cuts."""
    return {tenant for tenant, t in times.items() if len(day_segments(day, t)) > 1}


def request_ranges(keys: Iterable[DayKey]) -> dict[tuple[str, str], tuple[date, date]]:
    """One summaries request per (tenant, metric): the first and last day it must cover."""
    out: dict[tuple[str, str], tuple[date, date]] = {}
    for tenant, metric, day in keys:
        first, last = out.get((tenant, metric), (day, day))
        out[(tenant, metric)] = (min(first, day), max(last, day))
    return out


@dataclass(frozen=True)
class DayMismatch:
    """A tenant, metric and day whose Stripe total differs from the warehouse."""

    tenant_id: str
    metric: str
    day: date
    warehouse: int
    stripe: int

    @property
    def difference(self) -> int:
        """Stripe minus warehouse: positive means over-billing."""
        return self.stripe - self.warehouse


def compare_day_totals(
    expected: Mapping[DayKey, int], stripe_totals: Mapping[DayKey, int]
) -> list[DayMismatch]:
    """Every expected (tenant, metric, day) whose Stripe total differs (missing counts as 0)."""
    return [
        DayMismatch(t, m, d, expected[(t, m, d)], stripe_totals.get((t, m, d), 0))
        for t, m, d in sorted(expected)
        if expected[(t, m, d)] != stripe_totals.get((t, m, d), 0)
    ]


def settle_day_totals(
    expected: Mapping[DayKey, int],
    fetch: Callable[[list[DayKey]], Mapping[DayKey, int]],
    *,
    timeout_seconds: float,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[DayMismatch]:
    """Compare eventually consistent day totals: re-read only the differing keys until they
    agree or `timeout_seconds` pass; returns what still differs."""
    deadline = clock() + timeout_seconds
    keys = sorted(expected)
    seen: dict[DayKey, int] = {}
    while True:
        fetched = fetch(keys)
        seen.update({k: fetched.get(k, 0) for k in keys})
        mismatches = compare_day_totals(expected, seen)
        if not mismatches or clock() >= deadline:
            return mismatches
        keys = [(m.tenant_id, m.metric, m.day) for m in mismatches]
        sleep(poll_seconds)
