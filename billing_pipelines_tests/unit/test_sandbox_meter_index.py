"""The sandbox finds one customer's meter events without scanning every customer's."""

from __future__ import annotations

from typing import Any

from billing_sandbox.stripe.meter_index import MeterEventIndex, index_of
from billing_sandbox.stripe.store import Data


def _event(name: str, customer: str, ts: int, **payload: Any) -> dict[str, Any]:
    return {
        "event_name": name,
        "payload": {"stripe_customer_id": customer, "value": "1", **payload},
        "timestamp": ts,
        "canceled": False,
    }


def test_a_customers_events_come_in_receipt_order_and_later_events_are_caught_up() -> None:
    events = [
        _event("api_queries", "cus_B", 30),
        _event("api_queries", "cus_A", 20),
        _event("other_meter", "cus_A", 10),
        _event("api_queries", "cus_A", 5),
    ]
    index = MeterEventIndex()
    first = index.events(events, "api_queries", "stripe_customer_id", "cus_A")
    assert [e["timestamp"] for e in first] == [20, 5]
    # Received after the first read: found by the next one, after the earlier ones.
    events += [_event("api_queries", "cus_A", 1), _event("api_queries", "cus_C", 2)]
    events[1]["canceled"] = True  # a cancel marks its event; the reader decides
    again = index.events(events, "api_queries", "stripe_customer_id", "cus_A")
    assert [(e["timestamp"], e["canceled"]) for e in again] == [(20, True), (5, False), (1, False)]
    assert index.events(events, "api_queries", "stripe_customer_id", "cus_Z") == []
    assert [
        e["timestamp"] for e in index.events(events, "other_meter", "stripe_customer_id", "cus_A")
    ] == [10]


def test_a_meter_that_names_its_customer_by_another_payload_key_is_indexed_by_that_key() -> None:
    events = [
        _event("api_queries", "cus_A", 1, account="acct_9"),
        _event("api_queries", "cus_B", 2, account="acct_9"),
    ]
    index = MeterEventIndex()
    assert [e["timestamp"] for e in index.events(events, "api_queries", "account", "acct_9")] == [
        1,
        2,
    ]
    assert len(index.events(events, "api_queries", "stripe_customer_id", "cus_B")) == 1


def test_each_accounts_data_has_its_own_index() -> None:
    one, two = Data(), Data()
    assert index_of(one) is index_of(one)
    assert index_of(one) is not index_of(two)
