"""Late usage billed as a correction: a subscription signed up at 14:30 UTC with Stripe's
default 1-hour finalization grace period, so the renewal day's part before 14:30 reaches
Stripe after the first period's invoice is final. The audit shows the under-charge; the late
usage job (as Dagster loads it) bills it once on the next invoice, at the marginal price of
that period's plan; the audit then reads zero difference.

Expected numbers are worked out by hand from the inserted events and plans.toml."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from billing_pipelines.definitions import defs
from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    usage_invoice_audit,
)
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation import late_usage
from billing_pipelines.lib.reconciliation.late_billing import bill_late_usage
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.integration.reconciliation.test_lifecycle_instant_usage import (
    _nightly,
    env,  # noqa: F401 (the fixture)
)
from billing_pipelines_tests.integration.reconciliation.test_period_boundary_push import insert
from billing_pipelines_tests.support import SimulatedCrash, advance
from billing_pipelines_tests.webhook_harness import query

SIGN_UP = datetime.combine(
    datetime.now(UTC).date() - timedelta(days=33), datetime.min.time(), UTC
) + timedelta(hours=14, minutes=30)


def midnight(day: date) -> datetime:
    return wh.day_bounds(day)[0]


def _audit(resources: dict[str, Any], db_url: str, tenant: str) -> list[tuple[int, int, int]]:
    result = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=resources,
    )
    assert result.success
    rows = query(
        db_url,
        "SELECT warehouse_queries, invoice_quantity, difference_cents FROM usage_invoice_audit "
        "WHERE tenant_id = %s AND audit_date = (SELECT max(audit_date) FROM usage_invoice_audit) "
        "ORDER BY period_start",
        (tenant,),
    )
    return [(r["warehouse_queries"], r["invoice_quantity"], r["difference_cents"]) for r in rows]


def _crash(*args: object) -> None:
    raise SimulatedCrash()


def _transaction(url: str) -> Callable[[], AbstractContextManager[psycopg.Connection[Any]]]:
    @contextmanager
    def transaction() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
            yield conn

    return transaction


def _bill_late_usage() -> dict[str, Any]:
    result = (
        defs()
        .resolve_job_def("late_usage_billing_job")
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    assert result.success
    return dict(result.output_for_node("bill_late_usage_op"))


def test_a_boundary_part_that_arrived_late_is_billed_once_on_the_next_invoice(
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    env: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = stripe_client
    support.catalog(c)
    tenant = "t-late"
    customer, sub, clock = support.tenant(
        c, billing_db_url, tenant, plan="starter", frozen_time=int(SIGN_UP.timestamp())
    )
    renewal_ts = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    renewal = datetime.fromtimestamp(renewal_ts, UTC)
    d0, d1, db = SIGN_UP.date(), SIGN_UP.date() + timedelta(days=1), renewal.date()
    insert(tenant, "sign-up-day-", 4_000, SIGN_UP, midnight(d1))
    insert(tenant, "day-two-", 5_000, midnight(d1), midnight(d1 + timedelta(days=1)))
    insert(tenant, "renewal-before-", 3_000, midnight(db), renewal)
    insert(tenant, "renewal-after-", 4_000, renewal, midnight(db + timedelta(days=1)))
    insert(tenant, "after-", 7_000, midnight(db + timedelta(days=1)), midnight(db + timedelta(2)))
    for day in (d0, d1, db, db + timedelta(days=1)):
        _nightly(c, clock, env, day)
    # The first period's invoice finalized an hour after 14:30, before the night's push: its
    # line bills 4,000 + 5,000 = 9,000 of the 12,000 queries in [14:30, 14:30) ($0.00, under
    # starter's 10,000 included); the 3,000 of the renewal day before 14:30 are late.
    assert _audit(env, billing_db_url, tenant) == [(12_000, 9_000, -200)]  # period 1 closed

    # A crash after Stripe created the item, before its row was confirmed: the next run finds
    # the item by its key on the customer and creates no second one.
    with monkeypatch.context() as m:
        m.setattr(late_usage, "record_created", _crash)
        with pytest.raises(SimulatedCrash):
            bill_late_usage(_transaction(billing_db_url), c, load_catalog().plans)
    assert len(c.v1.invoice_items.list({"customer": customer}).data) == 1
    first = _bill_late_usage()
    # Marginal price: the tiers continue from 9,000: 1,000 more free, 2,000 at $0.001 = $2.00.
    assert (first["corrections"], first["cents"]) == (1, 200)
    again = _bill_late_usage()
    assert again["corrections"] == 0  # never twice
    items = c.v1.invoice_items.list({"customer": customer}).data
    late = [i for i in items if (i.description or "").startswith("Late usage")]
    assert len(late) == 1
    assert late[0].description == (
        f"Late usage for {SIGN_UP:%Y-%m-%d}..{renewal:%Y-%m-%d}: 3,000 queries (reported after "
        "that period's invoice was final; priced on the starter plan, continuing its tiers)"
    )
    assert (late[0].amount, late[0].invoice) == (200, None)

    # The next renewal bills it: base fee, the second period's usage ($1.00), the correction.
    next_end = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    advance(c, clock, next_end + 2 * 3600)
    invoice = c.v1.invoices.retrieve(str(c.v1.invoice_items.retrieve(late[0].id).invoice))
    assert invoice.billing_reason == "subscription_cycle" and invoice.status == "paid"
    assert sorted(ln.amount for ln in invoice.lines.data) == [100, 200, 2900]
    # The audit counts the correction for the line it corrects: zero difference everywhere.
    assert _audit(env, billing_db_url, tenant) == [(12_000, 12_000, 0), (11_000, 11_000, 0)]
