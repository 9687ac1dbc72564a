"""Meter summary reads: a 429 waits and asks again; a period reads in one list by day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from billing_sandbox.stripe import run_in_thread

from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe import meters as stripe_meters


def test_day_total_survives_the_rate_limit() -> None:
    sandbox = run_in_thread(port=0, rate_limit=5.0)
    try:
        client = stripe_api.make_client(
            "sk_test_reads", api_base=sandbox.url, max_network_retries=0
        )
        meter = client.v1.billing.meters.create(
            {"display_name": "q", "event_name": "q", "default_aggregation": {"formula": "sum"}}
        )
        customer = client.v1.customers.create({})
        # Six times the limit in one burst: without the retry the SDK raises RateLimitError.
        totals = [
            stripe_meters.day_total(client, str(meter.id), str(customer.id), date(2026, 11, 20))
            for _ in range(30)
        ]
        assert totals == [0] * 30
    finally:
        sandbox.stop()


def test_daily_totals_in_one_list_equal_the_day_by_day_reads() -> None:
    sandbox = run_in_thread(port=0)
    try:
        client = stripe_api.make_client(
            "sk_test_reads", api_base=sandbox.url, max_network_retries=0
        )
        meter = client.v1.billing.meters.create(
            {
                "display_name": "q",
                "event_name": "q",
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
                "value_settings": {"event_payload_key": "value"},
            }
        )
        customer = str(client.v1.customers.create({}).id)
        now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
        days = [(now - timedelta(days=back)).date() for back in range(5, 0, -1)]
        for index, day in enumerate(days):
            if index == 2:
                continue  # a day without usage reads as 0 both ways
            noon = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
            for value in (10 * (index + 1), 1):
                client.v1.billing.meter_events.create(
                    {
                        "event_name": "q",
                        "payload": {"stripe_customer_id": customer, "value": str(value)},
                        "timestamp": int(noon.timestamp()),
                    }
                )
        one_list = stripe_meters.daily_totals(client, str(meter.id), customer, days[0], days[-1])
        by_day = {d: stripe_meters.day_total(client, str(meter.id), customer, d) for d in days}
        assert by_day == {d: one_list.get(d, Decimal(0)) for d in days}
        assert [by_day[d] for d in days] == [11, 21, 0, 41, 51]
    finally:
        sandbox.stop()
