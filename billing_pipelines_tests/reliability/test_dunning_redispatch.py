"""A dunning step whose runs keep failing (a Stripe outage) is asked for again until it is done.

On real parts (the Stripe sandbox over HTTP, the receiver, PostgreSQL, SMTP, the project's
sensors and jobs). Each failed run below stands for a run that failed with all its retries: the
harness, like the daemon, never launches a run_key twice, so without a new dispatch generation
the step would never run again.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing_pipelines.lib.dunning import steps as dunning
from billing_pipelines_tests.support import SimulatedCrash, advance
from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixtures
    DAY,
    T0,
    Harness,
    billing_db_url,
    harness,
    query,
    smtp_server,
)

FIRST_FAIL = T0 + 31 * DAY + 3600  # the January invoice finalizes an hour after the period
THIRD_ATTEMPT = FIRST_FAIL + 5 * DAY + 60  # Stripe's default schedule: +3 d, +5 d, +7 d
DUNNING = ("dunning_sensor",)
# The documented wait before a still-due step is asked for again: 15 min, then 30, then 60.
WAITS = (15 * 60, 30 * 60, 60 * 60)


def _invoice_at_third_failed_attempt(h: Harness) -> str:
    c = h.client
    customer, _, clock = h.tenant("acme")
    h.settle()
    bad = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": bad.id}})
    advance(c, clock, THIRD_ATTEMPT)
    h.drain()
    invoice = c.v1.invoices.list({"customer": customer.id, "status": "open"}).data[0]
    assert invoice.attempt_count == 3
    return str(invoice.id)


def _age_dispatch(h: Harness, seconds: int) -> None:
    """Pretend the last dispatch happened `seconds` earlier than it did."""
    with_conn = query(
        h.db_url,
        "UPDATE dunning_dispatches SET dispatched_at = dispatched_at - make_interval(secs => %s) "
        "RETURNING step",
        (seconds,),
    )
    assert with_conn


def test_step_failing_three_runs_then_succeeding_is_recorded_once(
    harness: Harness,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness
    invoice_id = _invoice_at_third_failed_attempt(h)
    h.pump(only=("webhook_events_sensor",))
    real = dunning.execute_step
    tries: list[int] = []

    def stripe_down_three_times(ctx: Any, invoice: str, step: int) -> Any:
        tries.append(step)
        if len(tries) <= 3:
            raise SimulatedCrash  # the run fails; nothing of the step is committed
        return real(ctx, invoice, step)

    monkeypatch.setattr(dunning, "execute_step", stripe_down_three_times)
    key = f"dunning:{invoice_id}:3"
    for generation, wait in enumerate(WAITS, start=1):
        assert h.pump(only=DUNNING) == 1
        assert h.runs[-1] == ("dunning_step_job", f"{key}:{generation}", False)
        assert query(h.db_url, "SELECT step FROM dunning_actions") == []
        # Not asked again before its wait is over (the same run_key: the daemon skips it)...
        _age_dispatch(h, wait - 60)
        assert h.pump(only=DUNNING) == 0
        # ... and asked again once it is.
        _age_dispatch(h, 60)
    assert h.pump(only=DUNNING) == 1
    assert h.runs[-1] == ("dunning_step_job", f"{key}:4", True)
    assert tries == [3, 3, 3, 3]

    # Recorded once; never asked for again, however long we wait.
    _age_dispatch(h, 7 * 3600)
    assert h.pump(only=DUNNING) == 0
    actions = query(
        h.db_url,
        "SELECT step, action FROM dunning_actions WHERE invoice_id = %s ORDER BY step",
        (invoice_id,),
    )
    assert actions == [
        {"step": 1, "action": "skipped"},
        {"step": 2, "action": "skipped"},
        {"step": 3, "action": "final_warning"},
    ]
    assert query(h.db_url, "SELECT dedup_key FROM notification_outbox") == [{"dedup_key": key}]
    row = h.tenant_row("acme")
    assert (row["api_access_enabled"], row["rate_limit_multiplier"]) == (True, Decimal("0.50"))
