"""Webhook run knobs: op config fields in the launchpad, unset meaning the environment setting."""

from __future__ import annotations

from typing import Any, cast

import pydantic
import pytest

from billing_pipelines.defs.webhooks.context import handler_setup
from billing_pipelines.defs.webhooks.jobs import (
    WebhookBatchConfig,
    process_webhook_events,
    retry_policy,
)
from billing_pipelines.lib.stripe import client as stripe_api


def test_knobs_are_optional_launchpad_fields_that_default_to_unset() -> None:
    schema = process_webhook_events.config_schema
    assert schema is not None
    fields = cast(Any, schema.config_type).fields  # the launchpad's view: named fields
    assert fields["row_ids"].is_required
    for name in ("max_attempts", "alert_email"):
        assert not fields[name].is_required
        assert fields[name].default_value is None  # nothing read when the definitions load
        assert fields[name].description
    assert WebhookBatchConfig(row_ids=[1]).max_attempts is None
    with pytest.raises(pydantic.ValidationError):
        WebhookBatchConfig(row_ids=[1], max_attempts=0)


def test_unset_knobs_read_the_environment_when_the_run_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("ALERT_EMAIL", "oncall@example.com")
    assert retry_policy(None).max_attempts == 3
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "4")  # changed after import: still honoured
    assert retry_policy(None).max_attempts == 4
    assert retry_policy(2).max_attempts == 2  # the run's config wins
    client = stripe_api.make_client("sk_test_knobs", api_base="http://127.0.0.1:9")
    assert handler_setup(client).alert_email == "oncall@example.com"
    assert handler_setup(client, alert_email="ops@example.com").alert_email == "ops@example.com"
