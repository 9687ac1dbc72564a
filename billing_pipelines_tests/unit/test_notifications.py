"""Money in plain words, every template renders with its facts, SMTP_URL parsing, queue keys."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.notifications.emails import OutboxRow
from billing_pipelines.lib.pg import queue as leased_queue
from billing_pipelines.lib.webhooks import queue as webhook_queue


def test_usage_explanation_in_plain_words() -> None:
    pro = load_catalog().plan("pro")
    assert (
        notifications.usage_explanation(pro, 125_000)
        == "You used 125,000 queries: 25,000 over the 100,000 included = $20.00"
    )
    starter = load_catalog().plan("starter")
    assert notifications.usage_explanation(starter, 10_001).endswith("= $0.00")  # 0.1 cent
    assert notifications.usage_explanation(starter, 10_005).endswith("= $0.01")  # half up
    assert "no usage charge" in notifications.usage_explanation(pro, 100_000)


@pytest.mark.parametrize(
    ("cents", "currency", "text"),
    [
        (11900, "usd", "$119.00"),
        (Decimal("2000.5"), "usd", "$20.01"),
        (123456789, "usd", "$1,234,567.89"),
        (500, "chf", "5.00 CHF"),
        (-250, "eur", "-€2.50"),
    ],
)
def test_format_money(cents: int | Decimal, currency: str, text: str) -> None:
    assert notifications.format_money(cents, currency) == text


DUNNING_CONTEXT = {
    "tenant_name": "Acme",
    "invoice_number": "ABCD-0001",
    "invoice_url": "https://invoice.stripe.com/i/x",
    "amount_due": "$119.00",
    "attempt_count": 4,
    "next_attempt": "January 20, 2026",
    "suspension_date": "January 22, 2026",
    "rate_limit_percent": 50,
    "api_access_enabled": False,
    "usage_explanation": "You used 125,000 queries: 25,000 over the 100,000 included = $20.00",
}


@pytest.mark.parametrize(
    "template", ["payment_reminder", "payment_warning", "payment_final_warning", "suspended"]
)
def test_dunning_templates_state_amount_and_usage(template: str) -> None:
    email = notifications.render(template, DUNNING_CONTEXT)
    assert "$119.00" in email.body and "ABCD-0001" in email.body
    assert "25,000 over the 100,000 included = $20.00" in email.body
    assert "\n" not in email.subject and email.subject
    if template == "payment_warning":
        assert "January 22, 2026" in email.subject + email.body
    if template == "payment_final_warning":
        assert "50%" in email.body
        assert "next attempt on January 22, 2026 fails" in " ".join(email.body.split())


@pytest.mark.parametrize(
    "template", ["payment_reminder", "payment_warning", "payment_final_warning"]
)
def test_dunning_emails_never_promise_a_retry_stripe_will_not_make(template: str) -> None:
    context = {
        **DUNNING_CONTEXT,
        "next_attempt": "",
        "suspension_date": "",
        "attempts_before_suspension": 2,
    }
    email = notifications.render(template, context)
    text = " ".join(email.body.split())
    assert "We will not retry this payment automatically" in text
    assert "retry on" not in text and "retry automatically on" not in text
    if template == "payment_warning":
        assert email.subject.endswith("suspended if payment keeps failing")
        assert "after 2 more failed attempt(s)" in text


def test_other_templates_render() -> None:
    trial = notifications.render(
        "trial_ending",
        {
            "tenant_name": "Acme",
            "plan_name": "Pro",
            "trial_end": "January 15, 2026",
            "plan_price": "$99.00",
            "included_queries": "100,000",
            "overage_price": "0.08¢",
            "invoice_url": None,
        },
    )
    assert "January 15, 2026" in trial.subject and "payment method" in trial.body
    back = notifications.render(
        "reactivated",
        {"tenant_name": "A", "invoice_number": "N-1", "invoice_url": None, "amount_paid": "$1.00"},
    )
    assert "restored" in back.body
    alert = notifications.render(
        "ops_alert",
        {"summary": "S", "kind": "k", "severity": "critical", "details": {"event": "evt_1"}},
    )
    assert alert.subject == "[billing alert] S" and "event: evt_1" in alert.body


def test_trial_email_states_the_yearly_price_of_an_annual_tenant() -> None:
    context = {
        "tenant_name": "Acme",
        "plan_name": "Pro",
        "trial_end": "January 15, 2026",
        "plan_price": "$990.00",
        "price_period": "year",
        "included_queries": "100,000",
        "overage_price": "0.08¢",
        "invoice_url": None,
    }
    annual = notifications.render("trial_ending", context)
    assert "the plan costs $990.00 per year including 100,000" in " ".join(annual.body.split())
    monthly = notifications.render("trial_ending", {**context, "price_period": "month"})
    assert "per month including" in " ".join(monthly.body.split())


def test_missing_context_is_an_error_not_a_blank() -> None:
    with pytest.raises(Exception, match="undefined"):
        notifications.render("suspended", {"tenant_name": "A"})
    with pytest.raises(ValueError, match="unknown notification template"):
        notifications.render("nope", {})


def test_smtp_url_parsing() -> None:
    t = notifications.parse_smtp_url("smtp://user%40x:p%3Ass@mail.example:587?starttls=true")
    assert (t.host, t.port, t.username, t.password, t.starttls) == (
        "mail.example",
        587,
        "user@x",
        "p:ss",
        True,
    )
    assert notifications.parse_smtp_url("smtps://mail.example").port == 465
    with pytest.raises(BillingConfigError, match="SMTP_URL") as err:
        notifications.parse_smtp_url("http://u:hunter2@x")
    assert "hunter2" not in str(err.value)


def test_message_id_is_stable_per_dedup_key() -> None:
    row = OutboxRow(1, "dunning:in_1:2", "a@b.c", "S", "B\n", 1)
    first = notifications.build_message(row, "Billing <billing@example.com>")
    again = notifications.build_message(row, "Billing <billing@example.com>")
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"].endswith("@example.com>")


def test_parse_event_and_run_keys() -> None:
    body = b'{"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1767225600,'
    body += b' "data": {"object": {"id": "in_1"}}, "livemode": false}'
    event = webhook_queue.parse_event(body)
    assert (event.event_id, event.event_type, event.object_id) == ("evt_1", "invoice.paid", "in_1")
    for bad in (b"{", b"[]", b'{"id": "x", "type": "t"}', b'{"id": "evt_1"}', b"\xff"):
        with pytest.raises(webhook_queue.MalformedEventError):
            webhook_queue.parse_event(bad)
    d = leased_queue.Dispatched
    key = leased_queue.batch_run_key("webhook_events", [d(3, 1), d(1, 1)])
    assert key.startswith("webhook_events:1-3:2:")
    assert key == leased_queue.batch_run_key("webhook_events", [d(1, 1), d(3, 1)])
    assert key != leased_queue.batch_run_key("webhook_events", [d(1, 2), d(3, 1)])


def test_backoff_grows_and_caps() -> None:
    policy = leased_queue.RetryPolicy(base_seconds=30, max_seconds=600)
    assert [policy.backoff_seconds(n) for n in range(0, 7)] == [0, 30, 60, 120, 240, 480, 600]
