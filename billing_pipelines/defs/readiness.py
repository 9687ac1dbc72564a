"""Whether Stripe-dependent work can start now, said in one sentence for the sensor's tick."""

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.settings import load_settings


def stripe_not_ready() -> str | None:
    """Why runs that call Stripe would fail right now (a missing or bad setting), else None.

    Sensors skip with this sentence instead of launching runs that would fail with a stack
    trace on every tick; the queued work waits and is picked up once the setting is fixed.
    """
    try:
        load_settings().require_stripe_api_key()
    except BillingConfigError as exc:
        return f"waiting: {exc}"
    return None
