"""Wire protocol of the Stripe sandbox, exercised through the official SDK over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe
from billing_sandbox.parallel import each_in_threads
from billing_sandbox.stripe import SandboxHandle, run_in_thread

from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines_tests.support import API_KEY, expanded, present

# The rate-limit tests send from this many threads at once: one client sending in turn outruns
# a limit of N a second only while its round trip is under 1/N s, which a loaded host does not
# promise; eight in flight outrun it at eight times that.
IN_FLIGHT = 8


def test_missing_or_live_key_is_401_with_stripe_error_shape(stripe_sandbox: SandboxHandle):
    r = httpx.get(f"{stripe_sandbox.url}/v1/customers")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
    bad = stripe.StripeClient(api_key="sk_live_nope", base_addresses={"api": stripe_sandbox.url})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.list()


def test_unknown_parameter_is_rejected_like_stripe(stripe_client: stripe.StripeClient):
    with pytest.raises(stripe.InvalidRequestError) as e:
        # The misspelt key is the point of the test: the SDK types would refuse it.
        stripe_client.v1.customers.create({"emali": "x@y.z"})  # type: ignore[arg-type]
    assert e.value.http_status == 400
    assert "Received unknown parameter: emali" in str(e.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as e2:
        stripe_client.v1.prices.create(
            {
                "currency": "usd",
                "unit_amount": 1,
                "product_data": {"name": "x", "colour": "red"},  # type: ignore[typeddict-unknown-key]
            }
        )
    assert e2.value.param == "product_data[colour]"


def test_missing_object_is_404_resource_missing(stripe_client: stripe.StripeClient):
    with pytest.raises(stripe.InvalidRequestError) as e:
        stripe_client.v1.customers.retrieve("cus_nope")
    assert e.value.http_status == 404
    assert e.value.code == "resource_missing"


def test_idempotency_replay_and_mismatch(stripe_client: stripe.StripeClient):
    opts: stripe.RequestOptions = {"idempotency_key": "k-1"}
    a = stripe_client.v1.customers.create({"email": "a@x.io"}, opts)
    b = stripe_client.v1.customers.create({"email": "a@x.io"}, opts)
    assert a.id == b.id
    assert present(b.last_response).headers.get("idempotent-replayed") == "true"
    assert len(stripe_client.v1.customers.list().data) == 1
    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.customers.create({"email": "other@x.io"}, opts)


def test_idempotency_key_expires_after_24h(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
):
    a = stripe_client.v1.customers.create({"email": "a@x.io"}, {"idempotency_key": "k"})
    stripe_sandbox.state.time_offset = 24 * 3600 + 1
    b = stripe_client.v1.customers.create({"email": "a@x.io"}, {"idempotency_key": "k"})
    assert a.id != b.id


def test_pagination_auto_paging_iter(stripe_client: stripe.StripeClient):
    ids = [stripe_client.v1.customers.create({"name": f"c{i}"}).id for i in range(25)]
    page = stripe_client.v1.customers.list({"limit": 10})
    assert page.has_more and len(page.data) == 10
    assert page.data[0].id == ids[-1]  # newest first
    seen = [c.id for c in page.auto_paging_iter()]
    assert seen == list(reversed(ids))
    back = stripe_client.v1.customers.list({"limit": 5, "ending_before": ids[10]})
    assert [c.id for c in back.data] == list(reversed(ids[11:16]))


def test_expand_nested_objects(stripe_client: stripe.StripeClient):
    prod = stripe_client.v1.products.create({"name": "Pro"})
    price = stripe_client.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
        }
    )
    cus = stripe_client.v1.customers.create({"email": "e@x.io"})
    pm = stripe_client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    stripe_client.v1.customers.update(
        cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
    )
    sub = stripe_client.v1.subscriptions.create(
        {
            "customer": cus.id,
            "items": [{"price": price.id}],
            "expand": [
                "customer",
                "latest_invoice",
                "items.data.price.product",
                "customer.invoice_settings.default_payment_method",
            ],
        }
    )
    customer = expanded(sub.customer)
    assert customer.email == "e@x.io"
    settings = present(customer.invoice_settings)
    assert present(expanded(settings.default_payment_method).card).last4 == "4242"
    latest = expanded(sub.latest_invoice)
    assert latest.status == "paid"
    assert sub["items"].data[0].price.product.name == "Pro"
    inv = stripe_client.v1.invoices.retrieve(
        present(latest.id), {"expand": ["parent.subscription_details.subscription"]}
    )
    details = present(present(inv.parent).subscription_details)
    assert expanded(details.subscription).id == sub.id
    lst = stripe_client.v1.subscriptions.list({"expand": ["data.customer"]})
    assert expanded(lst.data[0].customer).id == cus.id


def test_search_by_metadata(stripe_client: stripe.StripeClient):
    for t in ("t1", "t2", "t1"):
        stripe_client.v1.customers.create({"metadata": {"tenant_id": t}})
    res = stripe_client.v1.customers.search({"query": "metadata['tenant_id']:'t1'"})
    assert res["object"] == "search_result" and len(res.data) == 2
    assert all(present(c.metadata)["tenant_id"] == "t1" for c in res.data)
    page = stripe_client.v1.customers.search({"query": "metadata['tenant_id']:'t1'", "limit": 1})
    assert page.has_more and page.next_page
    assert len(list(page.auto_paging_iter())) == 2


def test_rate_limit_429_visible_to_sdk():
    h = run_in_thread(rate_limit=2.0)
    try:
        c = stripe.StripeClient(api_key=API_KEY, base_addresses={"api": h.url})
        with pytest.raises(stripe.RateLimitError) as e:
            for _ in range(10):
                c.v1.customers.list()
        assert e.value.http_status == 429
        body = e.value.json_body
        assert isinstance(body, dict) and body["error"]["code"] == "rate_limit"
    finally:
        h.stop()


def test_limits_are_global_and_per_endpoint_with_stripes_429_shape():
    """docs.stripe.com/rate-limits: an account limit, and one per named operation (all ids of
    `GET /v1/customers/{id}` share it); a 429 carries error code `rate_limit`."""
    h = run_in_thread(rate_limit=None, endpoint_rate_limit=3.0)
    try:
        c = stripe_api.make_client(API_KEY, api_base=h.url, max_network_retries=0)
        ids = [str(c.v1.customers.create({"name": f"n{i}"}).id) for i in range(3)]
        time.sleep(1.1)  # refill
        # Three different customers are one endpoint: cycling through them spends one bucket, so
        # a 429 comes while fewer requests were served than the bucket law allows for one bucket
        # (3 at once plus 3 a second); a bucket per id would serve three times as many. Counted
        # against the elapsed time, not a fixed number, so a slow machine cannot make it flaky.
        served, limited, started = 0, None, time.monotonic()
        for i in range(60):
            answer = httpx.get(f"{h.url}/v1/customers/{ids[i % 3]}", auth=(API_KEY, ""))
            if answer.status_code == 429:
                limited = answer
                break
            answer.raise_for_status()
            served += 1
        assert limited is not None
        assert served <= 3 + 3.0 * (time.monotonic() - started) + 1
        assert limited.json()["error"]["type"] == "invalid_request_error"
        assert limited.json()["error"]["code"] == "rate_limit"
        assert limited.headers["request-id"].startswith("req_")
        # ... the SDK gets no hint to retry it by itself; our client does (see test_rate_limits).
        assert "stripe-should-retry" not in limited.headers
        # ... while another endpoint still answers.
        assert httpx.get(f"{h.url}/v1/customers", auth=(API_KEY, "")).status_code == 200
        assert h.throttled == 1  # only the one 429 above
    finally:
        h.stop()


def test_the_sandbox_limits_like_test_mode_by_default():
    h = run_in_thread()
    try:
        with httpx.Client(auth=(API_KEY, "")) as http:
            started = time.monotonic()
            answers = each_in_threads(
                range(120), lambda _: http.get(f"{h.url}/v1/customers").status_code, IN_FLIGHT
            )
            elapsed = time.monotonic() - started
        # 25/s in test mode (a one-second bucket): what passed fits the limit, the rest is 429.
        assert set(answers) == {200, 429}
        assert answers.count(200) <= 25 * (1 + elapsed)
    finally:
        h.stop()


def test_live_meter_events_have_their_own_limit_and_spend_none_of_the_accounts():
    """docs.stripe.com/rate-limits: in live mode, meter events are "subject to a separate rate
    limit, and don't count against the basic limits" (1,000/s); the sandbox takes that rate as
    `meter_events_rate_limit`, here small enough to reach."""
    h = run_in_thread(rate_limit=3.0, endpoint_rate_limit=3.0, meter_events_rate_limit=12.0)
    try:
        with httpx.Client(auth=(API_KEY, "")) as http:
            customer = http.post(f"{h.url}/v1/customers", data={"name": "m"}).json()["id"]
            http.post(
                f"{h.url}/v1/billing/meters",
                data={
                    "display_name": "Queries",
                    "event_name": "queries",
                    "default_aggregation[formula]": "sum",
                },
            ).raise_for_status()
            time.sleep(1.1)  # refill the account's bucket after those two
            started = time.monotonic()
            answers = each_in_threads(
                range(120),
                lambda i: (
                    http.post(
                        f"{h.url}/v1/billing/meter_events",
                        data={
                            "event_name": "queries",
                            "identifier": f"e{i}",
                            "payload[stripe_customer_id]": customer,
                            "payload[value]": "1",
                        },
                    ).status_code
                ),
                IN_FLIGHT,
            )
            elapsed = time.monotonic() - started
            assert set(answers) == {200, 429}
            served = answers.count(200)
            # Far more than the account's 3/s went through, and the meter limit held.
            assert served > 6
            assert served <= 12 * (1 + elapsed) + 1
            # The account's own bucket was not spent by them: three calls still answer.
            assert [http.get(f"{h.url}/v1/customers").status_code for _ in range(3)] == [200] * 3
    finally:
        h.stop()


def test_fault_injection_500_and_sdk_retries():
    h = run_in_thread(fault_rate=0.5, seed=3)
    try:
        flaky = stripe.StripeClient(api_key=API_KEY, base_addresses={"api": h.url})
        with pytest.raises(stripe.APIError):
            for _ in range(20):
                flaky.v1.customers.list()
        robust = stripe.StripeClient(
            api_key=API_KEY, base_addresses={"api": h.url}, max_network_retries=8
        )
        for i in range(5):  # retried POSTs carry one idempotency key: no duplicates
            robust.v1.customers.create({"name": f"r{i}"})
        with h.state.lock:
            assert len(h.state.all("customer")) == 5
    finally:
        h.stop()


def test_global_api_base_style(stripe_sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(stripe, "api_key", API_KEY)
    monkeypatch.setattr(stripe, "api_base", stripe_sandbox.url)
    cus = stripe.Customer.create(email="g@x.io")
    assert stripe.Customer.retrieve(cus.id).email == "g@x.io"


def test_live_mode_meter_events_have_their_own_limit_and_spend_no_other():
    """docs.stripe.com/rate-limits: live-mode meter events have a separate limit (1,000/s) and
    "don't count against the basic limits"; above their own limit they are answered 429."""
    h = run_in_thread(rate_limit=3.0, endpoint_rate_limit=3.0, meter_events_rate_limit=15.0)
    try:
        with httpx.Client(auth=(API_KEY, "")) as http:
            meter = http.post(
                f"{h.url}/v1/billing/meters",
                data={
                    "display_name": "q",
                    "event_name": "q",
                    "default_aggregation[formula]": "sum",
                },
            ).json()
            customer = http.post(f"{h.url}/v1/customers", data={"name": "c"}).json()
            assert meter["object"] == "billing.meter" and customer["object"] == "customer"
            time.sleep(1.1)  # refill every bucket
            started = time.monotonic()

            def event(i: int) -> int:
                return http.post(
                    f"{h.url}/v1/billing/meter_events",
                    data={
                        "event_name": "q",
                        "identifier": f"e-{i}",
                        "payload[stripe_customer_id]": customer["id"],
                        "payload[value]": "1",
                    },
                ).status_code

            # Ten events at once: far above the account's 3/s and the endpoint's 3/s, inside
            # their own 15 ...
            assert [event(i) for i in range(10)] == [200] * 10
            # ... and they spent nothing of the account's budget: three calls still fit it.
            assert [http.get(f"{h.url}/v1/customers").status_code for _ in range(3)] == [200] * 3
            answers = each_in_threads(range(100, 220), event, IN_FLIGHT)
            elapsed = time.monotonic() - started
        # Their own bucket (15 at once plus 15 a second, 10 spent above) stops the rest.
        assert 429 in answers
        assert 10 + answers.count(200) <= 15 + 15 * elapsed + 1
        assert h.throttled == answers.count(429)
    finally:
        h.stop()


def test_test_mode_meter_events_count_against_the_account_limit():
    """docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api ("Rate limits"): in
    test and sandbox mode, meter events count toward the basic limit (the sandbox's default)."""
    h = run_in_thread(rate_limit=3.0, endpoint_rate_limit=None)
    try:
        with httpx.Client(auth=(API_KEY, "")) as http:
            started = time.monotonic()
            answers = [
                http.post(
                    f"{h.url}/v1/billing/meter_events",
                    data={"event_name": "none", "payload[value]": "1"},
                ).status_code
                for _ in range(20)
            ]
            elapsed = time.monotonic() - started
        # The account's bucket (3 at once plus 3 a second) answers the rest 429.
        assert 429 in answers
        assert len(answers) - answers.count(429) <= 3 + 3.0 * elapsed + 1
    finally:
        h.stop()
