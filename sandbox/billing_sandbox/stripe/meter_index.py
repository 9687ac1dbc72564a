"""Meter events by event name and customer, so a summary reads one customer's events only.

Stripe answers an event summary from its own aggregates; the sandbox keeps the raw events in
one list (the snapshot's `meter_events`, appended in receipt order and never reordered or
removed: a cancel only marks its event). Scanning that whole list for every summary made the
sandbox's answer grow with every tenant's events (quadratic over a month of daily summary
reads). The index is derived, kept beside the data (not in the snapshot) and caught up with the
list's new tail on each read; all access is under the sandbox's lock.
"""

from __future__ import annotations

import weakref
from typing import Any

from .store import Data

Event = dict[str, Any]


class MeterEventIndex:
    """One account's meter events grouped by (event name, customer key) and customer."""

    def __init__(self) -> None:
        # (event name, payload key naming the customer) -> (events indexed so far, by customer)
        self._groups: dict[tuple[str, str], tuple[list[int], dict[Any, list[Event]]]] = {}

    def events(
        self, all_events: list[Event], event_name: str, key: str, customer: str
    ) -> list[Event]:
        """The customer's events for this event name, in receipt order (canceled included)."""
        seen, by_customer = self._groups.setdefault((event_name, key), ([0], {}))
        for position in range(seen[0], len(all_events)):
            event = all_events[position]
            if event["event_name"] == event_name:
                by_customer.setdefault(event["payload"].get(key), []).append(event)
        seen[0] = len(all_events)
        return by_customer.get(customer, [])


# By the identity of the account's data (a dataclass compares by value, so it is no dict key),
# dropped when the data is.
_INDEXES: dict[int, tuple[weakref.ref[Data], MeterEventIndex]] = {}


def index_of(data: Data) -> MeterEventIndex:
    """The index of this account's data (a restored snapshot gets its own)."""
    entry = _INDEXES.get(id(data))
    if entry is None or entry[0]() is not data:
        key = id(data)
        entry = (weakref.ref(data, lambda _: _INDEXES.pop(key, None)), MeterEventIndex())
        _INDEXES[key] = entry
    return entry[1]
