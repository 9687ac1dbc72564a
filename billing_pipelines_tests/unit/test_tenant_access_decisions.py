"""Tenant access decided from Stripe's status and the ladder, for every status and rung."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER, DunningLadder, LadderStep
from billing_pipelines.lib.tenants.access import TenantState, change_action, decide

START = TenantState(
    billing_status="pending",
    api_access_enabled=True,
    rate_limit_multiplier=Decimal("1.00"),
    subscription_status=None,
    payment_failures=0,
    plan="starter",
    stripe_subscription_id="sub_9",
    trial_end=datetime(2026, 4, 2, 13, 45, tzinfo=UTC),
)

# The design's ladder, written out: rung reached -> (access, rate limit multiplier).
DESIGN_EFFECTS = {0: (True, "1.00"), 1: (True, "1.00"), 2: (True, "1.00"), 3: (True, "0.50")}
# Stripe statuses that end service whatever the ladder says, and the billing status shown.
NO_SERVICE = {
    "canceled": "canceled",
    "incomplete_expired": "canceled",
    "paused": "paused",
    "incomplete": "incomplete",
}
LADDER_STATUSES = {
    None: "pending",
    "trialing": "trialing",
    "active": "active",
    "past_due": "past_due",
    # A status Stripe adds later is shown as pending and follows the ladder.
    "some_future_status": "pending",
}


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    status=st.sampled_from(sorted(LADDER_STATUSES, key=str)),
    level=st.integers(min_value=0, max_value=7),
    failures=st.integers(min_value=0, max_value=9),
)
def test_statuses_with_service_follow_the_ladder(
    status: str | None, level: int, failures: int
) -> None:
    after = decide(
        START, subscription_status=status, dunning_level=level, payment_failures=failures
    )
    access, multiplier = DESIGN_EFFECTS.get(level, (False, "0.50"))  # 4+: suspended
    billing_status = LADDER_STATUSES[status] if access else "suspended"
    assert after == replace(
        START,
        billing_status=billing_status,
        api_access_enabled=access,
        rate_limit_multiplier=Decimal(multiplier),
        subscription_status=status,
        payment_failures=failures,
    )
    assert str(after.rate_limit_multiplier) == multiplier


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    status=st.sampled_from(sorted(NO_SERVICE)),
    level=st.integers(min_value=0, max_value=7),
    failures=st.integers(min_value=0, max_value=9),
)
def test_ended_paused_or_unpaid_for_subscriptions_have_no_access_whatever_the_ladder(
    status: str, level: int, failures: int
) -> None:
    after = decide(
        START, subscription_status=status, dunning_level=level, payment_failures=failures
    )
    assert after == replace(
        START,
        billing_status=NO_SERVICE[status],
        api_access_enabled=False,
        rate_limit_multiplier=Decimal("1.00"),
        subscription_status=status,
        payment_failures=failures,
    )


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(level=st.integers(min_value=0, max_value=7), failures=st.integers(0, 9))
def test_unpaid_is_the_last_rung_even_before_any_rung_ran(level: int, failures: int) -> None:
    after = decide(
        START, subscription_status="unpaid", dunning_level=level, payment_failures=failures
    )
    assert (after.billing_status, after.api_access_enabled, after.rate_limit_multiplier) == (
        "suspended",
        False,
        Decimal("0.50"),
    )
    assert (after.subscription_status, after.payment_failures) == ("unpaid", failures)


def test_a_custom_ladder_decides_and_its_multiplier_is_kept_to_the_hundredth() -> None:
    ladder = DunningLadder(
        steps=(
            LadderStep(1, "slow", "t1", rate_limit_multiplier=Decimal("0.333")),
            LadderStep(2, "throttle", "t2", rate_limit_multiplier=Decimal("0.2")),
        )
    )
    one = decide(
        START, subscription_status="past_due", dunning_level=1, payment_failures=1, ladder=ladder
    )
    assert (one.billing_status, one.api_access_enabled, str(one.rate_limit_multiplier)) == (
        "past_due",
        True,
        "0.33",
    )
    # Unpaid puts the tenant on this ladder's last rung, which keeps access here.
    unpaid = decide(
        START, subscription_status="unpaid", dunning_level=0, payment_failures=0, ladder=ladder
    )
    assert (
        unpaid.billing_status,
        unpaid.api_access_enabled,
        str(unpaid.rate_limit_multiplier),
    ) == (
        "unpaid",
        True,
        "0.20",
    )


ACTIVE = replace(START, billing_status="active", subscription_status="active")
LIMITED = replace(ACTIVE, billing_status="past_due", rate_limit_multiplier=Decimal("0.50"))
SUSPENDED = replace(LIMITED, billing_status="suspended", api_access_enabled=False)
CANCELED = replace(ACTIVE, billing_status="canceled", api_access_enabled=False)


@pytest.mark.parametrize(
    ("before", "after", "action"),
    [
        (ACTIVE, SUSPENDED, "tenant.suspend"),
        (LIMITED, SUSPENDED, "tenant.suspend"),
        (ACTIVE, CANCELED, "tenant.revoke_access"),
        (LIMITED, CANCELED, "tenant.revoke_access"),
        (SUSPENDED, ACTIVE, "tenant.reactivate"),
        (LIMITED, ACTIVE, "tenant.reactivate"),
        (CANCELED, ACTIVE, "tenant.reactivate"),
        (ACTIVE, LIMITED, "tenant.rate_limit"),
        (LIMITED, replace(LIMITED, rate_limit_multiplier=Decimal("0.25")), "tenant.rate_limit"),
        # Nothing restricted before or after: a plan or status change is a sync.
        (ACTIVE, replace(ACTIVE, plan="pro"), "tenant.sync"),
        (ACTIVE, ACTIVE, "tenant.sync"),
        # Still restricted, no lower limit: a sync.
        (LIMITED, replace(LIMITED, payment_failures=3), "tenant.sync"),
        (SUSPENDED, CANCELED, "tenant.sync"),
        (SUSPENDED, replace(SUSPENDED, payment_failures=5), "tenant.sync"),
    ],
)
def test_change_actions(before: TenantState, after: TenantState, action: str) -> None:
    assert change_action(before, after) == action


@pytest.mark.parametrize(
    ("state", "restricted"),
    [(ACTIVE, False), (LIMITED, True), (SUSPENDED, True), (CANCELED, True)],
)
def test_restricted(state: TenantState, restricted: bool) -> None:
    assert state.restricted is restricted


def test_the_audited_state_is_plain_json() -> None:
    assert SUSPENDED.as_json() == {
        "billing_status": "suspended",
        "api_access_enabled": False,
        "rate_limit_multiplier": "0.50",
        "subscription_status": "active",
        "payment_failures": 0,
        "plan": "starter",
        "stripe_subscription_id": "sub_9",
        "trial_end": "2026-04-02T13:45:00+00:00",
    }
    assert replace(SUSPENDED, trial_end=None).as_json()["trial_end"] is None


def test_the_default_ladder_is_used_when_none_is_given() -> None:
    explicit = decide(
        START,
        subscription_status="past_due",
        dunning_level=3,
        payment_failures=3,
        ladder=DEFAULT_LADDER,
    )
    assert decide(START, subscription_status="past_due", dunning_level=3, payment_failures=3) == (
        explicit
    )


def test_a_tenant_row_becomes_its_contact_details_and_typed_state() -> None:
    from billing_pipelines.lib.tenants.access import Tenant, _tenant

    trial_end = datetime(2026, 5, 1, 0, 30, tzinfo=UTC)
    row = {
        "tenant_id": "t_7",
        "name": "Seven",
        "email": "ops@seven.example",
        "plan": "enterprise",
        "stripe_customer_id": "cus_7",
        "stripe_subscription_id": "sub_7",
        "billing_status": "past_due",
        # As a driver may hand them over: numeric as text, booleans and counts as integers.
        "api_access_enabled": 0,
        "rate_limit_multiplier": "0.50",
        "trial_end": trial_end,
        "subscription_status": "past_due",
        "payment_failures": "3",
    }
    tenant = _tenant(row)
    assert tenant == Tenant(
        tenant_id="t_7",
        name="Seven",
        email="ops@seven.example",
        stripe_customer_id="cus_7",
        state=TenantState(
            billing_status="past_due",
            api_access_enabled=False,
            rate_limit_multiplier=Decimal("0.50"),
            subscription_status="past_due",
            payment_failures=3,
            plan="enterprise",
            stripe_subscription_id="sub_7",
            trial_end=trial_end,
        ),
    )
    assert tenant.state.api_access_enabled is False and type(tenant.state.payment_failures) is int
    assert str(tenant.state.rate_limit_multiplier) == "0.50"
    assert _tenant({**row, "api_access_enabled": 1}).state.api_access_enabled is True
