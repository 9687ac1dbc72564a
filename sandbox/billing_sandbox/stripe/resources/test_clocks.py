"""Test clocks: advancing one runs the billing lifecycle of its customers in time order."""

from __future__ import annotations

import threading
import time
from typing import Any

import stripe
import stripe.params as P

from .. import billing_engine as eng
from ..clock import CLOCKS
from ..router import Ctx, route
from ..store import SandboxState
from ..wire import StripeError, list_object
from .events import emit


@route("POST", "/v1/test_helpers/test_clocks", P.test_helpers.TestClockCreateParams)
def create_clock(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    clock = st.create(
        stripe.test_helpers.TestClock,
        "clock",
        object=CLOCKS,
        created=st.real_now(),
        deletes_after=st.real_now() + 30 * 86400,
        frozen_time=params["frozen_time"],
        name=params.get("name") or None,
        status="ready",
        status_details={"advancing": None},
    )
    clock.pop("deleted", None)
    clock["_now"] = None
    emit(st, "test_helpers.test_clock.created", clock)
    return clock


@route("GET", "/v1/test_helpers/test_clocks/{id}", P.test_helpers.TestClockRetrieveParams)
def get_clock(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get(CLOCKS, id)


@route("GET", "/v1/test_helpers/test_clocks", P.test_helpers.TestClockListParams)
def list_clocks(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    return list_object(ctx.state.all(CLOCKS), "/v1/test_helpers/test_clocks", params)


@route("DELETE", "/v1/test_helpers/test_clocks/{id}", P.test_helpers.TestClockDeleteParams)
def delete_clock(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    clock = st.get(CLOCKS, id)
    for cus in st.all("customer"):
        if cus.get("test_clock") == id:
            cus["deleted"] = True
    for sub in st.all("subscription"):
        if sub.get("test_clock") == id:
            sub["deleted"] = True
    clock["deleted"] = True
    emit(st, "test_helpers.test_clock.deleted", clock)
    return {"id": id, "object": CLOCKS, "deleted": True}


def start_advance(st: SandboxState, clock: dict[str, Any], target: int) -> None:
    if clock["status"] != "ready":
        raise StripeError(400, "The test clock is already advancing; wait until it is ready.")
    if target <= clock["frozen_time"]:
        raise StripeError(
            400,
            "The frozen_time must be after the current frozen_time of the test clock.",
            param="frozen_time",
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    clock["_now"] = clock["frozen_time"]
    emit(st, "test_helpers.test_clock.advancing", clock)

    def work() -> None:
        with st.lock:
            try:
                eng.run_until(st, clock, target)
            finally:
                clock["frozen_time"] = target
                clock["_now"] = None
                clock["status"] = "ready"
                clock["status_details"] = {"advancing": None}
                emit(st, "test_helpers.test_clock.ready", clock)

    threading.Thread(target=work, name=f"advance-{clock['id']}", daemon=True).start()


@route("POST", "/v1/test_helpers/test_clocks/{id}/advance", P.test_helpers.TestClockAdvanceParams)
def advance_clock(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    clock = ctx.state.get(CLOCKS, id)
    start_advance(ctx.state, clock, params["frozen_time"])
    return clock


def wait_ready(st: SandboxState, clock_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with st.lock:
            if st.table(CLOCKS)[clock_id]["status"] == "ready":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"test clock {clock_id} still advancing")
        time.sleep(0.005)


def advance_and_wait(st: SandboxState, clock_id: str, target: int, timeout: float = 10.0) -> None:
    with st.lock:
        start_advance(st, st.get(CLOCKS, clock_id), target)
    wait_ready(st, clock_id, timeout)
