"""The tenant-vs-Stripe diff as pure logic: every category, leaks only when served."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from billing_pipelines.lib.reconciliation import advice
from billing_pipelines.lib.reconciliation import diff as rec
from billing_pipelines.lib.stripe.snapshots import (
    CustomerSnapshot,
    InvoiceSnapshot,
    SubscriptionSnapshot,
)

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def sub(sid: str = "sub_1", customer: str = "cus_1", **kw: object) -> SubscriptionSnapshot:
    base = SubscriptionSnapshot(
        subscription_id=sid,
        customer_id=customer,
        status="active",
        plan="pro",
        price_ids=["price_base", "price_usage"],
        current_period_start=NOW - timedelta(days=3),
        current_period_end=NOW + timedelta(days=27),
        trial_end=None,
        trial_end_behavior=None,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        has_payment_method=True,
        latest_invoice_id="in_1",
        latest_invoice_status="paid",
        latest_invoice_attempt_count=1,
        created=NOW - timedelta(days=3),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def tenant(tid: str = "t1", customer: str | None = "cus_1", **kw: object) -> rec.TenantRow:
    base = rec.TenantRow(
        tenant_id=tid,
        plan="pro",
        stripe_customer_id=customer,
        stripe_subscription_id="sub_1" if customer == "cus_1" else None,
        billing_status="active",
        subscription_status="active",
        api_access_enabled=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def customer(cid: str = "cus_1") -> CustomerSnapshot:
    return CustomerSnapshot(cid, f"{cid}@x", None, True, NOW)


def invoice(**kw: object) -> InvoiceSnapshot:
    base = InvoiceSnapshot(
        invoice_id="in_9",
        customer_id="cus_1",
        subscription_id="sub_1",
        status="paid",
        billing_reason="subscription_cycle",
        number="N-1",
        currency="usd",
        amount_due=9900,
        amount_paid=9900,
        amount_remaining=0,
        attempt_count=1,
        attempted=True,
        period_start=NOW - timedelta(days=31),
        period_end=NOW - timedelta(days=1),
        created=NOW - timedelta(days=1),
        finalized_at=NOW - timedelta(hours=23),
        paid_at=NOW - timedelta(hours=23),
        automatically_finalizes_at=None,
        finalization_error=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def categories(result: rec.Diff) -> list[tuple[str, str | None, bool]]:
    return [(f.category, f.tenant_id or f.customer_id, f.revenue_leak) for f in result.findings]


def test_in_sync_has_no_findings() -> None:
    result = rec.diff([tenant()], [sub()], [customer()], [invoice()], as_of=NOW)
    assert result.findings == [] and result.mismatches == 0


def test_cancelled_in_stripe_but_served_is_a_leak_and_not_once_it_is_revoked() -> None:
    gone = sub(status="canceled", ended_at=NOW)
    served = rec.diff([tenant()], [gone], [customer()], [], as_of=NOW)
    assert categories(served) == [(rec.CANCELED_ACTIVE, "t1", True)]
    revoked = tenant(
        api_access_enabled=False, billing_status="canceled", subscription_status="canceled"
    )
    assert rec.diff([revoked], [gone], [customer()], [], as_of=NOW).findings == []


def test_plan_and_status_mismatches() -> None:
    result = rec.diff(
        [tenant(plan="starter", subscription_status="trialing")],
        [sub()],
        [customer()],
        [],
        as_of=NOW,
    )
    assert categories(result) == [
        (rec.STATUS_MISMATCH, "t1", False),
        (rec.PLAN_MISMATCH, "t1", False),
    ]


def test_tenant_without_subscription_and_customer_without_tenant() -> None:
    result = rec.diff([tenant("t2", customer=None)], [], [customer("cus_orphan")], [], as_of=NOW)
    assert categories(result) == [
        (rec.TENANT_WITHOUT_SUBSCRIPTION, "t2", False),
        (rec.CUSTOMER_WITHOUT_TENANT, "cus_orphan", False),
    ]
    assert result.mismatches == 1  # Stripe-only housekeeping is not a tenant mismatch


def test_subscription_found_by_customer_prefers_the_live_one() -> None:
    old = sub("sub_old", status="canceled", created=NOW - timedelta(days=60))
    new = sub("sub_new", created=NOW - timedelta(days=1))
    row = tenant(stripe_subscription_id=None)
    assert rec.diff([row], [old, new], [customer()], [], as_of=NOW).findings == []


def test_trial_ended_without_payment_method() -> None:
    ended = sub(status="past_due", trial_end=NOW - timedelta(days=1), has_payment_method=False)
    result = rec.diff(
        [tenant(subscription_status="trialing")], [ended], [customer()], [], as_of=NOW
    )
    assert (rec.TRIAL_ENDED_NO_PAYMENT_METHOD, "t1", True) in categories(result)
    trialing = sub(status="trialing", trial_end=NOW + timedelta(days=2), has_payment_method=False)
    assert (
        rec.diff(
            [tenant(subscription_status="trialing")], [trialing], [customer()], [], as_of=NOW
        ).findings
        == []
    )


def test_stuck_draft_and_incomplete_subscription() -> None:
    stuck = invoice(status="draft", automatically_finalizes_at=NOW - timedelta(hours=2))
    fresh = invoice(
        invoice_id="in_new", status="draft", automatically_finalizes_at=NOW + timedelta(minutes=30)
    )
    failed = invoice(invoice_id="in_err", status="draft", finalization_error="tax location invalid")
    incomplete = sub(status="incomplete", latest_invoice_status="open")
    result = rec.diff(
        [tenant(subscription_status="incomplete")],
        [incomplete],
        [customer()],
        [stuck, fresh, failed],
        as_of=NOW,
    )
    assert categories(result) == [
        (rec.SUBSCRIPTION_INCOMPLETE, "t1", True),
        (rec.INVOICE_STUCK_IN_DRAFT, "t1", True),
        (rec.INVOICE_STUCK_IN_DRAFT, "t1", True),
    ]
    assert "tax location invalid" in result.findings[2].detail


def test_remediation_targets_group_categories_per_tenant() -> None:
    findings = [
        rec.Finding(rec.STATUS_MISMATCH, False, "", tenant_id="t1", subscription_id="sub_1"),
        rec.Finding(
            rec.TRIAL_ENDED_NO_PAYMENT_METHOD, True, "", tenant_id="t1", subscription_id="sub_1"
        ),
        rec.Finding(rec.CUSTOMER_WITHOUT_TENANT, False, "", customer_id="cus_x"),
        rec.Finding(rec.TENANT_WITHOUT_SUBSCRIPTION, False, "", tenant_id="t2"),
    ]
    assert rec.remediation_targets(findings) == {
        "t1": ("sub_1", [rec.STATUS_MISMATCH, rec.TRIAL_ENDED_NO_PAYMENT_METHOD])
    }


def test_trial_ended_without_a_card_is_no_finding_once_both_sides_paused_it() -> None:
    paused = sub(status="paused", trial_end=NOW - timedelta(days=2), has_payment_method=False)
    agreed = tenant(billing_status="paused", subscription_status="paused", api_access_enabled=False)
    result = rec.diff([agreed], [paused], [customer()], [], as_of=NOW)
    assert result.findings == [] and result.mismatches == 0
    # Still served: a leak. Access off but the tenant row says trialing: a status mismatch.
    served = rec.diff(
        [replace(agreed, api_access_enabled=True)], [paused], [customer()], [], as_of=NOW
    )
    assert (rec.TRIAL_ENDED_NO_PAYMENT_METHOD, "t1", True) in categories(served)
    stale = rec.diff(
        [replace(agreed, subscription_status="trialing")], [paused], [customer()], [], as_of=NOW
    )
    assert categories(stale) == [(rec.STATUS_MISMATCH, "t1", False)]


def test_advice_names_who_and_the_next_step_per_category() -> None:
    assert advice.describe([]) is None
    gone = sub(status="canceled", ended_at=NOW)
    leaks = rec.diff(
        [tenant("t-b"), tenant("t-a", stripe_subscription_id="sub_1")],
        [gone],
        [customer()],
        [invoice(invoice_id="in_stuck", status="draft", finalization_error="tax")],
        as_of=NOW,
    ).findings
    text = advice.describe(leaks)
    assert text is not None
    assert "2 tenant(s) served although cancelled in Stripe (revenue leak): t-a, t-b." in text
    assert "launch subscription_remediation_job" in text
    assert "invoice(s) stuck in draft" in text and "finalize it" in text
    orphan = rec.diff([], [], [customer("cus_orphan")], [], as_of=NOW).findings
    assert "cus_orphan" in (advice.describe(orphan) or "")
    many = [rec.Finding(rec.PLAN_MISMATCH, False, "", tenant_id=f"t{i}") for i in range(10)]
    assert "t7 and 2 more" in (advice.describe(many) or "")


def test_a_cancellation_scheduled_by_cancel_at_is_on_the_stripe_side_of_a_finding():
    # An annual tenant's cancellation is scheduled with `cancel_at` (max_period_end), which
    # leaves `cancel_at_period_end` false: the instant itself must show.
    when = NOW + timedelta(days=200, seconds=17)
    result = rec.diff(
        [tenant(subscription_status="past_due"), tenant("t2", "cus_2", subscription_status="x")],
        [sub(cancel_at=when), sub("sub_2", "cus_2")],
        [customer(), customer("cus_2")],
        [],
        as_of=NOW,
    )
    by_tenant = {f.tenant_id: f.stripe_state for f in result.findings}
    assert (by_tenant["t1"] or {})["cancel_at"] == when.isoformat()
    assert (by_tenant["t1"] or {})["cancel_at_period_end"] is False
    assert (by_tenant["t2"] or {})["cancel_at"] is None
