"""A failing card walks the whole ladder once, in order; a new card and a paid retry reactivate.

Real parts end to end: the sandbox's signed deliveries -> the receiver -> the queue -> the real
sensors -> jobs -> tenant flags, audit log and emails delivered to a real SMTP server.
"""

from __future__ import annotations

from decimal import Decimal

from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import DAY, T0, Harness, query

FEB1 = T0 + 31 * DAY
FIRST_FAIL = FEB1 + 3600  # the invoice finalizes an hour after the period and is charged


def _steps(h: Harness, invoice_id: str) -> list[tuple[int, str]]:
    rows = query(
        h.db_url,
        "SELECT step, action FROM dunning_actions WHERE invoice_id = %s ORDER BY executed_at, id",
        (invoice_id,),
    )
    return [(r["step"], r["action"]) for r in rows]


def test_failing_card_walks_the_ladder_then_payment_reactivates(harness: Harness) -> None:
    h = harness
    c = h.client
    customer, subscription, clock = h.tenant("acme", metered=True)
    h.settle()
    row = h.tenant_row("acme")
    assert (row["billing_status"], row["stripe_subscription_id"]) == ("active", subscription.id)

    # Usage over the included tier, then the card starts failing.
    advance(c, clock, T0 + 25 * DAY)
    c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "timestamp": T0 + 20 * DAY,
            "payload": {"stripe_customer_id": customer.id, "value": "125000"},
        }
    )
    bad = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": bad.id}})

    expected = {
        1: ("reminder", True, Decimal("1.00"), "past_due"),
        2: ("warning", True, Decimal("1.00"), "past_due"),
        3: ("final_warning", True, Decimal("0.50"), "past_due"),
        4: ("suspend", False, Decimal("0.50"), "suspended"),
    }
    at = {1: FIRST_FAIL + 60, 2: FIRST_FAIL + 3 * DAY + 60, 3: FIRST_FAIL + 5 * DAY + 60}
    at[4] = FIRST_FAIL + 7 * DAY + 60
    invoice_id = None
    for step in (1, 2, 3, 4):
        advance(c, clock, at[step])
        h.settle()
        invoice = c.v1.invoices.list({"customer": customer.id, "status": "open"}).data[0]
        invoice_id = invoice.id
        assert invoice.attempt_count == step
        action, access, multiplier, status = expected[step]
        assert _steps(h, invoice_id)[-1] == (step, action)
        row = h.tenant_row("acme")
        assert (row["api_access_enabled"], row["rate_limit_multiplier"]) == (access, multiplier)
        assert row["billing_status"] == status
        assert row["payment_failures"] == step
    assert invoice_id is not None
    assert _steps(h, invoice_id) == [
        (1, "reminder"),
        (2, "warning"),
        (3, "final_warning"),
        (4, "suspend"),
    ]
    mails = h.emails("acme@tenant.example")
    subjects = [m["Subject"] for m in mails]
    assert len(subjects) == 4, subjects
    assert subjects[0].startswith("Payment failed")
    # Dates come from Stripe's own next attempt (the account's retry schedule), never from a
    # day count of ours: at step 2 two attempts remain, at step 3 the next one decides.
    assert subjects[1].endswith("API access will be suspended if payment keeps failing")
    warning = " ".join(mails[1].get_content().split())
    assert "suspended after 2 more failed attempt(s)" in warning
    assert "We will retry on February 6, 2026" in warning  # first failure + 5 days
    final = " ".join(mails[2].get_content().split())
    assert "If the next attempt on February 8, 2026 fails, API access will be suspended" in final
    assert subjects[2].startswith("Final notice") and subjects[3] == "Your API access is suspended"
    for mail in mails:
        body = mail.get_content()
        assert "$119.00" in body  # $99 base + $20 overage
        assert "You used 125,000 queries: 25,000 over the 100,000 included = $20.00" in body

    # The customer adds a working card and the retry succeeds: one reactivation.
    good = c.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": good.id}})
    assert c.v1.invoices.pay(invoice_id).status == "paid"
    h.settle()
    row = h.tenant_row("acme")
    assert (row["billing_status"], row["api_access_enabled"], row["rate_limit_multiplier"]) == (
        "active",
        True,
        Decimal("1.00"),
    )
    assert row["payment_failures"] == 0
    assert [m["Subject"] for m in h.emails("acme@tenant.example")][4:] == [
        "Payment received: full API access restored"
    ]
    case = query(h.db_url, "SELECT status, resolution FROM dunning_cases")
    assert case == [{"status": "resolved", "resolution": "paid"}]

    # Every tenant change is audited with who, what, why, before and after.
    audit = query(
        h.db_url,
        "SELECT actor, action, reason, before, after FROM audit_log "
        "WHERE entity_type = 'tenant' ORDER BY id",
    )
    actions = [a["action"] for a in audit]
    assert "tenant.rate_limit" in actions and "tenant.suspend" in actions
    assert actions[-1] == "tenant.reactivate"
    suspend = next(a for a in audit if a["action"] == "tenant.suspend")
    assert suspend["before"]["api_access_enabled"] is True
    assert suspend["after"]["api_access_enabled"] is False
    assert suspend["actor"].startswith(("webhook evt_", "dunning in_"))
    assert "unpaid" in suspend["reason"] or "dunning step 4" in suspend["reason"]

    # Re-running everything changes nothing: no new runs, no new email.
    sent = len(h.smtp.messages)
    assert h.pump() == 0
    assert len(h.smtp.messages) == sent
    assert all(ok for _, _, ok in h.runs), [r for r in h.runs if not r[2]]
