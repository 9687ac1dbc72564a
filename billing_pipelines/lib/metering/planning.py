"""Exactly-once meter reporting, as pure decisions: what to send for one day, given the ledger.

Each (tenant, metric, UTC day) has a value version: version 1 is the first total sent, and every
change of the warehouse truth adds a version. The meter event identifier is derived from
(tenant, metric, day, version), so a re-send of the same version is recognised by Stripe as a
duplicate, and a new version (a later timestamp inside the same day, on a meter with a daily
event window) replaces the previous day total instead of adding to it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from billing_pipelines.lib.usage.warehouse import day_bounds

# Stripe: identifiers are at most 100 characters.
MAX_IDENTIFIER = 100
MAX_VERSION = 86_399  # versions are seconds after midnight: one day holds them all

DELIVERED = "delivered"
PENDING = "pending"
FAILED = "failed"
SUPERSEDED = "superseded"
OUT_OF_WINDOW = "out_of_window"

Key = tuple[str, str]  # (tenant_id, metric)


def identifier_for(tenant_id: str, metric: str, day: date, version: int) -> str:
    """Deterministic meter event identifier for one value version of a tenant's day total."""
    plain = f"bp-{day:%Y%m%d}-{metric}-v{version}-{tenant_id}"
    if len(plain) <= MAX_IDENTIFIER:
        return plain
    digest = hashlib.sha256(tenant_id.encode()).hexdigest()[:32]
    return f"bp-{day:%Y%m%d}-{metric}-v{version}-h{digest}"


def event_timestamp(day: date, version: int) -> int:
    """Unix time of a version's event: inside the day, later for every newer version."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"value version {version} out of range 1..{MAX_VERSION}")
    start, _ = day_bounds(day)
    return int(start.timestamp()) + version


@dataclass(frozen=True)
class DayTotal:
    """The warehouse truth for one billable tenant and metric on one day."""

    tenant_id: str
    metric: str
    value: int
    stripe_customer_id: str
    event_name: str


@dataclass(frozen=True)
class LedgerEntry:
    """The newest ledger row of a (tenant, metric, day)."""

    id: int
    tenant_id: str
    metric: str
    value: int
    value_version: int
    identifier: str
    stripe_customer_id: str
    event_name: str
    status: str


@dataclass(frozen=True)
class MeterReport:
    """One meter event to send (a new version, or a re-send of an unconfirmed one)."""

    tenant_id: str
    metric: str
    usage_date: date
    value: int
    value_version: int
    identifier: str
    stripe_customer_id: str
    event_name: str
    timestamp: int
    ledger_id: int | None = None  # set once the pending ledger row exists

    @property
    def event_time(self) -> datetime:
        """The event timestamp as an aware UTC datetime (for the ledger)."""
        from datetime import UTC

        return datetime.fromtimestamp(self.timestamp, UTC)


@dataclass
class DayPlan:
    """What one day needs: new versions, re-sends of unconfirmed ones, and what is settled."""

    new: list[MeterReport] = field(default_factory=list)
    resend: list[MeterReport] = field(default_factory=list)
    unchanged: int = 0
    stranded: int = 0  # still out of Stripe's window at the same value: flagged, not re-sent
    no_version_left: list[Key] = field(default_factory=list)  # the part's versions are used up

    @property
    def to_send(self) -> list[MeterReport]:
        """Everything that goes to Stripe in this run."""
        return [*self.resend, *self.new]


def plan_day(
    day: date,
    truth: Iterable[DayTotal],
    latest: Mapping[Key, LedgerEntry],
    versions: Mapping[str, tuple[int, int]] | None = None,
) -> DayPlan:
    """Decide the meter events for one day so that Stripe converges to `truth` (see
    `desired_totals`); keys absent from `truth` are left alone.

    `versions` bounds a tenant's value versions (so its event timestamp falls in one part of
    a day split at a period boundary, see boundaries.py); others use the whole day."""
    plan = DayPlan()
    versions = versions or {}
    wanted = {(t.tenant_id, t.metric): t for t in truth}
    for key in sorted(wanted):
        total = wanted[key]
        entry = latest.get(key)
        floor, ceiling = versions.get(total.tenant_id, (1, MAX_VERSION))
        if entry is None and total.value == 0:
            continue  # nothing was ever reported and nothing is owed
        same = (
            entry is not None
            and entry.value == total.value
            and entry.stripe_customer_id == total.stripe_customer_id
            and floor <= entry.value_version <= ceiling  # stamped in the part now reported
        )
        if same and entry is not None and entry.status == DELIVERED:
            plan.unchanged += 1
        elif same and entry is not None and entry.status == OUT_OF_WINDOW:
            plan.stranded += 1
        elif same and entry is not None and entry.status in (PENDING, FAILED):
            plan.resend.append(
                MeterReport(
                    tenant_id=entry.tenant_id,
                    metric=entry.metric,
                    usage_date=day,
                    value=entry.value,
                    value_version=entry.value_version,
                    identifier=entry.identifier,
                    stripe_customer_id=entry.stripe_customer_id,
                    event_name=entry.event_name,
                    timestamp=event_timestamp(day, entry.value_version),
                    ledger_id=entry.id,
                )
            )
        else:
            version = max((entry.value_version if entry is not None else 0) + 1, floor)
            moved = (
                entry is not None
                and entry.stripe_customer_id != total.stripe_customer_id
                and entry.value != 0
            )
            if version + int(moved) > ceiling:
                plan.no_version_left.append(key)
                continue
            if moved and entry is not None:
                # The tenant's Stripe customer changed: the old customer's day total is
                # replaced by 0 (the newest event of its day window), then the new customer
                # gets the total, so the day is billed once, to the customer billed now.
                plan.new.append(
                    MeterReport(
                        tenant_id=total.tenant_id,
                        metric=total.metric,
                        usage_date=day,
                        value=0,
                        value_version=version,
                        identifier=identifier_for(total.tenant_id, total.metric, day, version),
                        stripe_customer_id=entry.stripe_customer_id,
                        event_name=entry.event_name,
                        timestamp=event_timestamp(day, version),
                    )
                )
                version += 1
                if total.value == 0:
                    continue
            plan.new.append(
                MeterReport(
                    tenant_id=total.tenant_id,
                    metric=total.metric,
                    usage_date=day,
                    value=total.value,
                    value_version=version,
                    identifier=identifier_for(total.tenant_id, total.metric, day, version),
                    stripe_customer_id=total.stripe_customer_id,
                    event_name=total.event_name,
                    timestamp=event_timestamp(day, version),
                )
            )
    return plan


@dataclass(frozen=True)
class BillingAccount:
    """Where a tenant is billed; without a customer and a subscription it is unbillable."""

    stripe_customer_id: str | None
    stripe_subscription_id: str | None

    @property
    def billable(self) -> bool:
        """True when usage can be reported for this tenant."""
        return bool(self.stripe_customer_id and self.stripe_subscription_id)


@dataclass(frozen=True)
class RefusedValue:
    """A stored usage value the push will not send: missing, not a whole number, negative or
    above the sanity ceiling."""

    tenant_id: str
    usage_date: date
    column: str
    value: object
    reason: str

    def describe(self) -> str:
        """One line for the operator: tenant, day, column, value and why."""
        return (
            f"tenant {self.tenant_id!r} on {self.usage_date}: "
            f"{self.column} = {self.value!r} ({self.reason})"
        )


def _count(value: object, ceiling: int) -> int | str:
    """The value as a billable whole number, or the reason it cannot be billed."""
    if value is None:
        return "missing"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if isinstance(value, Decimal) and not value.is_finite():
        return "not a finite number"
    if value != int(value):
        return "not a whole number"
    if value < 0:
        return "negative"
    if value > ceiling:
        return f"above the sanity ceiling of {ceiling:,} (METER_DAILY_VALUE_CEILING)"
    return int(value)


def screen_usage(
    day: date,
    usage: Mapping[str, Mapping[str, object]],
    columns: Iterable[str],
    ceiling: int,
) -> tuple[dict[str, dict[str, int]], list[RefusedValue]]:
    """Split a day's stored usage into tenants whose billed columns are sane whole numbers and
    the refused values; a tenant with any refused value is held back entirely (nothing of it is
    sent, and what Stripe already has for it is left as it is)."""
    columns = list(dict.fromkeys(columns))
    clean: dict[str, dict[str, int]] = {}
    refused: list[RefusedValue] = []
    for tenant_id in sorted(usage):
        row = usage[tenant_id]
        counts: dict[str, int] = {}
        for column in columns:
            value = row.get(column, 0)  # a column absent from the row is no usage, as below
            checked = _count(value, ceiling)
            if isinstance(checked, str):
                refused.append(RefusedValue(tenant_id, day, column, value, checked))
            else:
                counts[column] = checked
        if len(counts) == len(columns):
            clean[tenant_id] = counts
    return clean, refused


@dataclass
class DesiredDay:
    """The totals Stripe should hold for a day, and the usage that cannot be billed."""

    totals: list[DayTotal] = field(default_factory=list)
    unbillable: dict[str, dict[str, int]] = field(default_factory=dict)


def desired_totals(
    usage: Mapping[str, Mapping[str, int]],
    accounts: Mapping[str, BillingAccount],
    meters: Iterable[tuple[str, str, str]],
    latest: Mapping[Key, LedgerEntry],
    held: Collection[str] = (),
) -> DesiredDay:
    """Per billable tenant and metric, the day total Stripe must hold.

    `usage` maps tenant -> usage column -> value; `meters` are (metric, event_name, column).
    A (tenant, metric) the ledger reported that no longer has usage (deleted upstream) is
    wanted at 0, so Stripe stops billing it; tenants without customer or subscription are
    returned as unbillable with their usage. `held` tenants (their stored usage was refused)
    get no total at all: absent from `usage` is not the same as "no usage" for them.
    """
    meters = list(meters)
    out = DesiredDay()
    for tenant_id in sorted(usage):
        account = accounts.get(tenant_id)
        row = usage[tenant_id]
        if account is None or not account.billable:
            if any(row.get(column, 0) for _, _, column in meters):
                out.unbillable[tenant_id] = {m: int(row.get(c, 0)) for m, _, c in meters}
            continue
        assert account.stripe_customer_id is not None
        for metric, event_name, column in meters:
            out.totals.append(
                DayTotal(
                    tenant_id,
                    metric,
                    int(row.get(column, 0)),
                    account.stripe_customer_id,
                    event_name,
                )
            )
    wanted = {(t.tenant_id, t.metric) for t in out.totals}
    for key, entry in sorted(latest.items()):
        account = accounts.get(entry.tenant_id)
        if (
            key not in wanted
            and entry.tenant_id not in usage
            and entry.tenant_id not in held
            and entry.value != 0
            and account is not None
            and account.stripe_customer_id is not None
        ):
            # Wanted at 0 for the customer billed now: if that is another customer than the
            # one the ledger reported to, plan_day withdraws the old customer's total.
            out.totals.append(
                DayTotal(
                    entry.tenant_id, entry.metric, 0, account.stripe_customer_id, entry.event_name
                )
            )
    return out
