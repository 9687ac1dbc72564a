"""The ladder as data, and tenant access decided from Stripe's status and the ladder."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER, DunningLadder, LadderStep
from billing_pipelines.lib.tenants.access import TenantState, change_action, decide

BASE = TenantState(
    billing_status="active",
    api_access_enabled=True,
    rate_limit_multiplier=Decimal("1.00"),
    subscription_status="active",
    payment_failures=0,
    plan="pro",
    stripe_subscription_id="sub_1",
    trial_end=None,
)


def test_ladder_matches_the_design() -> None:
    actions = [s.action for s in DEFAULT_LADDER.steps]
    assert actions == ["reminder", "warning", "final_warning", "suspend"]
    assert DEFAULT_LADDER.effects(0) == (True, Decimal("1.00"))
    assert DEFAULT_LADDER.effects(1) == (True, Decimal("1.00"))
    assert DEFAULT_LADDER.effects(2) == (True, Decimal("1.00"))
    assert DEFAULT_LADDER.effects(3) == (True, Decimal("0.50"))
    assert DEFAULT_LADDER.effects(4) == (False, Decimal("0.50"))
    assert DEFAULT_LADDER.effects(9) == (False, Decimal("0.50"))  # 4+ stays suspended
    assert DEFAULT_LADDER.step(2).announces_suspension


@pytest.mark.parametrize(
    ("attempts", "next_attempt", "suspension", "remaining"),
    [
        # Only Stripe's next planned attempt is known: it dates the suspension when it is the
        # attempt that reaches the last rung, whatever the account's retry schedule is.
        (3, datetime(2026, 3, 9, 17, 5, tzinfo=UTC), datetime(2026, 3, 9, 17, 5, tzinfo=UTC), 1),
        (2, datetime(2026, 3, 4, 11, 0, tzinfo=UTC), None, 2),
        (1, datetime(2026, 3, 2, 11, 0, tzinfo=UTC), None, 3),
        (3, None, None, 1),  # Stripe will not retry (no payment method): no date to promise
        (4, None, None, 0),
    ],
)
def test_suspension_date_comes_from_stripes_next_attempt(
    attempts: int, next_attempt: datetime | None, suspension: datetime | None, remaining: int
) -> None:
    assert DEFAULT_LADDER.suspension_date(attempts, next_attempt) == suspension
    assert DEFAULT_LADDER.attempts_before_suspension(attempts) == remaining


@pytest.mark.parametrize(
    ("attempts", "done", "due"),
    [
        (0, [], None),
        (1, [], 1),
        (1, [1], None),
        (2, [1], 2),
        (3, [1], 3),  # a missed rung is jumped over, not replayed
        (4, [1, 2, 3], 4),
        (5, [1, 2, 3, 4], None),  # 4+ stays on the last rung
        (2, [3], None),  # never goes back down
    ],
)
def test_due_step(attempts: int, done: list[int], due: int | None) -> None:
    assert DEFAULT_LADDER.due_step(attempts, done) == due


def test_ladder_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="1..n"):
        DunningLadder(steps=(LadderStep(2, "x", "payment_reminder"),))


@pytest.mark.parametrize(
    ("status", "level", "expected"),
    [
        ("active", 0, ("active", True, "1.00")),
        ("past_due", 1, ("past_due", True, "1.00")),
        ("past_due", 3, ("past_due", True, "0.50")),
        ("past_due", 4, ("suspended", False, "0.50")),
        ("unpaid", 0, ("suspended", False, "0.50")),  # Stripe gave up: suspend even unseen
        ("active", 4, ("suspended", False, "0.50")),  # another invoice still at step 4
        ("trialing", 0, ("trialing", True, "1.00")),
        ("canceled", 0, ("canceled", False, "1.00")),
        ("incomplete_expired", 0, ("canceled", False, "1.00")),
        ("paused", 0, ("paused", False, "1.00")),
        ("incomplete", 0, ("incomplete", False, "1.00")),
    ],
)
def test_access_is_a_function_of_stripe_status_and_ladder(
    status: str, level: int, expected: tuple[str, bool, str]
) -> None:
    after = decide(BASE, subscription_status=status, dunning_level=level, payment_failures=level)
    assert (after.billing_status, after.api_access_enabled, str(after.rate_limit_multiplier)) == (
        expected
    )


def test_change_actions_name_what_happened() -> None:
    suspended = decide(BASE, subscription_status="past_due", dunning_level=4, payment_failures=4)
    limited = decide(BASE, subscription_status="past_due", dunning_level=3, payment_failures=3)
    assert change_action(BASE, suspended) == "tenant.suspend"
    assert change_action(BASE, limited) == "tenant.rate_limit"
    assert change_action(suspended, BASE) == "tenant.reactivate"
    canceled = decide(BASE, subscription_status="canceled", dunning_level=0, payment_failures=0)
    assert change_action(BASE, canceled) == "tenant.revoke_access"
    assert suspended.as_json()["rate_limit_multiplier"] == "0.50"


@pytest.mark.parametrize(
    ("attempts", "done", "retries", "due"),
    [
        (1, [], False, 4),  # no payment method: Stripe will not retry, suspension is due now
        (3, [1, 2], False, 4),  # a custom schedule of two retries ended after attempt 3
        (2, [1], True, 2),  # Stripe retries: one rung per real attempt
        (1, [4], False, None),  # already suspended
        (0, [], False, None),  # nothing failed yet
    ],
)
def test_the_ladder_does_not_wait_for_attempts_stripe_will_not_make(
    attempts: int, done: list[int], retries: bool, due: int | None
) -> None:
    assert DEFAULT_LADDER.due_step(attempts, done, retries) == due


def test_first_payments_and_planned_retries_keep_the_attempt_ladder() -> None:
    from billing_pipelines.lib.dunning.steps import stripe_retries

    assert stripe_retries(datetime(2026, 3, 1, tzinfo=UTC), "past_due")
    assert stripe_retries(None, "incomplete")  # a first payment: access never started
    assert not stripe_retries(None, "past_due")
    assert not stripe_retries(None, "paused")
