"""Micro-benchmark of the Stripe sandbox over loopback: meter event creation and subscription
retrieval, through the official SDK, one process (server thread + client), bounded loops.

    python -m billing_sandbox.stripe.bench_sandbox [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import time
from decimal import Decimal

import httpx
import stripe

from .server import run_in_thread


def bench(n: int) -> dict[str, float]:
    handle = run_in_thread()
    try:
        c = stripe.StripeClient(
            api_key="sk_test_bench", base_addresses={"api": handle.url}, max_network_retries=0
        )
        prod = c.v1.products.create({"name": "Pro"})
        meter = c.v1.billing.meters.create(
            {
                "display_name": "q",
                "event_name": "queries",
                "default_aggregation": {"formula": "sum"},
            }
        )
        price = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": 9900,
                "recurring": {"interval": "month"},
            }
        )
        usage = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount_decimal": Decimal("0.08"),
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            }
        )
        cus = c.v1.customers.create({})
        pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
        c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
        sub = c.v1.subscriptions.create(
            {"customer": cus.id, "items": [{"price": price.id}, {"price": usage.id}]}
        )
        out: dict[str, float] = {}
        t = time.perf_counter()
        for i in range(n):
            c.v1.billing.meter_events.create(
                {
                    "event_name": "queries",
                    "identifier": f"bench-{i}",
                    "payload": {"stripe_customer_id": cus.id, "value": "1"},
                }
            )
        out["meter_event_create_rps"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            c.v1.subscriptions.retrieve(sub.id)
        out["subscription_retrieve_rps"] = n / (time.perf_counter() - t)
        # the same two calls with a bare keep-alive HTTP client: server cost without SDK overhead
        with httpx.Client(
            base_url=handle.url, headers={"Authorization": "Bearer sk_test_bench"}
        ) as h:
            t = time.perf_counter()
            for i in range(n):
                h.post(
                    "/v1/billing/meter_events",
                    data={
                        "event_name": "queries",
                        "identifier": f"raw-{i}",
                        "payload[stripe_customer_id]": cus.id,
                        "payload[value]": "1",
                    },
                )
            out["meter_event_create_rps_raw_http"] = n / (time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(n):
                h.get(f"/v1/subscriptions/{sub.id}")
            out["subscription_retrieve_rps_raw_http"] = n / (time.perf_counter() - t)
        return out
    finally:
        handle.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="requests per operation")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    for name, rps in bench(args.n).items():
        print(f"{name}: {rps:,.0f} req/s (n={args.n})")


if __name__ == "__main__":
    main()
