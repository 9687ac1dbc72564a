"""Stripe's wire format: nested-bracket form parsing, error bodies, list and search objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "card_error",
    404: "invalid_request_error",
    409: "idempotency_error",
    429: "invalid_request_error",
    500: "api_error",
}


class StripeError(Exception):
    """An error answered with Stripe's `{"error": {...}}` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _ERROR_TYPES.get(status, "api_error")
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        err.update(self.extra)
        return {"error": err}


def not_found(kind: str, oid: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{oid}'", code="resource_missing", param=param)


_KEY_PART = re.compile(r"\[([^\]]*)\]")


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    parts = [head]
    if rest:
        parts.extend(_KEY_PART.findall("[" + rest))
    return parts


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_listify(v) for v in node]
    return node


def parse_form(body: str) -> dict[str, Any]:
    """`items[0][price]=p&expand[]=x&metadata[k]=v` -> nested dicts/lists (values stay strings)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = _split_key(key)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                # `a[]=x`: append
                if not isinstance(node, list):
                    raise StripeError(400, f"Invalid array parameter: {key}", param=key)
                if last:
                    node.append(value)
                else:
                    node.append({})
                    node = node[-1]
                continue
            nxt_is_append = not last and parts[i + 1] == ""
            if isinstance(node, list):
                raise StripeError(400, f"Invalid array parameter: {key}", param=key)
            if last:
                node[part] = value
            else:
                if part not in node or not isinstance(node[part], dict | list):
                    node[part] = [] if nxt_is_append else {}
                node = node[part]
    return _listify(root)


def list_object(
    items: list[dict[str, Any]],
    url: str,
    params: dict[str, Any],
    *,
    key: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Paginate a small in-memory list (already newest-first): invoice lines, meters, clocks.

    Stored kinds that grow with the account page through `paging.list_page` instead.
    """
    limit = int(params.get("limit", 10) or 10)
    if limit < 1 or limit > 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    ids = [o.get("id") for o in items]
    start_after = params.get("starting_after")
    end_before = params.get("ending_before")
    if start_after:
        if start_after not in ids:
            raise not_found("object", start_after, "starting_after")
        idx = ids.index(start_after) + 1
        page = items[idx : idx + limit]
        has_more = idx + limit < len(items)
    elif end_before:
        if end_before not in ids:
            raise not_found("object", end_before, "ending_before")
        idx = ids.index(end_before)
        lo = max(0, idx - limit)
        page = items[lo:idx]
        has_more = lo > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def search_object(items: list[dict[str, Any]], url: str, params: dict[str, Any]) -> dict[str, Any]:
    limit = int(params.get("limit", 10) or 10)
    offset = int(params.get("page") or 0)
    page = items[offset : offset + limit]
    has_more = offset + limit < len(items)
    return {
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": str(offset + limit) if has_more else None,
        "url": url,
        "total_count": len(items),
    }


_CLAUSE = re.compile(
    r"""\s*(?P<field>[a-z_]+)(?:\[['"](?P<key>[^'"]+)['"]\])?\s*(?P<op>:|>=|<=|>|<)\s*
        (?:['"](?P<sval>[^'"]*)['"]|(?P<nval>-?\d+))\s*""",
    re.X,
)


def parse_search_query(query: str) -> list[tuple[str, str | None, str, str]]:
    """Stripe search query language subset: `field:'v'`, `metadata['k']:'v'`, AND-joined."""
    clauses: list[tuple[str, str | None, str, str]] = []
    for part in re.split(r"\s+AND\s+", query.strip(), flags=re.I):
        m = _CLAUSE.fullmatch(part)
        if not m:
            raise StripeError(400, f"Invalid search query: {query}", param="query")
        val = m.group("sval") if m.group("sval") is not None else m.group("nval")
        clauses.append((m.group("field"), m.group("key"), m.group("op"), val))
    return clauses


def matches_search(
    obj: dict[str, Any], clauses: Iterable[tuple[str, str | None, str, str]]
) -> bool:
    for field, key, op, val in clauses:
        cur = obj.get(field)
        if key is not None:
            cur = (cur or {}).get(key)
        if op == ":":
            if cur is None:
                return False
            if isinstance(cur, str) and field in ("email", "name"):
                if cur.lower() != val.lower():
                    return False
            elif str(cur) != val:
                return False
        else:
            if not isinstance(cur, int | float):
                return False
            n = float(val)
            ok = {">": cur > n, "<": cur < n, ">=": cur >= n, "<=": cur <= n}[op]
            if not ok:
                return False
    return True
