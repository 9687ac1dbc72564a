"""Customer portal sessions: a short-lived link where a customer manages cards and invoices."""

from __future__ import annotations

from typing import Any

import stripe
import stripe.params as P

from ..router import Ctx, route

# Stripe's portal links live 5 minutes; the sandbox keeps the same shape of URL.
PORTAL_HOST = "https://billing.stripe.com/p/session/test_"


@route("POST", "/v1/billing_portal/sessions", P.billing_portal.SessionCreateParams)
def create_portal_session(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    customer = st.get("customer", params["customer"], "customer")
    now = st.real_now()
    if customer.get("test_clock"):
        now = st.get("test_helpers.test_clock", customer["test_clock"], "customer")["frozen_time"]
    oid = st.new_id("bps")
    session = st.create(
        stripe.billing_portal.Session,
        "bps",
        id=oid,
        object="billing_portal.session",
        created=now,
        customer=customer["id"],
        livemode=False,
        locale=params.get("locale"),
        on_behalf_of=params.get("on_behalf_of"),
        return_url=params.get("return_url"),
        url=f"{PORTAL_HOST}{oid.removeprefix('bps_')}",
        configuration=params.get("configuration") or "bpc_sandbox_default",
        flow=None,
    )
    return session
