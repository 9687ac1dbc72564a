"""Stripe-dependent sensors say in one sentence why they wait, instead of failing each tick."""

from __future__ import annotations

import dagster as dg
import pytest

from billing_pipelines.definitions import defs
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines_tests.webhook_harness import billing_db_url, query  # noqa: F401 - fixture


@pytest.mark.parametrize("sensor_name", ["webhook_events_sensor", "dunning_sensor"])
def test_a_missing_stripe_key_is_one_plain_skip_reason(
    billing_db_url: str,  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
    sensor_name: str,
) -> None:
    # Work is waiting: a queued webhook event that only Stripe can settle.
    query(
        billing_db_url,
        "INSERT INTO webhook_events (event_id, event_type, payload) "
        "VALUES ('evt_wait', 'invoice.paid', '{}'::jsonb)",
    )
    sensor = defs().resolve_sensor_def(sensor_name)
    resources = {"billing_db": BillingDatabase(url=billing_db_url)}
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=resources
    ) as ctx:
        result = sensor(ctx)
    assert isinstance(result, dg.SkipReason), result
    message = result.skip_message or ""
    assert message.startswith("waiting: STRIPE_API_KEY is not set")
    assert "\n" not in message and "Traceback" not in message

    # With the key back, the queued event is handed out again.
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_ready")
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=resources
    ) as ctx:
        ready = sensor(ctx)
    if sensor_name == "webhook_events_sensor":
        assert isinstance(ready, dg.SensorResult) and ready.run_requests
    else:
        assert isinstance(ready, dg.SkipReason) and ready.skip_message == "no dunning step due"
