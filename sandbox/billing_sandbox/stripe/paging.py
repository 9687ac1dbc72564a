"""List pages in O(page): walk a kind's sorted positions from the cursor, filter lazily.

docs.stripe.com/api/pagination: list methods "return objects in reverse chronological order"
and take `limit` (1 to 100, default 10), `starting_after` and `ending_before`, each "an object
ID that defines your place in the list"; the two are mutually exclusive. Lists with a `created`
parameter (e.g. docs.stripe.com/api/invoices/list, /api/subscriptions/list) "only return
objects that were created during the given date interval": an integer is an exact second,
`gt`/`gte`/`lt`/`lte` bound it.

Where the docs are silent the sandbox picks the stricter reading: objects created in the same
second are ordered newest first by the order the account created them (the id's sequence);
a cursor must name an object of the listed kind that still exists (else 404, as before), and
it defines a place, not a match: the page continues after it even when the cursor object no
longer passes the list's filters (a subscription cancelled between two pages of the default
list). Each page visits only the positions between its cursor and its `limit + 1`-th match
(the extra one answers `has_more`), so a listing of n objects costs O(n) in all, not O(n²).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .wire import StripeError, not_found

if TYPE_CHECKING:
    from .store import SandboxState

Position = tuple[int, int, str]
Match = Callable[[dict[str, Any]], bool]

_FIRST = -(2**62)
_LAST = 2**62


def page_limit(params: dict[str, Any]) -> int:
    """The page size: `limit`, 1 to 100, default 10 (docs.stripe.com/api/pagination)."""
    raw = params.get("limit")
    limit = 10 if raw in (None, "") else int(raw)
    if limit < 1 or limit > 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    return limit


def created_bounds(created: Any) -> tuple[int, int]:
    """`created` (an exact second or gt/gte/lt/lte) as an inclusive [low, high] of seconds."""
    if created is None or created == "":
        return _FIRST, _LAST
    if not isinstance(created, dict):
        return int(created), int(created)
    low, high = _FIRST, _LAST
    for op, raw in created.items():
        if raw in (None, ""):
            continue
        bound = int(raw)
        if op == "gt":
            low = max(low, bound + 1)
        elif op == "gte":
            low = max(low, bound)
        elif op == "lt":
            high = min(high, bound - 1)
        elif op == "lte":
            high = min(high, bound)
    return low, high


def _cursor(state: SandboxState, kind: str, oid: str, param: str) -> Position:
    obj = state.table(kind).get(oid)
    position = state.position(oid)
    if obj is None or obj.get("deleted") or position is None:
        raise not_found("object", oid, param)
    return position


def _walk(
    state: SandboxState,
    kind: str,
    low: Position,
    high: Position,
    newest_first: bool,
    inclusive: tuple[bool, bool],
) -> Iterator[dict[str, Any]]:
    table = state.table(kind)
    for _created, _n, oid in state.ordered(kind).irange(
        low, high, inclusive=inclusive, reverse=newest_first
    ):
        obj = table.get(oid)
        if obj is not None and not obj.get("deleted"):
            yield obj


def list_page(
    state: SandboxState,
    kind: str,
    url: str,
    params: dict[str, Any],
    match: Match | None = None,
) -> dict[str, Any]:
    """One page of `kind` newest first, honouring limit, cursors and `created`, in O(page)."""
    limit = page_limit(params)
    start_after = params.get("starting_after")
    end_before = params.get("ending_before")
    if start_after and end_before:
        # docs.stripe.com/api/pagination: "You can use either the starting_after or
        # ending_before parameter, but not both simultaneously."
        raise StripeError(
            400,
            "You may only specify one of these parameters: starting_after, ending_before.",
            param="starting_after",
        )
    c_low, c_high = created_bounds(params.get("created"))
    low: Position = (c_low, -1, "")
    high: Position = (c_high, _LAST, "")
    found: list[dict[str, Any]] = []
    if end_before:
        # The `limit` objects just newer than the cursor, still returned newest first.
        cursor = _cursor(state, kind, str(end_before), "ending_before")
        walk = _walk(state, kind, max(low, cursor), high, False, (cursor < low, True))
    else:
        if start_after:
            cursor = _cursor(state, kind, str(start_after), "starting_after")
            walk = _walk(state, kind, low, min(high, cursor), True, (True, cursor > high))
        else:
            walk = _walk(state, kind, low, high, True, (True, True))
    for obj in walk:
        if match is None or match(obj):
            found.append(obj)
            if len(found) > limit:
                break
    has_more = len(found) > limit
    page = found[:limit]
    if end_before:
        page.reverse()
    return {"object": "list", "data": page, "has_more": has_more, "url": url}
