"""Index of due lifecycle work: the next due instant of each subscription and invoice, by clock.

The sandbox runs renewals, trial ends, scheduled cancellations, incomplete expiries, invoice
finalizations and payment retries when they fall due (on a test clock's advance, or on real time
for customers without a clock). Finding the next one used to scan every subscription and invoice
ever made, on every request; with a year of history that is 130,000 objects for a handful due.
This index keeps one entry per object that has work ahead, ordered the way that scan chose
(earliest instant first; at the same instant subscriptions before invoices, then in the order the
account made them, then the object's own action order), so a look-up costs what is due.

Entries go stale when an object changes. The index is told of changes where they happen: an
object stored (`put`), fetched by id for a request (`get`/`find`), the subject of an event
(`emit`: every Stripe-visible change of a subscription or invoice emits one), or acted on by the
scheduler; code that edits stored objects directly (a benchmark's set-up) calls `touch`. Such
objects are marked and re-read before the next look-up. An entry left later than
its object's real due instant would hide work; one left earlier is harmless, because the head
entry is always re-checked against its object before it is returned. `verify` (on in the test
suite, `BILLING_SANDBOX_VERIFY_DUE=1`) compares every answer with the full scan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import SandboxState

# The kinds that carry lifecycle work, in the order the full scan visits them.
RANK = {"subscription": 0, "invoice": 1}

# (due instant, kind rank, insertion number, action index, object id)
Key = tuple[int, int, int, int, str]
Actions = Callable[["SandboxState", dict[str, Any]], list[tuple[int, str]]]
Found = tuple[int, str, dict[str, Any]]


class DueIndex:
    """Per test clock (None: real time), a heap of each object's next due action."""

    def __init__(self) -> None:
        self._heaps: dict[str | None, list[Key]] = {}
        # The live entry of each object (a heap entry not equal to it is stale and skipped).
        self._current: dict[str, tuple[str | None, Key]] = {}
        self._dirty: dict[str, None] = {}
        # Settings the actions read: the index is rebuilt when one changes.
        self._settings: tuple[int, ...] | None = None

    def touch(self, oid: str) -> None:
        """Mark an object whose due work may have changed (re-read before the next look-up)."""
        self._dirty[oid] = None

    def reset(self) -> None:
        """Forget every entry (a restored snapshot is indexed again from scratch)."""
        self.__init__()  # type: ignore[misc]

    def next(self, st: SandboxState, clock_id: str | None, actions: Actions) -> Found | None:
        """The earliest due action on `clock_id`'s objects: (instant, action, object) or None."""
        self._refresh(st, actions)
        heap = self._heaps.get(clock_id)
        while heap:
            key = heap[0]
            oid = key[4]
            if self._current.get(oid) != (clock_id, key):
                heapq.heappop(heap)
                continue
            obj = _stored(st, oid)
            fresh = self._entry(st, oid, obj, actions) if obj is not None else None
            if fresh == (clock_id, key) and obj is not None:
                return key[0], actions(st, obj)[key[3]][1], obj
            # The head was stale (its object changed without telling): index it as it is now.
            heapq.heappop(heap)
            self._set(oid, fresh)
        return None

    def _refresh(self, st: SandboxState, actions: Actions) -> None:
        settings = (st.settings.incomplete_expiry_seconds,)
        if settings != self._settings:
            self._heaps, self._current, self._settings = {}, {}, settings
            for kind in RANK:
                for oid in st.table(kind):
                    self._dirty[oid] = None
        # Taken whole: popping a dict's first key one at a time costs O(n) each (the deleted
        # slots at its front are walked again), O(n²) for a large batch of touches.
        dirty, self._dirty = self._dirty, {}
        for oid in dirty:
            obj = _stored(st, oid)
            self._set(oid, self._entry(st, oid, obj, actions) if obj is not None else None)

    def _entry(
        self, st: SandboxState, oid: str, obj: dict[str, Any], actions: Actions
    ) -> tuple[str | None, Key] | None:
        acts = actions(st, obj)
        if not acts:
            return None
        # The first of the earliest, as the scan's strict `<` picked.
        index = min(range(len(acts)), key=lambda i: (acts[i][0], i))
        position = st.position(oid)
        inserted = position[1] if position is not None else 0
        cus = st.table("customer").get(obj["customer"]) or {}
        key = (int(acts[index][0]), RANK[obj["object"]], inserted, index, oid)
        return cus.get("test_clock"), key

    def _set(self, oid: str, entry: tuple[str | None, Key] | None) -> None:
        if self._current.get(oid) == entry:
            return
        if entry is None:
            self._current.pop(oid, None)
            return
        self._current[oid] = entry
        heapq.heappush(self._heaps.setdefault(entry[0], []), entry[1])


def _stored(st: SandboxState, oid: str) -> dict[str, Any] | None:
    """The stored subscription or invoice with this id, if it is one."""
    for kind in RANK:
        obj = st.table(kind).get(oid)
        if obj is not None:
            return obj
    return None
