"""Billing meters, meter events, cancel adjustments and event summaries."""

from __future__ import annotations

import copy
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe
import stripe.params as P

from ..clock import DAY, HOUR, customer_now
from ..meter_index import index_of
from ..router import Ctx, route
from ..store import SandboxState
from ..wire import StripeError, list_object
from .events import emit

METERS = "billing.meter"
PAST_LIMIT = 35 * DAY
FUTURE_LIMIT = 5 * 60
WINDOWS = {"hour": HOUR, "day": DAY}


@route("POST", "/v1/billing/meters", P.billing.MeterCreateParams)
def create_meter(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    name = params["event_name"]
    for m in st.all(METERS):
        if m["event_name"] == name and m["status"] == "active":
            raise StripeError(
                400,
                f"An active meter with event_name `{name}` already exists.",
                param="event_name",
            )
    formula = params["default_aggregation"]["formula"]
    if formula not in ("sum", "count", "last"):
        raise StripeError(
            400,
            f"Invalid default_aggregation[formula]: {formula}",
            param="default_aggregation[formula]",
        )
    now = st.real_now()
    meter = st.create(
        stripe.billing.Meter,
        "mtr",
        object=METERS,
        created=now,
        updated=now,
        display_name=params["display_name"],
        event_name=name,
        event_time_window=params.get("event_time_window") or None,
        customer_mapping=params.get("customer_mapping")
        or {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        default_aggregation={"formula": formula},
        value_settings=params.get("value_settings") or {"event_payload_key": "value"},
        status="active",
        status_transitions={"deactivated_at": None},
    )
    emit(st, "billing.meter.created", meter, created=now)
    return meter


@route("GET", "/v1/billing/meters/{id}", P.billing.MeterRetrieveParams)
def get_meter(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get(METERS, id)


@route("GET", "/v1/billing/meters", P.billing.MeterListParams)
def list_meters(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    items = ctx.state.all(METERS)
    if params.get("status"):
        items = [m for m in items if m["status"] == params["status"]]
    return list_object(items, "/v1/billing/meters", params)


@route("POST", "/v1/billing/meters/{id}", P.billing.MeterModifyParams)
def update_meter(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    m = ctx.state.get(METERS, id)
    before = copy.deepcopy(m)
    if "display_name" in params:
        m["display_name"] = params["display_name"]
        m["updated"] = ctx.state.real_now()
    emit(ctx.state, "billing.meter.updated", m, before=before)
    return m


def _set_status(ctx: Ctx, id: str, status: str) -> dict[str, Any]:
    m = ctx.state.get(METERS, id)
    now = ctx.state.real_now()
    m["status"] = status
    m["status_transitions"] = {"deactivated_at": now if status == "inactive" else None}
    m["updated"] = now
    emit(
        ctx.state,
        "billing.meter.deactivated" if status == "inactive" else "billing.meter.reactivated",
        m,
        created=now,
    )
    return m


@route("POST", "/v1/billing/meters/{id}/deactivate", P.billing.MeterDeactivateParams)
def deactivate_meter(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return _set_status(ctx, id, "inactive")


@route("POST", "/v1/billing/meters/{id}/reactivate", P.billing.MeterReactivateParams)
def reactivate_meter(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return _set_status(ctx, id, "active")


# ---- meter events ------------------------------------------------------------------------------


def meter_for_event(state: SandboxState, event_name: str) -> dict[str, Any] | None:
    for m in state.all(METERS):
        if m["event_name"] == event_name:
            return m
    return None


@route("POST", "/v1/billing/meter_events", P.billing.MeterEventCreateParams)
def create_meter_event(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    payload = params["payload"]
    if not isinstance(payload, dict):
        raise StripeError(400, "Invalid object", param="payload")
    meter = meter_for_event(st, params["event_name"])
    cust_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
    value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
    customer = payload.get(cust_key)
    if meter is not None and not customer:
        raise StripeError(
            400,
            f"Missing customer mapping key `{cust_key}` in payload.",
            param=f"payload[{cust_key}]",
            code="meter_event_no_customer_defined",
        )
    if meter is not None and meter["default_aggregation"]["formula"] != "count":
        raw = payload.get(value_key)
        try:
            Decimal(str(raw))
        except (InvalidOperation, ValueError) as e:
            raise StripeError(
                400,
                f"Invalid value `{raw}` for payload key `{value_key}`: must be a number.",
                param=f"payload[{value_key}]",
                code="meter_event_invalid_value",
            ) from e
    now = customer_now(st, customer)
    ts = params.get("timestamp", now)
    if ts < now - PAST_LIMIT:
        raise StripeError(
            400,
            "Timestamp must be within the past 35 calendar days.",
            param="timestamp",
            code="timestamp_too_far_in_past",
        )
    if ts > now + FUTURE_LIMIT:
        raise StripeError(
            400,
            "Timestamp must be no more than 5 minutes in the future.",
            param="timestamp",
            code="timestamp_in_future",
        )
    identifier = params.get("identifier") or str(uuid.UUID(int=st.rng.getrandbits(128)))
    real = st.real_now()
    seen = st.data.meter_identifiers.get(identifier)
    if seen is not None and real - seen < st.settings.meter_identifier_ttl_seconds:
        raise StripeError(
            400,
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    st.data.meter_identifiers[identifier] = real
    st.data.meter_events.append(
        {
            "event_name": params["event_name"],
            "identifier": identifier,
            "payload": dict(payload),
            "timestamp": ts,
            "received": real,
            "seq": len(st.data.meter_events),
            "canceled": False,
        }
    )
    return {
        "object": "billing.meter_event",
        "created": now,
        "event_name": params["event_name"],
        "identifier": identifier,
        "livemode": False,
        "payload": dict(payload),
        "timestamp": ts,
    }


@route("POST", "/v1/billing/meter_event_adjustments", P.billing.MeterEventAdjustmentCreateParams)
def create_adjustment(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    if params["type"] != "cancel":
        raise StripeError(400, "Invalid type: must be cancel.", param="type")
    ident = (params.get("cancel") or {}).get("identifier")
    if not ident:
        raise StripeError(
            400,
            "Missing required param: cancel[identifier].",
            param="cancel[identifier]",
            code="parameter_missing",
        )
    matches = [
        e
        for e in st.data.meter_events
        if e["identifier"] == ident and e["event_name"] == params["event_name"]
    ]
    if not matches:
        raise StripeError(
            400,
            f"No meter event found with identifier {ident}.",
            param="cancel[identifier]",
            code="resource_missing",
        )
    ev = matches[-1]
    if st.real_now() - ev["received"] > 24 * 3600:
        raise StripeError(
            400,
            "Meter events can only be canceled within 24 hours of being received.",
            param="cancel[identifier]",
        )
    ev["canceled"] = True
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": ident},
        "event_name": params["event_name"],
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }


# ---- aggregation -------------------------------------------------------------------------------


def _events_for(
    state: SandboxState, meter: dict[str, Any], customer: str, start: int, end: int
) -> list[dict[str, Any]]:
    ck = meter["customer_mapping"]["event_payload_key"]
    mine = index_of(state.data).events(state.data.meter_events, meter["event_name"], ck, customer)
    evs = [e for e in mine if not e["canceled"]]
    window = WINDOWS.get(meter.get("event_time_window") or "")
    if window:
        # docs.stripe.com/billing/subscriptions/usage-based/recording-usage ("Event
        # ingestion"): for pre-aggregated meters "Stripe only uses the most recently received
        # meter event. A newer event sent within the same hourly or daily window overwrites
        # the previous one. The hour and day boundaries are based on the meter event timestamp
        # in UTC." The docs are silent on a window that a period boundary cuts; the stricter
        # reading is kept: the window's newest event replaces the older one for every period
        # (a finalized invoice keeps the quantity it counted when it finalized).
        latest: dict[int, dict[str, Any]] = {}
        for e in evs:  # receipt order: the last received in a window wins
            latest[e["timestamp"] // window] = e
        evs = list(latest.values())
    return [e for e in evs if start <= e["timestamp"] < end]


def aggregate(
    state: SandboxState, meter: dict[str, Any], customer: str, start: int, end: int
) -> Decimal:
    evs = _events_for(state, meter, customer, start, end)
    formula = meter["default_aggregation"]["formula"]
    vk = meter["value_settings"]["event_payload_key"]

    def val(e: dict[str, Any]) -> Decimal:
        try:
            return Decimal(str(e["payload"].get(vk)))
        except (InvalidOperation, ValueError):
            return Decimal(0)

    if formula == "count":
        return Decimal(len(evs))
    if formula == "last":
        if not evs:
            return Decimal(0)
        return val(max(evs, key=lambda e: (e["timestamp"], e["seq"])))
    return sum((val(e) for e in evs), Decimal(0))


@route("GET", "/v1/billing/meters/{id}/event_summaries", P.billing.MeterListEventSummariesParams)
def event_summaries(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    meter = st.get(METERS, id)
    start, end = params["start_time"], params["end_time"]
    grouping = params.get("value_grouping_window")
    step = WINDOWS.get(grouping or "") or 60
    for name, v in (("start_time", start), ("end_time", end)):
        if v % step:
            unit = grouping or "minute"
            raise StripeError(400, f"{name} must be aligned with {unit} boundaries.", param=name)
    if end <= start:
        raise StripeError(400, "end_time must be after start_time.", param="end_time")
    bounds = [(start, end)]
    if grouping:
        bounds = [(t, min(t + step, end)) for t in range(start, end, step)]
    out = []
    for s, e in reversed(bounds):  # newest first
        out.append(
            {
                "id": f"mtrusg_{id[4:]}_{s}",
                "object": "billing.meter_event_summary",
                "aggregated_value": float(aggregate(st, meter, params["customer"], s, e)),
                "start_time": s,
                "end_time": e,
                "livemode": False,
                "meter": id,
            }
        )
    return list_object(out, f"/v1/billing/meters/{id}/event_summaries", params)
