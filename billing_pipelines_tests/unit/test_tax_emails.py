"""Emails that state an amount due state the invoice's tax (Stripe Tax), and only then."""

from __future__ import annotations

import pytest

from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.reconciliation.invoice_totals import billed_totals
from billing_pipelines_tests.unit.test_notifications import DUNNING_CONTEXT


def test_the_tax_sentence_names_total_tax_and_amount_before_tax() -> None:
    # 9,900 + 5 % TEST DATA tax = 495: 10,395 cents in all.
    text = notifications.tax_sentence(9900, 495, 10395, "usd", taxed=True)
    assert text == "The invoice total of $103.95 includes $4.95 tax on $99.00 before tax."
    # Automatic tax that charged nothing says so; an untaxed invoice says nothing.
    assert "includes $0.00 tax" in notifications.tax_sentence(9900, 0, 9900, taxed=True)
    assert notifications.tax_sentence(9900, 0, 9900, taxed=False) == ""


@pytest.mark.parametrize(
    "template", ["payment_reminder", "payment_warning", "payment_final_warning", "suspended"]
)
def test_dunning_emails_state_the_tax(template: str) -> None:
    note = notifications.tax_sentence(11900, 595, 12495, "usd", taxed=True)
    email = notifications.render(template, {**DUNNING_CONTEXT, "tax_note": note})
    assert "includes $5.95 tax on $119.00 before tax" in " ".join(email.body.split())
    untaxed = notifications.render(template, {**DUNNING_CONTEXT, "tax_note": ""})
    assert "tax" not in untaxed.body.replace("tax_", "")


def test_billed_totals_sum_finalized_invoices_per_currency() -> None:
    totals = billed_totals(
        [
            ("paid", "usd", 2900, 145, 3045),
            ("open", "usd", 1350, 68, 1418),
            ("draft", "usd", 5000, 250, 5250),  # may still change: not billed yet
            ("void", "usd", 100, 5, 105),
            ("paid", "eur", 9900, 0, 9900),
            ("uncollectible", "usd", 500, None, None),  # snapshotted before tax was recorded
        ]
    )
    usd = totals["usd"]
    assert (usd.invoices, usd.subtotal, usd.tax, usd.total) == (3, 4750, 213, 4963)
    assert usd.describe() == "subtotal $47.50, tax $2.13, total $49.63"
    assert (totals["eur"].subtotal, totals["eur"].tax, totals["eur"].total) == (9900, 0, 9900)
