"""Turn stored objects into API responses: fresh embedded objects, private keys dropped, expand."""

from __future__ import annotations

from typing import Any

from .store import SandboxState
from .wire import StripeError


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def render(state: SandboxState, obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _strip(obj)
    if out.get("object") == "subscription":
        for item in out["items"]["data"]:
            price = state.table("price").get(item["price"]["id"])
            if price is not None:
                item["price"] = _strip(price)
    return out


def _expand(state: SandboxState, obj: Any, parts: list[str], full: str) -> Any:
    if not parts:
        return obj
    if isinstance(obj, list):
        return [_expand(state, o, parts, full) for o in obj]
    if not isinstance(obj, dict):
        return obj
    head, rest = parts[0], parts[1:]
    if obj.get("object") in ("list", "search_result") and head == "data":
        obj["data"] = [_expand(state, o, rest, full) for o in obj["data"]]
        return obj
    if head == "tiers" and obj.get("object") == "price":
        stored = state.table("price").get(obj["id"]) or {}
        obj["tiers"] = stored.get("_tiers")
        return obj
    if head not in obj:
        raise StripeError(400, f"This property cannot be expanded ({full}).", param="expand")
    val = obj[head]
    if isinstance(val, str):
        target = state.find(val)
        if target is not None:
            val = render(state, target)
    obj[head] = _expand(state, val, rest, full)
    return obj


def expand(state: SandboxState, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    for p in paths:
        if p.count(".") > 3:
            raise StripeError(
                400, "You cannot expand more than 4 levels of a property.", param="expand"
            )
        obj = _expand(state, obj, p.split("."), p)
    return obj
