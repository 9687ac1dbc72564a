"""Usage against invoices: per tenant and closed billing period, every source side by side.

For each metered invoice line the audit lines up, day by day over the line's period, the
warehouse truth (distinct query ids), the stored `daily_tenant_usage`, the report ledger's last
delivered total and Stripe's meter summary; then the invoice line's quantity and amount, and the
amount recomputed from the catalog tiers. Every difference becomes a cause in plain words, and
the money difference is what the invoice charged minus what the warehouse truth costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.notifications.emails import format_money, usage_explanation
from billing_pipelines.lib.usage.periods import PeriodTruth
from billing_pipelines.lib.usage.warehouse import DUPLICATE_HORIZON, day_bounds

if TYPE_CHECKING:
    import psycopg
    from clickhouse_connect.driver.client import Client

QUERIES = "queries"


def period_days(start: datetime, end: datetime) -> list[date]:
    """UTC days whose meter event falls in [start, end): the day's midnight is in the period
    (day totals are timestamped just after midnight, see meter_reports.event_timestamp)."""
    first = start.astimezone(UTC).date()
    if day_bounds(first)[0] < start:
        first += timedelta(days=1)
    days = []
    day = first
    while day_bounds(day)[0] < end:
        days.append(day)
        day += timedelta(days=1)
    return days


def line_cents(plan: Plan, queries: int) -> int:
    """The usage line amount Stripe should charge: graduated tiers, rounded half up."""
    return int(plan.overage_cents(queries).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class BilledLine:
    """One metered invoice line of a closed period, with the tenant it bills."""

    invoice_id: str
    line_id: str
    customer_id: str
    tenant_id: str | None
    plan: Plan | None
    currency: str
    period_start: datetime
    period_end: datetime
    quantity: int
    amount: int
    meter_id: str | None
    price_id: str | None = None  # the line's own price: a plan change bills two prices
    # Stripe Tax's tax on this line, reported beside it: `amount` (what the audit compares
    # with the warehouse truth) is always before tax.
    tax: int = 0


@dataclass(frozen=True)
class DaySources:
    """One day's billable queries as each source holds it."""

    warehouse: int = 0
    daily_usage: int = 0
    ledger: int = 0
    stripe: int = 0


@dataclass
class AuditRow:
    """The side-by-side comparison of one tenant and billing period."""

    line: BilledLine
    warehouse: int
    daily_usage: int
    ledger: int
    stripe: int
    recomputed_amount: int  # catalog tiers applied to the warehouse truth
    difference_cents: int  # invoice amount minus recomputed: > 0 over-charged
    causes: list[str] = field(default_factory=list)
    explanation: str = ""
    truth_method: str = ""  # how `warehouse` was computed (by event timestamps, or whole days)

    @property
    def clean(self) -> bool:
        """Every source agrees and the money is right."""
        return not self.causes and self.difference_cents == 0


def _period(line: BilledLine) -> str:
    end = line.period_end - timedelta(seconds=1)
    return f"{line.period_start:%Y-%m-%d} to {end:%Y-%m-%d}"


def explain_line(line: BilledLine) -> str:
    """What support can paste to the customer about this invoice line."""
    period = f"{_period(line)} (UTC)"
    if line.plan is None:
        return (
            f"For {period} we billed {line.quantity:,} queries, "
            f"{format_money(line.amount, line.currency)}."
        )
    # The sentence may already end with a full stop ("no usage charge."): never two.
    sentence = usage_explanation(line.plan, line.quantity, line.currency).rstrip(".")
    return f"For {period}: {sentence}."


def boundary_causes(line: BilledLine, truth: PeriodTruth) -> list[str]:
    """Why a period that does not start or end at 00:00 UTC differs: the boundary days."""
    causes = []
    if not truth.starts_at_midnight:
        day = truth.start.astimezone(UTC).date()
        causes.append(
            f"boundary day {day}: the period starts at {truth.start:%Y-%m-%d %H:%M:%S} UTC, "
            f"not at midnight; {truth.head:,} queries of that day after the start belong to this "
            f"period and {truth.head_before:,} before it to the previous one (a whole-day total "
            "stamped at midnight bills them all in the previous period)"
        )
    if not truth.ends_at_midnight:
        day = truth.end.astimezone(UTC).date()
        causes.append(
            f"boundary day {day}: the period ends at {truth.end:%Y-%m-%d %H:%M:%S} UTC, "
            f"not at midnight; {truth.tail:,} queries of that day before the end belong to this "
            f"period and {truth.tail_after:,} after it to the next one (unbilled if the day's "
            "part before the end was not reported before the invoice finalized)"
        )
    return causes


def audit_line(
    line: BilledLine, days: Mapping[date, DaySources], truth: PeriodTruth | None = None
) -> AuditRow:
    """Compare every source for one billed line; each difference is a cause.

    With `truth` (distinct query ids by event timestamp over the line's own period) the money
    is checked against it; without, against the whole days whose midnight is in the period.
    """
    causes: list[str] = []
    for day in sorted(days):
        s = days[day]
        if s.warehouse != s.daily_usage:
            causes.append(
                f"{day}: daily_tenant_usage holds {s.daily_usage:,} queries, the warehouse "
                f"{s.warehouse:,} (partition stale or not materialized: late events?)"
            )
        if s.daily_usage != s.ledger:
            causes.append(
                f"{day}: the report ledger delivered {s.ledger:,} queries, daily usage is "
                f"{s.daily_usage:,}"
                + (
                    " (reported usage the warehouse does not have: double count)"
                    if s.ledger > s.daily_usage
                    else " (usage not reported to Stripe)"
                )
            )
        if s.ledger != s.stripe:
            causes.append(
                f"{day}: Stripe's meter holds {s.stripe:,} queries, the ledger {s.ledger:,} "
                "(meter events sent outside the ledger, or lost)"
            )
    whole_days = sum(s.warehouse for s in days.values())
    warehouse = whole_days if truth is None else truth.queries
    stripe_total = sum(s.stripe for s in days.values())
    if truth is not None and line.quantity != truth.queries:
        causes.append(
            f"the invoice bills {line.quantity:,} queries, the warehouse has {truth.queries:,} "
            f"distinct queries with timestamps in the period "
            f"[{truth.start:%Y-%m-%d %H:%M:%S}, {truth.end:%Y-%m-%d %H:%M:%S}) UTC"
        )
        causes.extend(boundary_causes(line, truth))
    whole_days_only = truth is None or (truth.starts_at_midnight and truth.ends_at_midnight)
    if whole_days_only and stripe_total != line.quantity:
        # (A period cut inside a day is checked against the truth above: a split day's meter
        # and ledger values are its parts, which whole-day sources cannot show.)
        causes.append(
            f"the invoice bills {line.quantity:,} queries, Stripe's meter totals for the period "
            f"are {stripe_total:,} (usage arrived after the invoice finalized?)"
        )
    if line.plan is None:
        causes.append("tenant or plan unknown: the amount cannot be recomputed")
        recomputed = line.amount
    else:
        if line.amount != line_cents(line.plan, line.quantity):
            causes.append(
                f"the invoice charges {format_money(line.amount, line.currency)} for "
                f"{line.quantity:,} queries, the catalog tiers say "
                f"{format_money(line_cents(line.plan, line.quantity), line.currency)} "
                "(Stripe price differs from plans.toml)"
            )
        recomputed = line_cents(line.plan, warehouse)
    difference = line.amount - recomputed
    if difference:
        word = "over-charged" if difference > 0 else "under-charged"
        causes.append(
            f"{word} by {format_money(abs(difference), line.currency)}: billed "
            f"{format_money(line.amount, line.currency)} for {line.quantity:,} queries, the "
            f"warehouse truth of {warehouse:,} queries costs "
            f"{format_money(recomputed, line.currency)}"
        )
    return AuditRow(
        line=line,
        warehouse=warehouse,
        daily_usage=sum(s.daily_usage for s in days.values()),
        ledger=sum(s.ledger for s in days.values()),
        stripe=stripe_total,
        recomputed_amount=recomputed,
        difference_cents=difference,
        causes=causes,
        explanation=explain_line(line),
        truth_method=(
            "whole UTC days whose midnight is in the period" if truth is None else truth.method
        ),
    )


# ---- reading the sources -----------------------------------------------------------------------

Conn: TypeAlias = "psycopg.Connection[Any]"
Key = tuple[str, date]  # (tenant_id, day)

# A day's billable queries by daily usage's rule, read from the raw events (not from the daily
# id table the push reads, so the audit does not share its inputs): ids the tenant logged as a
# query that day and as no event of any kind the day before (a copy across midnight counts on
# its first day only). The scan starts a day early for that look-back.
WAREHOUSE_SQL = """
SELECT tenant_id, day, toInt64(count()) AS queries
FROM
(
    SELECT tenant_id, query_id,
           groupUniqArray(toDate(timestamp, 'UTC'))                            AS logged_days,
           groupUniqArrayIf(toDate(timestamp, 'UTC'), event_type = 'query')    AS queried_days
    FROM usage_events
    WHERE timestamp >= {lookback:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
      AND tenant_id IN {tenants:Array(String)}
    GROUP BY tenant_id, query_id
)
ARRAY JOIN queried_days AS day
WHERE day >= {first:Date} AND NOT has(logged_days, day - 1)
GROUP BY tenant_id, day
"""


# The query above holds every id of the tenants it reads at once (GROUP BY tenant_id, query_id):
# over a month of every tenant that was the warehouse's largest memory use (about 1.3 GiB of the
# chDB bridge at 500 tenants, 33 M events). Tenants are read in slices of at most this many
# events, counted per tenant first; a tenant is never split, so each slice's (tenant, day) keys
# are its own and the slices' answers are the whole answer.
EVENTS_PER_QUERY = 4_000_000

TENANT_EVENTS_SQL = """
SELECT tenant_id, toInt64(count())
FROM usage_events
WHERE timestamp >= {lookback:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
  AND tenant_id IN {tenants:Array(String)}
GROUP BY tenant_id
"""


def tenant_slices(events: Mapping[str, int], per_slice: int) -> list[list[str]]:
    """Tenants (in name order) packed into slices of at most per_slice events; a tenant larger
    than a slice gets one of its own, and tenants without events are left out."""
    slices: list[list[str]] = []
    current: list[str] = []
    size = 0
    for tenant in sorted(t for t, n in events.items() if n > 0):
        if current and size + events[tenant] > per_slice:
            slices.append(current)
            current, size = [], 0
        current.append(tenant)
        size += events[tenant]
    if current:
        slices.append(current)
    return slices


def warehouse_queries(
    client: Client,
    tenants: Iterable[str],
    first: date,
    last: date,
    events_per_query: int = EVENTS_PER_QUERY,
) -> dict[Key, int]:
    """Distinct billable queries per (tenant, UTC day) in [first, last], from the warehouse."""
    start, _ = day_bounds(first)
    _, end = day_bounds(last)
    window = {"lookback": start - DUPLICATE_HORIZON, "end": end}
    names = sorted(set(tenants))
    events = client.query(TENANT_EVENTS_SQL, parameters={**window, "tenants": names})
    truth: dict[Key, int] = {}
    for part in tenant_slices({str(t): int(n) for t, n in events.result_rows}, events_per_query):
        result = client.query(WAREHOUSE_SQL, parameters={**window, "first": first, "tenants": part})
        truth.update({(str(t), d): int(q) for t, d, q in result.result_rows})
    return truth


def stored_queries(conn: Conn, tenants: Iterable[str], first: date, last: date) -> dict[Key, int]:
    """daily_tenant_usage's billable queries per (tenant, day)."""
    rows = conn.execute(
        """
        SELECT tenant_id, usage_date, billable_queries FROM daily_tenant_usage
        WHERE usage_date BETWEEN %s AND %s AND tenant_id = ANY(%s)
        """,
        (first, last, sorted(set(tenants))),
    ).fetchall()
    return {(r["tenant_id"], r["usage_date"]): int(r["billable_queries"]) for r in rows}


def ledger_queries(conn: Conn, tenants: Iterable[str], first: date, last: date) -> dict[Key, int]:
    """The newest delivered value per (tenant, day) of the queries metric in the report ledger."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (tenant_id, usage_date) tenant_id, usage_date, value
        FROM usage_report_ledger
        WHERE metric = %s AND status = 'delivered' AND usage_date BETWEEN %s AND %s
          AND tenant_id = ANY(%s)
        ORDER BY tenant_id, usage_date, value_version DESC
        """,
        (QUERIES, first, last, sorted(set(tenants))),
    ).fetchall()
    return {(r["tenant_id"], r["usage_date"]): int(r["value"]) for r in rows}


def audit_lines(
    lines: Iterable[BilledLine],
    *,
    warehouse: Mapping[Key, int],
    stored: Mapping[Key, int],
    ledger: Mapping[Key, int],
    stripe_day_total: Callable[[BilledLine, date], int],
    truth_of: Callable[[BilledLine], PeriodTruth | None] = lambda line: None,
) -> list[AuditRow]:
    """Audit every line; `stripe_day_total` reads Stripe's meter summary for one day and
    `truth_of` counts the line's queries by event timestamps over its own period.

    A line whose sources cannot be read (a lookup of its tenant, customer or meter fails) is
    reported on its own row, not clean, and the other lines are still audited."""
    rows = []
    for line in lines:
        tenant = line.tenant_id or ""
        # A day cut by the period's end instant carries one part at a time in the ledger and
        # the meter; its sources are compared through the truth by timestamps instead.
        split_day = line.period_end.astimezone(UTC).date() if not _at_midnight(line) else None
        try:
            days = {
                day: DaySources(
                    warehouse=warehouse.get((tenant, day), 0),
                    daily_usage=stored.get((tenant, day), 0),
                    ledger=ledger.get((tenant, day), 0),
                    stripe=stripe_day_total(line, day),
                )
                for day in period_days(line.period_start, line.period_end)
                if day != split_day
            }
            truth = truth_of(line)
        except (LookupError, ValueError) as error:
            # Lookups that fail for this line's tenant, customer or meter (an outage or a bug
            # elsewhere still fails the whole audit, so that it is retried).
            rows.append(unreadable_line(line, error))
            continue
        rows.append(audit_line(line, days, truth))
    return rows


def unreadable_line(line: BilledLine, error: LookupError | ValueError) -> AuditRow:
    """The row of a line whose sources could not be read: nothing compared, never clean."""
    return AuditRow(
        line=line,
        warehouse=0,
        daily_usage=0,
        ledger=0,
        stripe=0,
        recomputed_amount=line.amount,
        difference_cents=0,
        causes=[
            f"the line's usage sources could not be read ({type(error).__name__}: {error}); "
            f"tenant {line.tenant_id or 'unknown'}, customer {line.customer_id}, "
            f"meter {line.meter_id or 'none'}"
        ],
        explanation=explain_line(line),
        truth_method="not computed: the sources could not be read",
    )


def _at_midnight(line: BilledLine) -> bool:
    return line.period_end == day_bounds(line.period_end.astimezone(UTC).date())[0]


def billed_lines(
    conn: Conn, snapshot_date: date, plans: Mapping[str, Plan], *, since: datetime
) -> list[BilledLine]:
    """Metered lines of finalized (closed) invoices in the snapshot whose period ends after
    `since`, with the tenant and the subscription's plan (see `priced_by_line`)."""
    rows = conn.execute(
        """
        SELECT l.invoice_id, l.line_id, i.customer_id, t.tenant_id,
               coalesce(s.plan, t.plan) AS plan, i.currency, l.period_start, l.period_end,
               coalesce(l.quantity, 0) AS quantity, l.amount, l.meter_id, l.price_id, l.tax
        FROM stripe_invoice_line_snapshots l
        JOIN stripe_invoice_snapshots i
          ON i.snapshot_date = l.snapshot_date AND i.invoice_id = l.invoice_id
        LEFT JOIN stripe_subscription_snapshots s
          ON s.snapshot_date = i.snapshot_date AND s.subscription_id = i.subscription_id
        LEFT JOIN tenants t ON t.stripe_customer_id = i.customer_id
        WHERE l.snapshot_date = %s AND l.metered
          AND i.status IN ('open', 'paid', 'uncollectible')
          AND l.period_start IS NOT NULL AND l.period_end >= %s
        ORDER BY t.tenant_id, l.period_start, l.invoice_id, l.line_id
        """,
        (snapshot_date, since),
    ).fetchall()
    return [
        BilledLine(
            invoice_id=r["invoice_id"],
            line_id=r["line_id"],
            customer_id=r["customer_id"],
            tenant_id=r["tenant_id"],
            plan=plans.get(r["plan"]) if r["plan"] else None,
            currency=r["currency"],
            period_start=r["period_start"],
            period_end=r["period_end"],
            quantity=int(r["quantity"]),
            amount=int(r["amount"]),
            meter_id=r["meter_id"],
            price_id=r["price_id"],
            tax=int(r["tax"]),
        )
        for r in rows
    ]


def priced_by_line(
    lines: Iterable[BilledLine], plans: Mapping[str, Plan], price_plans: Mapping[str, str]
) -> list[BilledLine]:
    """Each line with the plan of its own price (price id -> plan key): after a plan change
    the old price's line is checked against the old plan, the new one against the new plan.
    A line whose price names no known plan keeps the subscription's plan."""
    out = []
    for line in lines:
        plan = plans.get(price_plans.get(line.price_id or "", ""))
        out.append(replace(line, plan=plan) if plan is not None else line)
    return out


def fee_explanations(
    conn: Conn, snapshot_date: date, invoice_ids: Iterable[str], plans: Mapping[str, Plan]
) -> list[tuple[str, str, str]]:
    """(invoice, line, sentence) for the non-usage lines of these invoices: base fees and
    prorations, in words support can paste to a customer."""
    rows = conn.execute(
        """
        SELECT l.invoice_id, l.line_id, l.amount, l.period_start, l.period_end, l.description,
               i.currency, coalesce(s.plan, t.plan) AS plan
        FROM stripe_invoice_line_snapshots l
        JOIN stripe_invoice_snapshots i
          ON i.snapshot_date = l.snapshot_date AND i.invoice_id = l.invoice_id
        LEFT JOIN stripe_subscription_snapshots s
          ON s.snapshot_date = i.snapshot_date AND s.subscription_id = i.subscription_id
        LEFT JOIN tenants t ON t.stripe_customer_id = i.customer_id
        WHERE l.snapshot_date = %s AND NOT l.metered AND l.invoice_id = ANY(%s)
        ORDER BY l.invoice_id, l.line_id
        """,
        (snapshot_date, sorted(set(invoice_ids))),
    ).fetchall()
    out = []
    for r in rows:
        plan = plans.get(r["plan"]) if r["plan"] else None
        text = fee_sentence(
            plan,
            int(r["amount"]),
            r["currency"],
            r["period_start"],
            r["period_end"],
            r["description"],
        )
        out.append((r["invoice_id"], r["line_id"], text))
    return out


# A base fee line spans one period of its cycle: about a month (28-31 days) or a year.
MONTH_DAYS, YEAR_DAYS = range(28, 32), range(365, 367)


def fee_sentence(
    plan: Plan | None,
    amount: int,
    currency: str,
    start: datetime | None,
    end: datetime | None,
    description: str | None,
) -> str:
    """One non-usage line in words: the plan's monthly or yearly base fee when its amount and
    its period match the catalog (a yearly fee covers a year, a monthly one a month), otherwise
    the line's own description (a proration or credit)."""
    money = format_money(amount, currency)
    period = ""
    days = None
    if start and end:
        period = f"For {start:%Y-%m-%d} to {end - timedelta(seconds=1):%Y-%m-%d} (UTC): "
        days = (end - start).days
    if plan is not None and amount == plan.base_monthly_cents and days in (None, *MONTH_DAYS):
        return f"{period}the {plan.name} plan's monthly base fee, {money}."
    if (
        plan is not None
        and plan.base_yearly_cents is not None
        and amount == plan.base_yearly_cents
        and days in (None, *YEAR_DAYS)
    ):
        return (
            f"{period}the {plan.name} plan's yearly base fee, {money} "
            "(usage is billed every month on its own lines)."
        )
    what = description or "an adjustment (proration or credit)"
    return f"{period}{what}, {money}."


def store(conn: Conn, audit_date: date, rows: Iterable[AuditRow]) -> int:
    """Replace the day's audit rows."""
    from psycopg.types.json import Jsonb

    conn.execute("DELETE FROM usage_invoice_audit WHERE audit_date = %s", (audit_date,))
    params = [
        (
            audit_date,
            r.line.invoice_id,
            r.line.line_id,
            r.line.tenant_id,
            r.line.customer_id,
            r.line.plan.key if r.line.plan else None,
            r.line.period_start,
            r.line.period_end,
            r.warehouse,
            r.daily_usage,
            r.ledger,
            r.stripe,
            r.line.quantity,
            r.line.amount,
            r.recomputed_amount,
            r.difference_cents,
            Jsonb(r.causes),
            r.explanation,
        )
        for r in rows
    ]
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO usage_invoice_audit (audit_date, invoice_id, line_id, tenant_id,
                customer_id, plan, period_start, period_end, warehouse_queries,
                daily_usage_queries, ledger_queries, stripe_meter_queries, invoice_quantity,
                invoice_amount, recomputed_amount, difference_cents, causes, explanation)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            params,
        )
    return len(params)
