"""Which subscriptions the meter totals check reads off their slot day because a period of
theirs closes: renewals, trial ends and periods ending soon, not sign-ups whose first period
has only begun (a month that signs every tenant up on one day would otherwise read them all).
Runs against the Stripe sandbox on test clocks, at times of day other than midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.lib.stripe.periods import closing_subscriptions, in_first_period
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import advance

DAY = date(2026, 5, 12)


def at(day: date, hour: int, minute: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp())


def test_a_sign_up_is_not_closing_but_a_renewal_a_trial_end_and_a_period_ending_are(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, fresh_database_url: str
) -> None:
    c, db = stripe_client, fresh_database_url
    support.catalog(c)
    # Signed up during the day: its first period began, none closed.
    _, signed_up, _ = support.tenant(c, db, "cl-new", frozen_time=at(DAY, 14, 30))
    # Signed up a month before at 14:30 and renewed at 14:30 on the day.
    _, renewed, clock = support.tenant(
        c, db, "cl-renewed", frozen_time=at(date(2026, 4, 12), 14, 30)
    )
    advance(c, clock, at(DAY, 15))
    # A 14-day trial that ended at 09:15 on the day and became a paid period.
    _, trial, clock = support.tenant(
        c, db, "cl-trial", frozen_time=at(DAY - timedelta(days=14), 9, 15), trial_days=14
    )
    advance(c, clock, at(DAY, 10))
    # Its period ends at 08:00 the next day (inside the check's two days).
    _, ending, _ = support.tenant(c, db, "cl-ending", frozen_time=at(date(2026, 4, 13), 8))
    # Signed up the day before: no boundary in the two days at all.
    _, yesterday, clock = support.tenant(
        c, db, "cl-old", frozen_time=at(DAY - timedelta(days=1), 20)
    )
    advance(c, clock, at(DAY, 21))

    raw = {s: c.v1.subscriptions.retrieve(s).to_dict() for s in (signed_up, renewed, trial)}
    assert in_first_period(raw[signed_up])
    assert not in_first_period(raw[renewed]) and not in_first_period(raw[trial])

    closing = closing_subscriptions(c, DAY, DAY + timedelta(days=1))
    ours = {signed_up, renewed, trial, ending, yesterday}
    assert closing & ours == {renewed, trial, ending}
