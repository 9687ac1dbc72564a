"""`billing explain`: one invoice line traced down to the raw events, in plain words.

For a metered invoice line (from the newest invoice snapshot) it lines up the days the line
bills, what each source holds for each day (warehouse, daily usage, the report ledger, Stripe's
meter summary), every ledger version with its meter event identifier, and the warehouse query
that reproduces the count. Gathering reads Postgres, the warehouse and Stripe; `render` is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.metering.planning import event_timestamp
from billing_pipelines.lib.notifications.emails import format_money, usage_explanation
from billing_pipelines.lib.reconciliation.usage_audit import (
    QUERIES,
    line_cents,
    period_days,
    warehouse_queries,
)
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe.client import StripeError, describe_error
from billing_pipelines.lib.usage.warehouse import day_bounds

Conn = psycopg.Connection[Any]

# The warehouse truth of a line: per UTC day, the query ids the tenant queried that day and
# logged as no event of any kind the day before (a copy across midnight counts on its first day,
# as daily_tenant_usage counts them), summed over the billed days. The scan starts a day early
# for that look-back. Run with bound parameters; shown with literals.
REPRODUCE_SQL = """SELECT sum(queries) AS billable_queries
FROM (
    SELECT day, count() AS queries
    FROM (
        SELECT query_id,
               groupUniqArray(toDate(timestamp, 'UTC')) AS logged_days,
               groupUniqArrayIf(toDate(timestamp, 'UTC'), event_type = 'query') AS queried_days
        FROM usage_events
        WHERE tenant_id = {tenant:String}
          AND timestamp >= {start:DateTime64(3, 'UTC')} - INTERVAL 1 DAY
          AND timestamp < {end:DateTime64(3, 'UTC')}
        GROUP BY query_id
    )
    ARRAY JOIN queried_days AS day
    WHERE day >= toDate({start:DateTime64(3, 'UTC')}, 'UTC') AND NOT has(logged_days, day - 1)
    GROUP BY day
)"""


@dataclass(frozen=True)
class Line:
    """One metered invoice line with its invoice, as the snapshot holds it."""

    snapshot_date: date
    invoice_id: str
    invoice_number: str | None
    invoice_status: str
    invoice_total: int
    currency: str
    line_id: str
    customer_id: str
    tenant_id: str | None
    plan: Plan | None
    period_start: datetime
    period_end: datetime
    quantity: int
    amount: int
    meter_id: str | None


@dataclass(frozen=True)
class Day:
    """One billed UTC day as each source holds it."""

    day: date
    warehouse: int
    daily_usage: int | None  # None: the partition was never stored
    ledger: int | None  # None: nothing delivered
    stripe: int | None  # None: Stripe was not asked (no meter on the line)


@dataclass(frozen=True)
class LedgerVersion:
    """One value version of a day total in the report ledger: one meter event."""

    day: date
    version: int
    value: int
    identifier: str
    status: str
    event_name: str
    delivered_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class Explanation:
    """Everything `render` puts in words for one line."""

    line: Line
    days: list[Day]
    ledger: list[LedgerVersion]
    sql_start: datetime
    sql_end: datetime
    sql_count: int
    causes: list[str] = field(default_factory=list)
    stripe_problem: str | None = None  # why Stripe's summary could not be read


# ---- words -------------------------------------------------------------------------------------


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def sql_literal(tenant_id: str, start: datetime, end: datetime) -> str:
    """REPRODUCE_SQL with its values written in, ready to paste into a ClickHouse client."""
    quoted = "'" + tenant_id.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def moment(value: datetime) -> str:
        return f"toDateTime64('{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}', 3, 'UTC')"

    values = {
        "{tenant:String}": quoted,
        "{start:DateTime64(3, 'UTC')}": moment(start),
        "{end:DateTime64(3, 'UTC')}": moment(end),
    }
    return re.sub(
        "|".join(re.escape(k) for k in values), lambda m: values[m.group(0)], REPRODUCE_SQL
    )


def _verdict(e: Explanation) -> list[str]:
    line = e.line
    if line.plan is None:
        return ["The plan is unknown, so the amount cannot be recomputed from the catalog."]
    warehouse = sum(d.warehouse for d in e.days)
    right = line_cents(line.plan, warehouse)
    diff = line.amount - right
    if diff == 0 and warehouse == line.quantity:
        return [
            f"Verdict: correct. The warehouse holds {warehouse:,} billable queries, the invoice "
            f"bills {line.quantity:,}, and {format_money(line.amount, line.currency)} is what "
            "the catalog's tiers charge for them."
        ]
    word = "over-charged" if diff > 0 else "under-charged" if diff < 0 else "off in quantity"
    out = [
        f"Verdict: {word}. The invoice bills {line.quantity:,} queries for "
        f"{format_money(line.amount, line.currency)}; the warehouse truth of {warehouse:,} "
        f"queries costs {format_money(right, line.currency)} (difference "
        f"{format_money(diff, line.currency)})."
    ]
    out += [f"  - {cause}" for cause in e.causes]
    return out


def render(e: Explanation) -> str:
    """The explanation as plain text for a terminal or a support ticket."""
    line = e.line
    money = line.currency
    plan = line.plan.name if line.plan else "an unknown plan"
    number = line.invoice_number or "(no number yet)"
    out = [
        f"Invoice {number} ({line.invoice_id}): {line.invoice_status}, total "
        f"{format_money(line.invoice_total, money)}, as of the invoice snapshot of "
        f"{line.snapshot_date}.",
        f"Tenant {line.tenant_id or '(none: no tenant has this customer)'} "
        f"(Stripe customer {line.customer_id}) on {plan}.",
        "",
        f"The usage line {line.line_id} bills {line.quantity:,} queries for the period "
        f"{_when(line.period_start)} to {_when(line.period_end)}: "
        f"{format_money(line.amount, money)}.",
    ]
    if line.plan is not None:
        out.append("  " + usage_explanation(line.plan, line.quantity, money).rstrip(".") + ".")
    out += [
        "",
        "The days: usage goes to Stripe as one total per UTC day, timestamped just after that "
        "day's midnight, so the line bills every day whose midnight falls in its period"
        + (f": {e.days[0].day} to {e.days[-1].day} ({len(e.days)} days)." if e.days else ": none."),
        f"  {'day':<12}{'warehouse':>12}{'daily usage':>13}{'ledger':>12}{'Stripe':>12}",
    ]
    for d in e.days:
        # A day without usage has no stored row and no report: None reads as zero here.
        ours = d.warehouse == (d.daily_usage or 0) == (d.ledger or 0)
        same = ours and (d.stripe is None or d.stripe == (d.ledger or 0))
        flag = "" if same else "  <- differs"
        out.append(
            f"  {d.day!s:<12}{_n(d.warehouse):>12}{_n(d.daily_usage):>13}{_n(d.ledger):>12}"
            f"{_n(d.stripe):>12}{flag}"
        )
    asked = all(d.stripe is not None for d in e.days)
    totals: list[int | None] = [
        sum(d.warehouse for d in e.days),
        sum(d.daily_usage or 0 for d in e.days),
        sum(d.ledger or 0 for d in e.days),
        sum(d.stripe or 0 for d in e.days) if asked else None,
    ]
    out.append(
        f"  {'total':<12}"
        + "".join(f"{_n(t):>{w}}" for t, w in zip(totals, [12, 13, 12, 12], strict=True))
    )
    out += ["", "The ledger: every version of a day total we sent, each one meter event."]
    if not e.ledger:
        out.append("  nothing was reported for these days.")
    for v in e.ledger:
        when = f" at {_when(v.delivered_at)}" if v.delivered_at else ""
        error = f" ({v.last_error})" if v.last_error else ""
        stamp = datetime.fromtimestamp(event_timestamp(v.day, v.version), UTC)
        out.append(
            f"  {v.day} version {v.version}: {v.value:,} queries, meter event {v.identifier} "
            f"to {v.event_name} timestamped {stamp:%Y-%m-%d %H:%M:%S} UTC, {v.status}{when}{error}"
        )
    out += ["", "Stripe's meter summary (what Stripe aggregated per day for this customer):"]
    if line.meter_id is None:
        out.append("  the line has no meter: Stripe was not asked.")
    elif e.stripe_problem is not None:
        out.append(f"  not read ({e.stripe_problem}); every other source is shown above.")
    else:
        out.append(
            f"  meter {line.meter_id}: {_n(totals[3])} queries over the period; the invoice "
            f"line bills {line.quantity:,}."
        )
    out += [
        "",
        f"The warehouse query that reproduces the count ({e.sql_count:,} billable queries: "
        "distinct query ids per UTC day, not logged the day before, summed over the billed "
        "days):",
        "",
        sql_literal(line.tenant_id or "", e.sql_start, e.sql_end),
        "",
        *_verdict(e),
    ]
    return "\n".join(out)


def parse_period(value: str) -> date:
    """YYYY-MM as the first day of that month, or one clear error line."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise BillingConfigError(f"--period must be a month as YYYY-MM, got {value!r}")
    return date(int(match.group(1)), int(match.group(2)), 1)


# ---- gathering ---------------------------------------------------------------------------------

_LINES_SQL = """
SELECT l.snapshot_date, l.invoice_id, i.number, i.status, i.currency, l.line_id, i.customer_id,
       t.tenant_id, coalesce(s.plan, t.plan) AS plan, l.period_start, l.period_end,
       coalesce(l.quantity, 0) AS quantity, l.amount, l.meter_id,
       (SELECT coalesce(sum(a.amount), 0) FROM stripe_invoice_line_snapshots a
        WHERE a.snapshot_date = l.snapshot_date AND a.invoice_id = l.invoice_id) AS total
FROM stripe_invoice_line_snapshots l
JOIN stripe_invoice_snapshots i
  ON i.snapshot_date = l.snapshot_date AND i.invoice_id = l.invoice_id
LEFT JOIN stripe_subscription_snapshots s
  ON s.snapshot_date = i.snapshot_date AND s.subscription_id = i.subscription_id
LEFT JOIN tenants t ON t.stripe_customer_id = i.customer_id
WHERE l.snapshot_date = (SELECT max(snapshot_date) FROM stripe_invoice_snapshots)
  AND l.metered AND l.period_start IS NOT NULL
"""


def find_lines(
    conn: Conn,
    plans: Mapping[str, Plan],
    *,
    invoice_id: str | None = None,
    tenant_id: str | None = None,
    month: date | None = None,
) -> list[Line]:
    """The metered lines of one invoice, or of one tenant whose period starts in `month`."""
    params: list[object]
    if invoice_id is not None:
        where, params = " AND l.invoice_id = %s", [invoice_id]
    elif tenant_id is not None and month is not None:
        following = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
        where = " AND t.tenant_id = %s AND l.period_start >= %s AND l.period_start < %s"
        params = [tenant_id, day_bounds(month)[0], day_bounds(following)[0]]
    else:
        raise BillingConfigError("give --invoice, or --tenant with --period")
    rows = conn.execute(
        _LINES_SQL + where + " ORDER BY l.period_start, l.invoice_id, l.line_id",
        params,
    ).fetchall()
    return [
        Line(
            snapshot_date=r["snapshot_date"],
            invoice_id=r["invoice_id"],
            invoice_number=r["number"],
            invoice_status=r["status"],
            invoice_total=int(r["total"]),
            currency=r["currency"],
            line_id=r["line_id"],
            customer_id=r["customer_id"],
            tenant_id=r["tenant_id"],
            plan=plans.get(r["plan"]) if r["plan"] else None,
            period_start=r["period_start"],
            period_end=r["period_end"],
            quantity=int(r["quantity"]),
            amount=int(r["amount"]),
            meter_id=r["meter_id"],
        )
        for r in rows
    ]


def ledger_versions(conn: Conn, tenant_id: str, first: date, last: date) -> list[LedgerVersion]:
    """Every queries version the ledger holds for the tenant's days, oldest first."""
    rows = conn.execute(
        """
        SELECT usage_date, value_version, value, identifier, status, meter_event_name,
               delivered_at, last_error
        FROM usage_report_ledger
        WHERE tenant_id = %s AND metric = %s AND usage_date BETWEEN %s AND %s
        ORDER BY usage_date, value_version
        """,
        (tenant_id, QUERIES, first, last),
    ).fetchall()
    return [
        LedgerVersion(
            day=r["usage_date"],
            version=int(r["value_version"]),
            value=int(r["value"]),
            identifier=r["identifier"],
            status=r["status"],
            event_name=r["meter_event_name"],
            delivered_at=r["delivered_at"],
            last_error=r["last_error"],
        )
        for r in rows
    ]


def daily_usage(conn: Conn, tenant_id: str, first: date, last: date) -> dict[date, int]:
    """daily_tenant_usage's billable queries per day of the tenant."""
    rows = conn.execute(
        "SELECT usage_date, billable_queries FROM daily_tenant_usage "
        "WHERE tenant_id = %s AND usage_date BETWEEN %s AND %s",
        (tenant_id, first, last),
    ).fetchall()
    return {r["usage_date"]: int(r["billable_queries"]) for r in rows}


def warehouse_count(client: Client, tenant_id: str, start: datetime, end: datetime) -> int:
    """REPRODUCE_SQL run with bound parameters."""
    result = client.query(
        REPRODUCE_SQL, parameters={"tenant": tenant_id, "start": start, "end": end}
    )
    value = result.result_rows[0][0] if result.result_rows else 0
    return int(value or 0)


def audit_causes(conn: Conn, line: Line) -> list[str]:
    """The newest usage audit's causes for this line, if it was audited."""
    row = conn.execute(
        "SELECT causes FROM usage_invoice_audit WHERE invoice_id = %s AND line_id = %s "
        "ORDER BY audit_date DESC LIMIT 1",
        (line.invoice_id, line.line_id),
    ).fetchone()
    return [str(c) for c in row["causes"]] if row else []


def billed_days(line: Line) -> tuple[list[date], datetime, datetime]:
    """The UTC days the line bills and the warehouse window that covers them."""
    days = period_days(line.period_start, line.period_end)
    if not days:
        return [], line.period_start, line.period_start
    return days, day_bounds(days[0])[0], day_bounds(days[-1])[1]


def gather(
    conn: Conn,
    warehouse: Client,
    stripe_client: Any,
    line: Line,
    *,
    stripe_problem: str | None = None,
) -> Explanation:
    """Every source for one line: Postgres (daily usage, ledger, audit), warehouse, Stripe.

    Without a Stripe client (`stripe_problem` says why) or when Stripe refuses, the rest is
    still explained: the ledger and the warehouse are enough to find most differences."""
    days, start, end = billed_days(line)
    tenant = line.tenant_id or ""
    stored: dict[date, int] = {}
    versions: list[LedgerVersion] = []
    truth: dict[tuple[str, date], int] = {}
    stripe_totals: dict[date, Decimal] = {}
    if days:
        stored = daily_usage(conn, tenant, days[0], days[-1])
        versions = ledger_versions(conn, tenant, days[0], days[-1])
        truth = warehouse_queries(warehouse, [tenant], days[0], days[-1])
        if line.meter_id is not None and stripe_client is not None:
            try:
                stripe_totals = stripe_meters.daily_totals(
                    stripe_client, line.meter_id, line.customer_id, days[0], days[-1]
                )
            except StripeError as exc:
                stripe_problem = f"Stripe answered: {describe_error(exc)}"
    asked = line.meter_id is not None and stripe_problem is None
    delivered: dict[date, int] = {}
    for v in versions:  # oldest first: the newest delivered version wins
        if v.status == "delivered":
            delivered[v.day] = v.value
    return Explanation(
        line=line,
        days=[
            Day(
                day=d,
                warehouse=truth.get((tenant, d), 0),
                daily_usage=stored.get(d),
                ledger=delivered.get(d),
                stripe=int(stripe_totals.get(d, Decimal(0))) if asked else None,
            )
            for d in days
        ],
        ledger=versions,
        sql_start=start,
        sql_end=end,
        sql_count=warehouse_count(warehouse, tenant, start, end) if days else 0,
        causes=audit_causes(conn, line),
        stripe_problem=stripe_problem if line.meter_id is not None else None,
    )
