"""A webhook whose processing kills its run every time ends `dead` with an alert.

Before, such a row was taken over after each lease and re-claimed forever, never reaching
`dead`. Real parts: the sandbox, the receiver, PostgreSQL and the project's sensor and job.
"""

from __future__ import annotations

from typing import Any

import pytest

from billing_pipelines.lib.webhooks import handlers as webhook_handlers
from billing_pipelines_tests.support import SimulatedCrash
from billing_pipelines_tests.webhook_harness import Harness, query

WEBHOOKS = ("webhook_events_sensor",)


def _expire_leases(h: Harness) -> None:
    query(
        h.db_url,
        # Eleven minutes pass: the 10-minute lease runs out, dispatches are as old.
        "UPDATE webhook_events SET claimed_at = claimed_at - interval '11 minutes', "
        "dispatched_at = dispatched_at - interval '11 minutes' RETURNING id",
    )


@pytest.mark.parametrize("max_attempts", [2, 3])
def test_a_row_that_crashes_its_run_every_time_is_dead_lettered_with_an_alert(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, max_attempts: int
) -> None:
    h = harness
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", str(max_attempts))
    real = webhook_handlers.handle
    crashes: list[str] = []

    def poison(ctx: Any, payload: Any) -> Any:
        if payload["type"] == "customer.subscription.created":
            crashes.append(payload["id"])
            raise SimulatedCrash  # the process dies: no failure is ever recorded
        return real(ctx, payload)

    monkeypatch.setattr(webhook_handlers, "handle", poison)
    h.tenant("acme")
    h.drain()
    h.pump(only=WEBHOOKS)
    [poisoned] = query(
        h.db_url,
        "SELECT id, event_id FROM webhook_events "
        "WHERE event_type = 'customer.subscription.created'",
    )
    for attempt in range(1, max_attempts + 1):
        row = query(h.db_url, "SELECT * FROM webhook_events WHERE id = %s", (poisoned["id"],))[0]
        assert (row["status"], row["attempts"]) == ("processing", attempt)
        assert h.pump(only=WEBHOOKS) == 0  # inside its lease: nobody touches it
        _expire_leases(h)
        assert h.pump(only=WEBHOOKS) == 1  # taken over by a new run
    assert len(crashes) == max_attempts
    assert h.runs[-1][2] is False  # the burying run fails, so the failure alerts too
    row = query(h.db_url, "SELECT * FROM webhook_events WHERE id = %s", (poisoned["id"],))[0]
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("dead", max_attempts, None)
    assert row["last_error"].startswith(f"attempts used up: {max_attempts} of {max_attempts}")
    [alert] = query(h.db_url, "SELECT * FROM alerts WHERE kind = 'webhook_dead_letter'")
    assert alert["dedup_key"] == f"webhook_dead:{poisoned['event_id']}"
    assert "runs that never finished" in alert["summary"]
    # The events queued behind it in the same batches were each handled once, on their own
    # attempt: the crashes spent none of theirs.
    others = query(
        h.db_url, "SELECT status, attempts FROM webhook_events WHERE id <> %s", (poisoned["id"],)
    )
    assert others and {
        (r["status"] in ("processed", "ignored"), r["attempts"]) for r in others
    } == {(True, 1)}
    # Dead stays dead: however long we wait, it is never claimed again.
    query(h.db_url, "UPDATE webhook_events SET next_attempt_at = now() - interval '1 day'")
    _expire_leases(h)
    assert h.pump(only=WEBHOOKS) == 0
    assert len(crashes) == max_attempts
