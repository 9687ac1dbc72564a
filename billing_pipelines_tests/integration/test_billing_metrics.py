"""The receiver's metrics show billing state written by other processes, read from Postgres."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from billing_sandbox.services import free_port
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from billing_pipelines.webhooks.app import ReceiverConfig, create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(database_url: str) -> Samples:
    """One scrape of the real receiver app's registry (what its metrics listener serves)."""
    app = create_app(ReceiverConfig(database_url=database_url, secrets=["whsec_metrics"]))
    text = generate_latest(app.state.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@pytest.mark.parametrize("seed", [3, 11])
def test_metrics_read_every_process_work_from_the_database(
    fresh_database_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    webhook_statuses = [
        rng.choice(["pending", "processing", "processed", "ignored", "failed", "dead"])
        for _ in range(rng.randint(20, 60))
    ]
    types = ["customer.subscription.updated", "invoice.payment_failed", "invoice.payment_succeeded"]
    events = [(status, rng.choice(types), rng.randint(1, 4)) for status in webhook_statuses]
    # The oldest due row waits `wait` seconds; others are due later or not yet due.
    wait = rng.randint(600, 7200)
    outbox = [rng.choice(["pending", "sending", "sent", "failed", "dead"]) for _ in range(17)]
    ledger = [
        rng.choice(["pending", "delivered", "failed", "superseded", "out_of_window"])
        for _ in range(rng.randint(10, 30))
    ]
    newest_delivered = date(2026, 3, 1) + timedelta(days=rng.randint(0, 200))
    steps = [(f"in_{i}", s) for i in range(rng.randint(3, 9)) for s in range(1, rng.randint(2, 5))]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        due_at: list[datetime] = []
        for i, (status, event_type, attempt) in enumerate(events):
            # Due rows: the first waiting one is the oldest (now - wait), the rest are younger.
            waiting = status in ("pending", "failed")
            due = now - timedelta(seconds=wait if not due_at else rng.randint(0, wait - 1))
            next_attempt = due if waiting else now + timedelta(hours=1)
            if waiting:
                due_at.append(due)
            payload = {
                "id": f"evt_{i}",
                "type": event_type,
                "data": {"object": {"object": "invoice", "attempt_count": attempt}},
            }
            conn.execute(
                "INSERT INTO webhook_events (event_id, event_type, payload, status, "
                "next_attempt_at) VALUES (%s, %s, %s, %s, %s)",
                (f"evt_{i}", event_type, json.dumps(payload), status, next_attempt),
            )
        for i, status in enumerate(outbox):
            conn.execute(
                "INSERT INTO notification_outbox (dedup_key, template, recipient, subject, body,"
                " status, next_attempt_at) VALUES (%s, 't', 'a@example.com', 's', 'b', %s, %s)",
                (f"k{i}", status, now + timedelta(hours=1)),
            )
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan) VALUES ('t1', 'T', 't@x', 'pro')"
        )
        for i, status in enumerate(ledger):
            day = newest_delivered - timedelta(days=i)
            conn.execute(
                "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, "
                "value_version, identifier, stripe_customer_id, meter_event_name, status) "
                "VALUES ('t1', 'queries', %s, 5, 1, %s, 'cus_1', 'rag_api_queries', %s)",
                (day, f"id{i}", status),
            )
        if "delivered" not in ledger:
            conn.execute(
                "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, "
                "value_version, identifier, stripe_customer_id, meter_event_name, status) "
                "VALUES ('t1', 'queries', %s, 5, 2, 'idx', 'cus_1', 'rag_api_queries', "
                "'delivered')",
                (newest_delivered,),
            )
            ledger.append("delivered")
        actions = {1: "reminder", 2: "warning", 3: "final_warning", 4: "suspend"}
        for invoice, step in steps:
            conn.execute(
                "INSERT INTO dunning_actions (invoice_id, tenant_id, step, action) "
                "VALUES (%s, 't1', %s, %s)",
                (invoice, step, actions[step]),
            )
        open_due = {"usd": 0, "eur": 0}
        for i in range(6):
            status = "open" if i % 3 else "resolved"
            currency = "usd" if i % 2 else "eur"
            amount = 1000 * (i + 1) + seed
            if status == "open":
                open_due[currency] += amount
            conn.execute(
                "INSERT INTO dunning_cases (invoice_id, tenant_id, status, attempt_count, "
                "amount_due, currency, first_failed_at, resolution) "
                "VALUES (%s, 't1', %s, 1, %s, %s, now(), %s)",
                (f"in_c{i}", status, amount, currency, "paid" if status == "resolved" else None),
            )

    samples = _scrape(fresh_database_url)

    assert _value(samples, "billing_metrics_database_up") == 1
    statuses = Counter(webhook_statuses)
    for status in ("pending", "processing", "processed", "ignored", "failed", "dead"):
        assert (
            _value(samples, "billing_queue_rows", queue="webhook_events", status=status)
            == (statuses[status])
        )
    depth = statuses["pending"] + statuses["processing"] + statuses["failed"]
    assert _value(samples, "billing_queue_depth", queue="webhook_events") == depth
    assert _value(samples, "billing_queue_dead_rows", queue="webhook_events") == statuses["dead"]
    oldest = _value(samples, "billing_queue_oldest_due_age_seconds", queue="webhook_events")
    if due_at:
        # Seconds pass between the insert and the scrape; never fewer than `wait`.
        assert wait <= oldest < wait + 120
    else:
        assert oldest == 0
    outbox_counts = Counter(outbox)
    assert _value(samples, "billing_queue_depth", queue="email_outbox") == (
        outbox_counts["pending"] + outbox_counts["sending"] + outbox_counts["failed"]
    )
    assert _value(samples, "billing_queue_dead_rows", queue="email_outbox") == outbox_counts["dead"]
    assert _value(samples, "billing_queue_depth", queue="chat_alerts") == 0

    finished = Counter((t, s) for s, t, _ in events if s in ("processed", "ignored", "dead"))
    for (event_type, status), count in finished.items():
        assert (
            _value(
                samples,
                "billing_webhook_events_finished_total",
                event_type=event_type,
                outcome=status,
            )
            == count
        )
    exported = sum(
        v for (n, _), v in samples.items() if n == "billing_webhook_events_finished_total"
    )
    assert exported == sum(finished.values())

    # Payments: every stored attempt event, whatever its queue status, by outcome and attempt.
    for event_type, outcome in (
        ("invoice.payment_succeeded", "succeeded"),
        ("invoice.payment_failed", "failed"),
    ):
        first = sum(1 for _, t, a in events if t == event_type and a == 1)
        retry = sum(1 for _, t, a in events if t == event_type and a > 1)
        assert (
            _value(samples, "billing_payment_attempts_total", outcome=outcome, attempt="first")
            == first
        )
        assert (
            _value(samples, "billing_payment_attempts_total", outcome=outcome, attempt="retry")
            == retry
        )

    by_step = Counter(step for _, step in steps)
    for step, executed in by_step.items():
        assert (
            _value(samples, "billing_dunning_steps_total", step=str(step), action=actions[step])
            == executed
        )
    assert _value(samples, "billing_dunning_cases", status="open", resolution="") == 4
    assert _value(samples, "billing_dunning_cases", status="resolved", resolution="paid") == 2
    for currency, amount_due in open_due.items():
        assert (
            _value(samples, "billing_dunning_open_amount_due_cents", currency=currency)
            == amount_due
        )

    ledger_counts = Counter(ledger)
    for status in ("delivered", "superseded", "out_of_window"):
        assert (
            _value(samples, "billing_meter_reports_total", status=status) == ledger_counts[status]
        )
    for status in ("pending", "failed"):
        assert _value(samples, "billing_meter_reports_open", status=status) == ledger_counts[status]
    newest_day = max(
        newest_delivered - timedelta(days=i) for i, s in enumerate(ledger) if s == "delivered"
    )
    end_of_day = datetime(
        newest_day.year, newest_day.month, newest_day.day, tzinfo=UTC
    ) + timedelta(days=1)
    assert _value(samples, "billing_meter_delivered_through_timestamp_seconds") == (
        end_of_day.timestamp()
    )
    # The receiver's own metrics are still served beside them.
    assert any(name.startswith("billing_webhook_ack_seconds") for name, _ in samples) or any(
        name == "billing_webhook_events_duplicate_total" for name, _ in samples
    )


def test_metrics_say_the_database_is_down_instead_of_failing_the_scrape() -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/billing"
    samples = _scrape(url)
    assert _value(samples, "billing_metrics_database_up") == 0
    assert not any(name.startswith("billing_queue") for name, _ in samples)
    assert ("billing_webhook_events_duplicate_total", ()) in samples
