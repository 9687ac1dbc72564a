"""Helpers shared by every test folder (not fixtures: plain functions and constants)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

import stripe

if TYPE_CHECKING:
    from billing_sandbox.stripe import SandboxState

T = TypeVar("T")

# A test-mode key for the in-process Stripe sandbox; it grants nothing anywhere else.
API_KEY = "sk_test_sandbox_contract"


def present(value: T | None) -> T:
    """A field the API must have filled in here: the test fails if it came back null."""
    assert value is not None, "expected a value, got null"
    return value


def expanded(value: str | T | None) -> T:
    """A field the request asked to expand: the test fails if it came back as an id or null."""
    assert value is not None and not isinstance(value, str), f"not expanded: {value!r}"
    return value


class SimulatedCrash(BaseException):
    """The process dies: not an Exception, so nothing on the way catches it."""


def advance(
    client: stripe.StripeClient, clock_id: str, frozen_time: int, timeout: float = 10.0
) -> stripe.test_helpers.TestClock:
    """Advance a test clock through the API and poll until it is ready (like real Stripe)."""
    client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": frozen_time})
    deadline = time.monotonic() + timeout
    while True:
        clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
        if clock.status == "ready":
            return clock
        if time.monotonic() > deadline:
            raise TimeoutError(clock_id)
        time.sleep(0.01)


@contextmanager
def scratch_warehouse_url(clickhouse_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty ClickHouse database named `prefix_<random>`, dropped afterwards."""
    from billing_pipelines.lib.usage import warehouse

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = warehouse.connect(clickhouse_url)
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(clickhouse_url)._replace(path=f"/{name}"))
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


def shard_processes(parent: int | None = None) -> list[int]:
    """The processes whose parent is `parent` (default this one) running a meter push shard."""
    wanted = str(parent if parent is not None else os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == wanted and b"billing_pipelines.lib.metering.shards" in cmdline:
            found.append(int(stat.parent.name))
    return found


@contextmanager
def unthrottled_client(state: SandboxState) -> Iterator[stripe.StripeClient]:
    """A client for a test's own set-up: a second door over the same sandbox state, with no
    rate limit, so a few hundred customers take seconds instead of test mode's 25 requests a
    second. What the test then exercises still goes through the door with Stripe's limits."""
    from billing_sandbox.stripe.server import run_in_thread

    door = run_in_thread(port=0, state=state, rate_limit=None, endpoint_rate_limit=None)
    try:
        yield stripe.StripeClient(API_KEY, base_addresses={"api": door.url}, max_network_retries=0)
    finally:
        door.stop()
