"""Events (with previous_attributes) and webhook endpoints."""

from __future__ import annotations

import copy
import secrets
from typing import Any

import stripe
import stripe.params as P

from ..paging import list_page
from ..router import Ctx, route
from ..store import API_VERSION, SandboxState
from ..wire import StripeError, list_object


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Stripe's previous_attributes: old values of keys that changed (nested dicts recurse)."""
    prev: dict[str, Any] = {}
    for k, v in old.items():
        nv = new.get(k)
        if v == nv:
            continue
        if isinstance(v, dict) and isinstance(nv, dict) and v.get("object") != "list":
            sub = _diff(v, nv)
            prev[k] = sub if sub else v
        else:
            prev[k] = copy.deepcopy(v)
    return prev


def emit(
    state: SandboxState,
    type_: str,
    obj: dict[str, Any],
    *,
    before: dict[str, Any] | None = None,
    created: int | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Record an event about `obj` (a rendered snapshot) and queue webhook deliveries."""
    from ..render import render

    # Every change of a subscription or invoice is announced here: its due work is re-read.
    state.due.touch(str(obj.get("id")))
    if obj.get("object") == "subscription_item" and obj.get("subscription"):
        state.due.touch(str(obj["subscription"]))
    snap = render(state, obj)
    data: dict[str, Any] = {"object": snap}
    if before is not None:
        prev = _diff(render(state, before), snap)
        if not prev and type_.endswith(".updated"):
            return {}
        data["previous_attributes"] = prev
    ev = state.create(
        stripe.Event,
        "evt",
        object="event",
        api_version=API_VERSION,
        created=created if created is not None else state.real_now(),
        data=data,
        type=type_,
        request={"id": request_id, "idempotency_key": idempotency_key},
        pending_webhooks=0,
    )
    ev["_seq"] = state.data.seq
    state.data.events.append(ev)
    endpoints = [
        ep
        for ep in state.all("webhook_endpoint")
        if ep["status"] == "enabled"
        and ("*" in ep["enabled_events"] or type_ in ep["enabled_events"])
    ]
    if endpoints and state.webhooks is not None:
        ev["pending_webhooks"] = state.webhooks.enqueue(ev, endpoints)
    return ev


def render_event(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


@route("GET", "/v1/events/{id}", P.EventRetrieveParams)
def retrieve_event(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return render_event(ctx.state.get("event", id))


@route("GET", "/v1/events", P.EventListParams)
def list_events(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    types = set(params.get("types") or [])
    if params.get("type"):
        types.add(params["type"])

    def type_ok(t: str) -> bool:
        if not types:
            return True
        for pat in types:
            if pat == t or (pat.endswith("*") and t.startswith(pat[:-1])):
                return True
        return False

    # Events are stored like every object, so a page walks their sorted positions from its
    # cursor (paging.py: `created` bounds the walk, `type`/`types` are checked lazily).
    return list_page(ctx.state, "event", "/v1/events", params, lambda e: type_ok(e["type"]))


# ---- webhook endpoints -------------------------------------------------------------------------


def _public_endpoint(ep: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
    out = dict(ep)
    if not with_secret:
        out.pop("secret", None)
    return out


@route("POST", "/v1/webhook_endpoints", P.WebhookEndpointCreateParams)
def create_endpoint(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    ep = ctx.state.create(
        stripe.WebhookEndpoint,
        "we",
        object="webhook_endpoint",
        url=params["url"],
        enabled_events=params["enabled_events"],
        description=params.get("description") or None,
        metadata=params.get("metadata", {}),
        api_version=params.get("api_version") or None,
        status="enabled",
        created=ctx.state.real_now(),
        secret="whsec_" + secrets.token_hex(24),
        application=None,
    )
    return _public_endpoint(ep, with_secret=True)


@route("GET", "/v1/webhook_endpoints/{id}", P.WebhookEndpointRetrieveParams)
def retrieve_endpoint(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return _public_endpoint(ctx.state.get("webhook_endpoint", id))


@route("GET", "/v1/webhook_endpoints", P.WebhookEndpointListParams)
def list_endpoints(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    eps = [_public_endpoint(e) for e in ctx.state.all("webhook_endpoint")]
    return list_object(eps, "/v1/webhook_endpoints", params)


@route("POST", "/v1/webhook_endpoints/{id}", P.WebhookEndpointModifyParams)
def update_endpoint(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    ep = ctx.state.get("webhook_endpoint", id)
    for k in ("url", "enabled_events", "description"):
        if k in params:
            ep[k] = params[k]
    if "disabled" in params:
        ep["status"] = "disabled" if params["disabled"] else "enabled"
    if "metadata" in params:
        apply_metadata(ep, params["metadata"])
    return _public_endpoint(ep)


@route("DELETE", "/v1/webhook_endpoints/{id}", P.WebhookEndpointDeleteParams)
def delete_endpoint(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    ep = ctx.state.get("webhook_endpoint", id)
    ep["deleted"] = True
    ep["status"] = "disabled"
    return {"id": id, "object": "webhook_endpoint", "deleted": True}


def apply_metadata(obj: dict[str, Any], md: Any) -> None:
    """Stripe metadata semantics: keys merge, empty value deletes, "" for the whole unsets."""
    if md == "" or md is None:
        obj["metadata"] = {}
        return
    if not isinstance(md, dict):
        raise StripeError(400, "Invalid object", param="metadata")
    cur = dict(obj.get("metadata") or {})
    for k, v in md.items():
        if v == "":
            cur.pop(k, None)
        else:
            cur[k] = str(v)
    obj["metadata"] = cur
