"""The usage audit reads the warehouse in slices of whole tenants, each within an event budget."""

from __future__ import annotations

from billing_pipelines.lib.reconciliation.usage_audit import tenant_slices


def test_tenants_are_packed_in_name_order_up_to_the_budget_inclusive() -> None:
    events = {"c": 3, "a": 4, "b": 6, "d": 1}
    # a (4) + b (6) = 10 fits a budget of 10 exactly; c (3) would make 13.
    assert tenant_slices(events, 10) == [["a", "b"], ["c", "d"]]


def test_a_slice_closes_one_event_over_the_budget() -> None:
    assert tenant_slices({"a": 5, "b": 6}, 10) == [["a"], ["b"]]
    assert tenant_slices({"a": 5, "b": 5}, 10) == [["a", "b"]]


def test_a_tenant_larger_than_the_budget_is_read_alone_and_never_split() -> None:
    events = {"big": 50, "small": 2, "tiny": 1}
    assert tenant_slices(events, 10) == [["big"], ["small", "tiny"]]
    assert tenant_slices({"a": 1, "big": 50, "c": 1}, 10) == [["a"], ["big"], ["c"]]


def test_tenants_without_events_are_left_out_and_no_events_means_no_slice() -> None:
    assert tenant_slices({"a": 0, "b": 3, "c": 0}, 10) == [["b"]]
    assert tenant_slices({"a": 0}, 10) == []
    assert tenant_slices({}, 10) == []


def test_every_tenant_with_events_is_in_exactly_one_slice_within_the_budget() -> None:
    events = {f"t{i:03d}": (i * 37) % 11 for i in range(200)}
    slices = tenant_slices(events, 25)
    flat = [t for part in slices for t in part]
    assert flat == sorted(t for t, n in events.items() if n > 0)
    assert all(sum(events[t] for t in part) <= 25 for part in slices)
    # Packed, not one tenant per slice: each slice but the last could not take the next tenant.
    for part, following in zip(slices, slices[1:], strict=False):
        assert sum(events[t] for t in part) + events[following[0]] > 25
