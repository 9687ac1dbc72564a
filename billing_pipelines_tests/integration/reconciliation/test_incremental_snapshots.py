"""Incremental invoice and subscription snapshots against the Stripe sandbox and PostgreSQL.

The oracle for every incremental snapshot is a full listing of Stripe made right after it with
`stripe.snapshots` (the path the snapshot always took): the two must hold the same rows.
"""

from __future__ import annotations

from dataclasses import astuple, fields
from datetime import date
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg.rows import dict_row

from billing_pipelines.definitions import defs
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.stripe import snapshots as stripe_snapshots
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import API_KEY, advance
from billing_pipelines_tests.webhook_harness import query

MONTH = 31 * support.DAY  # T0 is 2026-01-01: the first renewal is on 2026-02-01


def _snapshot(
    monkeypatch: pytest.MonkeyPatch,
    env: tuple[str, str],
    day: str,
    **config: Any,
) -> dg.ExecuteInProcessResult:
    """Both snapshot assets on `day` (the business clock), resources from the environment."""
    monkeypatch.setenv("DATABASE_URL", env[1])
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", env[0])
    monkeypatch.setenv("BUSINESS_CLOCK", f"{day}T06:00:00+00:00")
    # The snapshot assets as Dagster loads them, from the code location's asset job.
    job = defs().resolve_implicit_global_asset_job_def()
    names = ("stripe_subscription_snapshot", "stripe_invoice_snapshot")
    run_config = {"ops": {name: {"config": config} for name in names}} if config else None
    result = job.execute_in_process(
        run_config=run_config,
        asset_selection=[dg.AssetKey(name) for name in names],
    )
    assert result.success
    return result


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    mats = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in mats[-1].metadata.items()}


def _rows(db_url: str, table: str, cls: type, day: str) -> set[tuple[Any, ...]]:
    cols = [f.name for f in fields(cls)]
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM {table} WHERE snapshot_date = %s",
            (date.fromisoformat(day),),
        ).fetchall()
    return {tuple(_hashable(r[c]) for c in cols) for r in rows}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_rows(objs: list[Any]) -> set[tuple[Any, ...]]:
    return {tuple(_hashable(v) for v in astuple(o)) for o in objs}


def _assert_matches_a_full_listing(client: stripe.StripeClient, db_url: str, day: str) -> None:
    full = stripe_snapshots.fetch_invoices(client)
    assert _rows(db_url, "stripe_invoice_snapshots", stripe_snapshots.InvoiceSnapshot, day) == (
        _as_rows(full.invoices)
    )
    assert _rows(
        db_url, "stripe_invoice_line_snapshots", stripe_snapshots.InvoiceLineSnapshot, day
    ) == _as_rows(full.lines)
    state = stripe_snapshots.fetch_state(client, set(load_catalog().plans))
    assert _rows(
        db_url, "stripe_subscription_snapshots", stripe_snapshots.SubscriptionSnapshot, day
    ) == _as_rows(state.subscriptions)
    assert _rows(
        db_url, "stripe_customer_snapshots", stripe_snapshots.CustomerSnapshot, day
    ) == _as_rows(state.customers)


def _status(db_url: str, day: str, invoice_id: str) -> str:
    rows = query(
        db_url,
        "SELECT status FROM stripe_invoice_snapshots WHERE snapshot_date = %s AND invoice_id = %s",
        (date.fromisoformat(day), invoice_id),
    )
    return str(rows[0]["status"])


def _decline_renewals(client: stripe.StripeClient, customer: str) -> None:
    pm = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm.id}})


def _latest_invoice(client: stripe.StripeClient, customer: str) -> stripe.Invoice:
    return client.v1.invoices.list({"customer": customer, "limit": 1}).data[0]


def test_old_invoices_paid_voided_and_new_ones_appear_after_an_incremental_pass(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = (stripe_sandbox.url, billing_db_url)
    # Three tenants on clocks at different instants (the frontier is per clock).
    cus_a, _, clock_a = support.tenant(c, billing_db_url, "t-a", frozen_time=support.T0)
    cus_b, sub_b, clock_b = support.tenant(
        c, billing_db_url, "t-b", frozen_time=support.T0 + 5 * support.DAY
    )
    cus_c, _, clock_c = support.tenant(c, billing_db_url, "t-c", frozen_time=support.T0 + 9 * 3600)
    _decline_renewals(c, cus_a)
    _decline_renewals(c, cus_b)
    for clock, start in (
        (clock_a, support.T0),
        (clock_b, support.T0 + 5 * support.DAY),
        (clock_c, support.T0 + 9 * 3600),
    ):
        advance(c, clock, start + MONTH + 3 * 3600)  # renewal, finalized, first attempt
    open_a = _latest_invoice(c, cus_a)
    open_b = _latest_invoice(c, cus_b)
    assert open_a.status == "open" and open_b.status == "open"

    first = _snapshot(monkeypatch, resources, "2026-03-01")
    assert _meta(first, "stripe_invoice_snapshot")["pass"] == "full"
    assert _meta(first, "stripe_subscription_snapshot")["pass"] == "full"
    assert _status(billing_db_url, "2026-03-01", open_a.id) == "open"

    # Behind our back: A pays with a good card, B's invoice is voided and its subscription
    # cancelled, C renews once more (a new invoice, created on its clock after the frontier).
    good = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus_a})
    c.v1.invoices.pay(open_a.id, {"payment_method": good.id})
    c.v1.invoices.void_invoice(open_b.id)
    c.v1.subscriptions.cancel(sub_b)
    advance(c, clock_c, support.T0 + 9 * 3600 + 2 * MONTH)
    new_c = _latest_invoice(c, cus_c)

    second = _snapshot(monkeypatch, resources, "2026-03-02")
    inv_meta = _meta(second, "stripe_invoice_snapshot")
    assert inv_meta["pass"] == "incremental"
    # The frontier is the earliest clock's time at the first pass (A's: T0 + MONTH + 3 h).
    # B's renewal was created on B's clock at T0 + 5 days + MONTH, after it, so the `created`
    # listing returns it; A's renewal (T0 + MONTH) is older and no longer open: read by id.
    assert inv_meta["read_by_id"] == 1
    assert inv_meta["carried_forward"] >= 3  # the three first invoices, paid at sign-up
    assert _meta(second, "stripe_subscription_snapshot")["pass"] == "incremental"
    assert _status(billing_db_url, "2026-03-02", open_a.id) == "paid"
    assert _status(billing_db_url, "2026-03-02", open_b.id) == "void"
    assert new_c.id in {
        r[0]
        for r in _rows(
            billing_db_url,
            "stripe_invoice_snapshots",
            stripe_snapshots.InvoiceSnapshot,
            "2026-03-02",
        )
    }
    _assert_matches_a_full_listing(c, billing_db_url, "2026-03-02")
    # The day before keeps what it saw.
    assert _status(billing_db_url, "2026-03-01", open_a.id) == "open"

    # A re-run of the same day carries from itself and stays exact (C renewed once more).
    advance(c, clock_c, support.T0 + 9 * 3600 + 3 * MONTH)
    assert _latest_invoice(c, cus_c).id != new_c.id
    again = _snapshot(monkeypatch, resources, "2026-03-02")
    assert _meta(again, "stripe_invoice_snapshot")["pass"] == "incremental"
    _assert_matches_a_full_listing(c, billing_db_url, "2026-03-02")


def test_the_periodic_full_pass_catches_what_an_incremental_pass_cannot(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = (stripe_sandbox.url, billing_db_url)
    cus, _, clock = support.tenant(c, billing_db_url, "t-final", frozen_time=support.T0 + 777)
    paid = _latest_invoice(c, cus)
    assert paid.status == "paid"
    # Ten days on (no renewal yet): the clock's frontier is now past the invoice's `created`.
    advance(c, clock, support.T0 + 777 + 10 * support.DAY)
    assert (
        _meta(_snapshot(monkeypatch, resources, "2026-04-10"), "stripe_invoice_snapshot")["pass"]
        == "full"
    )

    # A change to a final (paid) invoice: no list filter reveals it (here made in the
    # sandbox's state directly, standing for anything Stripe changes on a paid invoice).
    with stripe_sandbox.state.lock:
        stripe_sandbox.state.table("invoice")[paid.id]["billing_reason"] = "manual"

    def reason(day: str) -> str:
        rows = query(
            billing_db_url,
            "SELECT billing_reason FROM stripe_invoice_snapshots WHERE snapshot_date = %s "
            "AND invoice_id = %s",
            (date.fromisoformat(day), paid.id),
        )
        return str(rows[0]["billing_reason"])

    for day in ("2026-04-11", "2026-04-16"):  # 1 and 6 days after the full pass
        meta = _meta(_snapshot(monkeypatch, resources, day), "stripe_invoice_snapshot")
        assert meta["pass"] == "incremental" and meta["last_full_pass"] == "2026-04-10"
        assert reason(day) == "subscription_create"  # carried: the incremental pass misses it
    weekly = _meta(_snapshot(monkeypatch, resources, "2026-04-17"), "stripe_invoice_snapshot")
    assert weekly["pass"] == "full" and "2026-04-10" in weekly["pass_reason"]
    assert reason("2026-04-17") == "manual"
    _assert_matches_a_full_listing(c, billing_db_url, "2026-04-17")
    # And on demand, whatever the schedule: the next incremental day counts from 04-17.
    asked = _snapshot(monkeypatch, resources, "2026-04-18", full_pass=True)
    assert _meta(asked, "stripe_invoice_snapshot")["pass"] == "full"
    passes = query(
        billing_db_url,
        "SELECT kind, snapshot_date, mode, full_pass_date FROM stripe_snapshot_passes "
        "WHERE kind = 'invoices' ORDER BY snapshot_date",
    )
    assert [(p["mode"], p["full_pass_date"].isoformat()) for p in passes] == [
        ("full", "2026-04-10"),
        ("incremental", "2026-04-10"),
        ("incremental", "2026-04-10"),
        ("full", "2026-04-17"),
        ("full", "2026-04-18"),
    ]


def test_a_new_test_clock_or_a_missing_snapshot_forces_a_full_pass(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = (stripe_sandbox.url, billing_db_url)
    support.tenant(c, billing_db_url, "t-one", frozen_time=support.T0 + 3 * support.DAY)
    _snapshot(monkeypatch, resources, "2026-05-01")
    # A tenant on a clock frozen *before* every clock seen so far: its invoice's `created` is
    # older than any frontier, so only a full pass can find it.
    _, _, _ = support.tenant(c, billing_db_url, "t-late", frozen_time=support.T0 - 40 * support.DAY)
    meta = _meta(_snapshot(monkeypatch, resources, "2026-05-02"), "stripe_invoice_snapshot")
    assert meta["pass"] == "full" and "test clock" in meta["pass_reason"]
    _assert_matches_a_full_listing(c, billing_db_url, "2026-05-02")
    # The previous day's rows lost (a restore, a manual delete): nothing to carry from.
    for table in ("stripe_invoice_snapshots", "stripe_invoice_line_snapshots"):
        with psycopg.connect(billing_db_url) as conn:
            conn.execute(f"DELETE FROM {table} WHERE snapshot_date = '2026-05-02'")
    meta = _meta(_snapshot(monkeypatch, resources, "2026-05-03"), "stripe_invoice_snapshot")
    assert meta["pass"] == "full" and "missing" in meta["pass_reason"]
    _assert_matches_a_full_listing(c, billing_db_url, "2026-05-03")
