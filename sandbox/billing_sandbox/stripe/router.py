"""Route table: (method, path pattern) -> handler, with the SDK params class used to validate."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import SandboxState


@dataclass
class Ctx:
    state: SandboxState
    request_id: str
    idempotency_key: str | None
    url: str


Handler = Callable[..., Any]


@dataclass
class Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    params_cls: type | None


ROUTES: list[Route] = []
# Routes without a path parameter by (method, path): found by one lookup instead of a scan of
# every route's pattern (the meter-event endpoint is hit a thousand times a second).
LITERALS: dict[tuple[str, str], Route] = {}


def route(
    method: str, pattern: str, params_cls: type | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler(ctx, params, **path_args)` for `METHOD /v1/...{name}...`."""
    rx = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

    def deco(fn: Handler) -> Handler:
        registered = Route(method.upper(), rx, fn, params_cls)
        ROUTES.append(registered)
        if rx.groups == 0 and re.escape(pattern) == pattern:
            LITERALS.setdefault((registered.method, pattern), registered)  # the first one wins
        return fn

    return deco


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    found = LITERALS.get((method, path))
    if found is not None:
        return found, {}
    # literal routes (`/v1/prices/search`) win over parametrised ones (`/v1/prices/{id}`)
    for literal in (True, False):
        for r in ROUTES:
            if r.method != method or (r.regex.groups == 0) != literal:
                continue
            m = r.regex.match(path)
            if m:
                return r, m.groupdict()
    return None
