"""Default shapes of Stripe objects, derived from the stripe SDK's resource annotations.

Every object the sandbox returns starts from `skeleton(cls)`: each attribute the SDK declares,
set to null where the type is Optional, and to an empty value of the declared JSON type
otherwise. Resource modules then fill in the fields they actually model.
"""

from __future__ import annotations

import copy
import typing
from decimal import Decimal
from functools import cache
from typing import Any

from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in _args(tp)


def default_for(tp: Any) -> Any:
    if is_optional(tp):
        return None
    origin = typing.get_origin(tp)
    if origin is typing.ClassVar:
        return None
    if origin is typing.Union:
        first = _args(tp)[0]
        return default_for(first)
    if origin is typing.Literal:
        return _args(tp)[0]
    if origin in (list, list):
        return []
    if origin in (dict, dict):
        return {}
    if isinstance(tp, type):
        if issubclass(tp, ListObject) or origin is ListObject:
            return {"object": "list", "data": [], "has_more": False, "url": ""}
        if tp is bool:
            return False
        if tp is int:
            return 0
        if tp is float:
            return 0.0
        if tp is str:
            return ""
        if tp is Decimal:
            return "0"
        if issubclass(tp, StripeObject):
            if tp.__name__ == "UntypedStripeObject":
                return {}
            return skeleton(tp)
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, ListObject):
            return {"object": "list", "data": [], "has_more": False, "url": ""}
        if issubclass(origin, StripeObject):
            return {}
    return None


def annotations_of(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass in (StripeObject, object, dict):
            continue
        for name, tp in klass.__dict__.get("__annotations__", {}).items():
            if typing.get_origin(tp) is typing.ClassVar or name.startswith("_"):
                continue
            if isinstance(tp, str):
                continue
            out[name] = tp
    return out


@cache
def _skeleton(cls: type) -> dict[str, Any]:
    return {name: default_for(tp) for name, tp in annotations_of(cls).items()}


def skeleton(cls: type) -> dict[str, Any]:
    return copy.deepcopy(_skeleton(cls))


def build(cls: type, **fields: Any) -> dict[str, Any]:
    """A full object of SDK class `cls` with `fields` set (unknown fields are kept too)."""
    obj = skeleton(cls)
    obj.update(fields)
    return obj
