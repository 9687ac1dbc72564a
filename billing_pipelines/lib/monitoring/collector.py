"""Billing state as Prometheus metrics, read from the billing database at scrape time.

Payments, dunning steps, meter pushes and queue work happen in Dagster run processes, not in the
process that serves `/metrics`, so counters kept in memory would miss them. This collector asks
PostgreSQL instead, on every scrape, in one read-only snapshot: every number it exports is what
the database holds at that instant, whichever process wrote it. Rows are never deleted, so the
totals only grow and Prometheus's `rate()` and `increase()` work on them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql
from psycopg.rows import dict_row

from billing_pipelines.lib.alerts.channels import CHAT_TABLE
from billing_pipelines.lib.notifications.emails import OUTBOX_TABLE
from billing_pipelines.lib.pg.queue import QueueTable
from billing_pipelines.lib.webhooks.queue import EVENTS_TABLE

log = logging.getLogger("billing_pipelines.monitoring")

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], AbstractContextManager[Conn]]
Family = GaugeMetricFamily | CounterMetricFamily

# The leased queues, under the names operators know them by.
QUEUES: dict[str, QueueTable] = {
    "webhook_events": EVENTS_TABLE,
    "email_outbox": OUTBOX_TABLE,
    "chat_alerts": CHAT_TABLE,
}

# Stripe sends one of these per charge attempt on an invoice (`invoice.paid` also fires for
# invoices paid out of band, so it is not an attempt).
PAYMENT_EVENTS = {"invoice.payment_succeeded": "succeeded", "invoice.payment_failed": "failed"}

# Ledger statuses that are final (counted) and those still being worked on (a gauge).
METER_FINAL = ("delivered", "superseded", "out_of_window")
METER_OPEN = ("pending", "failed")

# Terminal webhook statuses: what the queue consumer decided about each event.
WEBHOOK_FINAL = ("processed", "ignored", "dead")


def _families() -> dict[str, Family]:
    """Every family this collector exports, empty; `collect` fills them."""
    return {
        "up": GaugeMetricFamily(
            "billing_metrics_database_up",
            "1 when the billing database answered this scrape, 0 when it did not.",
        ),
        "queue_rows": GaugeMetricFamily(
            "billing_queue_rows",
            "Rows in each leased queue by status (pending, claimed, failed, done, dead).",
            labels=["queue", "status"],
        ),
        "queue_depth": GaugeMetricFamily(
            "billing_queue_depth",
            "Rows a queue still has to work on: pending, failed (waiting to retry) or claimed.",
            labels=["queue"],
        ),
        "queue_oldest_due": GaugeMetricFamily(
            "billing_queue_oldest_due_age_seconds",
            "How long the oldest row that is due has been waiting for a run (0 when none).",
            labels=["queue"],
        ),
        "queue_dead": GaugeMetricFamily(
            "billing_queue_dead_rows",
            "Dead-lettered rows per queue: given up after the maximum attempts, need an operator.",
            labels=["queue"],
        ),
        "webhooks": CounterMetricFamily(
            "billing_webhook_events_finished",
            "Stored Stripe events whose handling ended, by event type and outcome "
            "(processed, ignored, dead).",
            labels=["event_type", "outcome"],
        ),
        "payments": CounterMetricFamily(
            "billing_payment_attempts",
            "Invoice charge attempts Stripe reported by webhook, by outcome (succeeded, failed) "
            "and attempt (first, retry).",
            labels=["outcome", "attempt"],
        ),
        "dunning_steps": CounterMetricFamily(
            "billing_dunning_steps",
            "Dunning ladder steps executed (one per invoice and step), by step and action.",
            labels=["step", "action"],
        ),
        "dunning_cases": GaugeMetricFamily(
            "billing_dunning_cases",
            "Unpaid invoices being chased (open) or settled (resolved, by resolution).",
            labels=["status", "resolution"],
        ),
        "dunning_due": GaugeMetricFamily(
            "billing_dunning_open_amount_due_cents",
            "Amount due on open dunning cases, in the currency's smallest unit.",
            labels=["currency"],
        ),
        "meter_reports": CounterMetricFamily(
            "billing_meter_reports",
            "Meter reports that reached a final status: delivered to Stripe, superseded by a "
            "newer value, or out of Stripe's 35-day window (needs a manual adjustment).",
            labels=["status"],
        ),
        "meter_open": GaugeMetricFamily(
            "billing_meter_reports_open",
            "Meter reports not yet confirmed by Stripe (pending) or failed and to be re-sent.",
            labels=["status"],
        ),
        "meter_through": GaugeMetricFamily(
            "billing_meter_delivered_through_timestamp_seconds",
            "End (UTC) of the newest usage day with a delivered meter report: the usage sync "
            "lag is now minus this.",
        ),
    }


class BillingStateCollector(Collector):
    """A Prometheus collector that reads queue, payment, dunning and meter state from Postgres."""

    def __init__(self, connect: Connect, *, statement_timeout_ms: int = 5000) -> None:
        self._connect = connect
        self._statement_timeout_ms = statement_timeout_ms

    @classmethod
    def for_url(cls, database_url: str, *, connect_timeout: int = 2) -> BillingStateCollector:
        """One short connection per scrape to `database_url` (scrapes are seconds apart)."""

        def connect() -> AbstractContextManager[Conn]:
            return psycopg.connect(
                database_url, row_factory=dict_row, connect_timeout=connect_timeout
            )

        return cls(connect)

    def describe(self) -> Iterable[Metric]:
        """The families without reading the database (registration must not need it)."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        """One consistent read of the database; a database that is down is a 0, not an error."""
        families = _families()
        try:
            with self._connect() as conn:
                with conn.transaction():
                    conn.execute(
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                    )
                    conn.execute(
                        sql.SQL("SET LOCAL statement_timeout = {}").format(
                            sql.Literal(self._statement_timeout_ms)
                        )
                    )
                    _read(conn, families)
        except psycopg.Error as exc:
            # The scrape still answers, so Prometheus can alert on the 0 instead of a gap.
            log.warning("billing metrics: database unavailable (%s)", type(exc).__name__)
            families = _families()
            families["up"].add_metric([], 0)
            yield families["up"]
            return
        families["up"].add_metric([], 1)
        yield from families.values()


def _read(conn: Conn, f: dict[str, Family]) -> None:
    now = time.time()
    for queue, table in QUEUES.items():
        ids = table.identifiers()
        rows = conn.execute(
            sql.SQL(
                """
                SELECT {status} AS status, count(*) AS n,
                       min({next_attempt_at}) FILTER (
                           WHERE {status} IN (%(pending)s, %(failed)s)
                             AND {next_attempt_at} <= now()) AS oldest_due
                FROM {table} GROUP BY {status}
                """
            ).format(**ids),
            {"pending": table.pending_status, "failed": table.failed_status},
        ).fetchall()
        counts = {r["status"]: int(r["n"]) for r in rows}
        waiting = (table.pending_status, table.failed_status, table.claimed_status)
        for status in sorted({*counts, *waiting, table.dead_status, *table.done_statuses}):
            f["queue_rows"].add_metric([queue, status], counts.get(status, 0))
        f["queue_depth"].add_metric([queue], sum(counts.get(s, 0) for s in waiting))
        f["queue_dead"].add_metric([queue], counts.get(table.dead_status, 0))
        due = [r["oldest_due"] for r in rows if r["oldest_due"] is not None]
        f["queue_oldest_due"].add_metric(
            [queue], max(0.0, now - min(due).timestamp()) if due else 0
        )

    for r in conn.execute(
        """
        SELECT event_type, status, count(*) AS n FROM webhook_events
        WHERE status = ANY(%s) GROUP BY event_type, status ORDER BY event_type, status
        """,
        (list(WEBHOOK_FINAL),),
    ):
        f["webhooks"].add_metric([r["event_type"], r["status"]], int(r["n"]))

    payments = {(o, a): 0 for o in PAYMENT_EVENTS.values() for a in ("first", "retry")}
    for r in conn.execute(
        """
        SELECT event_type,
               coalesce((payload #>> '{data,object,attempt_count}')::int, 1) <= 1 AS first,
               count(*) AS n
        FROM webhook_events WHERE event_type = ANY(%s) GROUP BY 1, 2
        """,
        (list(PAYMENT_EVENTS),),
    ):
        payments[PAYMENT_EVENTS[r["event_type"]], "first" if r["first"] else "retry"] += int(r["n"])
    for (outcome, attempt), n in sorted(payments.items()):
        f["payments"].add_metric([outcome, attempt], n)

    for r in conn.execute(
        "SELECT step, action, count(*) AS n FROM dunning_actions GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        f["dunning_steps"].add_metric([str(r["step"]), r["action"]], int(r["n"]))
    cases = {("open", ""): 0}
    for r in conn.execute(
        "SELECT status, coalesce(resolution, '') AS resolution, count(*) AS n "
        "FROM dunning_cases GROUP BY 1, 2"
    ):
        cases[r["status"], r["resolution"]] = int(r["n"])
    for (status, resolution), n in sorted(cases.items()):
        f["dunning_cases"].add_metric([status, resolution], n)
    for r in conn.execute(
        "SELECT currency, sum(amount_due) AS due FROM dunning_cases "
        "WHERE status = 'open' GROUP BY 1 ORDER BY 1"
    ):
        f["dunning_due"].add_metric([r["currency"]], int(r["due"]))

    ledger = {
        r["status"]: int(r["n"])
        for r in conn.execute(
            "SELECT status, count(*) AS n FROM usage_report_ledger GROUP BY status"
        )
    }
    for status in METER_FINAL:
        f["meter_reports"].add_metric([status], ledger.get(status, 0))
    for status in METER_OPEN:
        f["meter_open"].add_metric([status], ledger.get(status, 0))
    through = conn.execute(
        """
        SELECT extract(epoch FROM (max(usage_date) + 1)::timestamp AT TIME ZONE 'UTC') AS t
        FROM usage_report_ledger WHERE status = 'delivered'
        """
    ).fetchone()
    if through is not None and through["t"] is not None:
        f["meter_through"].add_metric([], float(through["t"]))


def exported_names(families: Iterable[Metric]) -> set[str]:
    """Every sample name a scrape can contain for these families (to check dashboards against)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in families:
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names
