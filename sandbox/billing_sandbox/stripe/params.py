"""Validate and coerce form parameters against the stripe SDK's TypedDict params classes.

The SDK's `params` package mirrors Stripe's OpenAPI spec: every accepted request parameter,
its type and whether it is required. We walk those annotations to reject unknown parameters
("Received unknown parameter: x") and to coerce form strings to ints/bools like Stripe does.
"""

from __future__ import annotations

import sys
import typing
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, ForwardRef

import typing_extensions
from stripe._request_options import RequestOptions

from .wire import StripeError

_REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)
_NOT_REQUIRED = typing_extensions.NotRequired


class Field(typing.NamedTuple):
    tp: Any
    required: bool


def _resolve(tp: Any, module: str) -> Any:
    if isinstance(tp, str):
        tp = ForwardRef(tp)
    if isinstance(tp, ForwardRef):
        ns = vars(sys.modules[module])
        try:
            return eval(tp.__forward_arg__, ns)
        except Exception:
            return Any
    return tp


def _unwrap(tp: Any, module: str) -> tuple[Any, bool]:
    """Strip NotRequired/Required; returns (type, required)."""
    tp = _resolve(tp, module)
    origin = typing.get_origin(tp)
    if origin is not None and _NOT_REQUIRED is not None and origin is _NOT_REQUIRED:
        return _resolve(typing.get_args(tp)[0], module), False
    if origin is typing.Required:
        return _resolve(typing.get_args(tp)[0], module), True
    return tp, True


@cache
def fields_of(cls: type) -> dict[str, Field]:
    out: dict[str, Field] = {}
    for klass in reversed(cls.__mro__):
        ann = klass.__dict__.get("__annotations__", {})
        for name, tp in ann.items():
            if name in _REQUEST_OPTION_KEYS:
                continue
            t, req = _unwrap(tp, klass.__module__)
            out[name] = Field(t, req)
    return out


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing_extensions.is_typeddict(tp)


def _options(tp: Any, module: str) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return [_resolve(a, module) for a in typing.get_args(tp)]
    return [tp]


def _literal_values(opts: list[Any]) -> list[Any]:
    vals: list[Any] = []
    for o in opts:
        if typing.get_origin(o) is typing.Literal:
            vals.extend(typing.get_args(o))
    return vals


@cache
def _cached_options(tp: Any, module: str) -> tuple[Any, ...]:
    return tuple(o for o in _options(tp, module) if o is not type(None))


def _options_of(tp: Any, module: str) -> list[Any]:
    """The annotation's alternatives without None, worked out once per annotation (every
    request of a kind walks the same ones)."""
    try:
        return list(_cached_options(tp, module))
    except TypeError:  # an annotation that cannot be a cache key
        return [o for o in _options(tp, module) if o is not type(None)]


def coerce(value: Any, tp: Any, path: str, module: str = "typing") -> Any:
    """Coerce a parsed form value to the annotated type; raise StripeError on mismatch."""
    opts = _options_of(tp, module)
    if value == "" and len(opts) >= 1:
        return value  # empty string means "unset" in Stripe's form encoding
    for o in opts:
        if _is_typeddict(o) and isinstance(value, dict):
            return validate(value, o, prefix=path)
    for o in opts:
        origin = typing.get_origin(o)
        if origin in (list, list) and isinstance(value, list):
            (inner,) = typing.get_args(o) or (Any,)
            inner = _resolve(inner, module)
            return [coerce(v, inner, f"{path}[{i}]", module) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if any(typing.get_origin(o) in (dict, dict) for o in opts) or any(
            "StripeObject" in getattr(o, "__name__", str(o)) for o in opts
        ):
            return value
        if any(o is Any for o in opts):
            return value
    if isinstance(value, str):
        lits = _literal_values(opts)
        if value in lits:
            return value
        if int in opts and bool not in opts:
            try:
                return int(value)
            except ValueError:
                pass
        if bool in opts:
            if value in ("true", "false"):
                return value == "true"
            raise StripeError(
                400, f"Invalid boolean: {value}", param=path, code="parameter_invalid_boolean"
            )
        if float in opts:
            try:
                return float(value)
            except ValueError:
                pass
        if str in opts or Any in opts or Decimal in opts:
            if Decimal in opts and str not in opts:
                try:
                    Decimal(value)
                except InvalidOperation as e:
                    raise StripeError(400, f"Invalid decimal: {value}", param=path) from e
            return value
        if int in opts:
            raise StripeError(
                400, f"Invalid integer: {value}", param=path, code="parameter_invalid_integer"
            )
        if lits:
            allowed = ", ".join(repr(v) for v in lits)
            raise StripeError(
                400,
                f"Invalid {path}: must be one of {allowed}",
                param=path,
                code="parameter_invalid_string",
            )
        return value
    return value


def validate(params: dict[str, Any], cls: type, prefix: str = "") -> dict[str, Any]:
    """Reject unknown keys, check required keys, coerce values. Returns a new dict."""
    fields = fields_of(cls)
    out: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}[{key}]" if prefix else key
        f = fields.get(key)
        if f is None:
            raise StripeError(
                400, f"Received unknown parameter: {path}", param=path, code="parameter_unknown"
            )
        out[key] = coerce(value, f.tp, path, cls.__module__)
    for key, f in fields.items():
        if f.required and key not in params:
            path = f"{prefix}[{key}]" if prefix else key
            raise StripeError(
                400, f"Missing required param: {path}.", param=path, code="parameter_missing"
            )
    return out
