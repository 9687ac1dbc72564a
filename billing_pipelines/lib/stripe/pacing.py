"""Concurrent, rate-limited work against a rate-limited API, with retries and progress.

Pacing is pyrate-limiter's sliding-window limiter shared by every worker thread; each attempt,
retries included, takes a permit, so the request rate never exceeds the configured limit.

Every limiter of the process keeps its bucket in one bucket factory, so one background thread trims
them all: a factory per limiter starts a thread (with its own event loop and descriptors) for each,
and those threads outlived their limiters, hundreds of them over a long process.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

T = TypeVar("T")
R = TypeVar("R")

_END = object()  # the end of a paced run's items

# Stripe's documented limits (requests per second) and the share of them we use by default:
# other jobs (webhook handlers, reconciliation) use the same account at the same time.
STRIPE_TEST_MODE_LIMIT = 25.0
STRIPE_LIVE_METER_EVENTS_LIMIT = 1000.0
DEFAULT_TEST_MODE_RATE = 20.0
DEFAULT_LIVE_MODE_RATE = 400.0
# Stripe's answer time to plan for when choosing worker threads: each worker waits for its
# answer, so a push keeps rate x latency requests in flight to use its rate (a few hundred
# milliseconds over the internet; far less against a local sandbox, where more workers are
# only idle threads).
PLANNED_LATENCY_SECONDS = 0.25
MIN_WORKERS = 8
MAX_WORKERS = 256


def workers_for(per_second: float, latency_seconds: float = PLANNED_LATENCY_SECONDS) -> int:
    """Worker threads that keep `per_second` requests going when each takes `latency_seconds`."""
    return max(MIN_WORKERS, min(MAX_WORKERS, math.ceil(per_second * latency_seconds)))


def default_rate(api_key: str) -> float:
    """Requests per second for an account: a safe share of Stripe's test or live limit."""
    live = api_key.startswith(("sk_live_", "rk_live_"))
    return DEFAULT_LIVE_MODE_RATE if live else DEFAULT_TEST_MODE_RATE


class RateLimiter:
    """A blocking limiter of `per_second` acquisitions per second, shared across threads."""

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError(f"rate must be > 0, got {per_second}")
        self.per_second = per_second
        # Imported here: the Dagster definitions import this module, and only a client needs it.
        from pyrate_limiter import Duration, Limiter, Rate

        from billing_pipelines.lib.stripe.buckets import BUCKETS

        if per_second >= 1:
            rate = Rate(int(per_second), Duration.SECOND)
        else:
            rate = Rate(1, int(1000 / per_second))
        self._name = BUCKETS.add(rate)
        self._limiter = Limiter(BUCKETS, buffer_ms=5)
        # The bucket goes when the limiter does, whoever forgets to close it.
        self._finalizer = weakref.finalize(self, BUCKETS.remove, self._name)

    def acquire(self) -> None:
        """Block until one more request may start."""
        self._limiter.try_acquire(self._name, blocking=True)

    def close(self) -> None:
        """Release the limiter's bucket now rather than when it is garbage collected."""
        self._finalizer()


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff with jitter for retryable failures."""

    attempts: int = 6
    initial_seconds: float = 0.5
    max_seconds: float = 20.0


@dataclass
class Progress:
    """Where a long push is, for progress logs."""

    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Completed items per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self, what: str) -> str:
        """One human line: counts, percent, rate and time left."""
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / self.rate if self.rate else 0.0
        return (
            f"{what}: {self.done:,}/{self.total:,} ({pct:.0f}%), "
            f"{self.rate:.1f}/s, about {eta:.0f}s left"
        )


def run_paced(
    items: Iterable[T],
    call: Callable[[T], R],
    on_result: Callable[[T, R], object],
    *,
    limiter: RateLimiter | None,
    retryable: type[BaseException] | tuple[type[BaseException], ...],
    retry: RetryPolicy = RetryPolicy(),
    workers: int = 8,
    on_progress: Callable[[Progress], object] = lambda p: None,
    progress_every_seconds: float = 10.0,
) -> list[tuple[T, BaseException]]:
    """Call `call(item)` for every item on `workers` threads, paced and retried.

    `on_result` runs on the calling thread as results complete (e.g. to confirm a ledger row):
    if it raises, no new work starts and the exception propagates. Items whose retries ran out
    are returned with their last error; other exceptions from `call` propagate. `limiter` None:
    `call` is paced by itself (e.g. by the client's own budget: `meters.event_limiter`).
    """
    todo = list(items)
    failures: list[tuple[T, BaseException]] = []
    retrying = Retrying(
        retry=retry_if_exception_type(retryable),
        wait=wait_exponential_jitter(multiplier=retry.initial_seconds, max=retry.max_seconds),
        stop=stop_after_attempt(retry.attempts),
        reraise=True,
    )

    def attempt(item: T) -> R:
        if limiter is not None:
            limiter.acquire()
        return call(item)

    def attempts(item: T, retried: Retrying) -> R:
        # The first attempt goes without tenacity's bookkeeping (most items need no other); a
        # retryable failure is handed to the retry loop as its own first attempt, so the
        # attempts and the waits are the policy's exactly.
        try:
            return attempt(item)
        except retryable as first:
            failed: list[BaseException] = [first]

            def again() -> R:
                if failed:
                    raise failed.pop()
                return attempt(item)

            return retried(again)

    # Workers pull the next item from one shared iterator and hand each answer back through one
    # queue: no future, waiter or executor hand-off per item (at 1,000 events/s those cost the
    # calling thread more than the call's own bookkeeping), and at most `workers` items are in
    # flight when a crash or a failed confirmation stops the run.
    source = iter(todo)
    source_lock = threading.Lock()
    stop = threading.Event()
    answers: queue.SimpleQueue[tuple[T, bool, object] | None] = queue.SimpleQueue()

    def work() -> None:
        retried = retrying.copy()  # one per thread: a Retrying keeps per-call state
        try:
            while not stop.is_set():
                with source_lock:
                    item = next(source, _END)
                if item is _END:
                    return
                try:
                    answers.put((item, True, attempts(item, retried)))  # type: ignore[arg-type]
                except BaseException as exc:  # handed to the calling thread, which decides
                    answers.put((item, False, exc))  # type: ignore[arg-type]
        finally:
            answers.put(None)

    threads = [
        threading.Thread(target=work, name=f"paced-{i}", daemon=True)
        for i in range(max(1, min(workers, len(todo))))
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    last_report = started
    done = 0
    running = len(threads)
    try:
        while running:
            answer = answers.get()
            if answer is None:
                running -= 1
                continue
            item, ok, value = answer
            if ok:
                on_result(item, value)  # type: ignore[arg-type]
            elif isinstance(value, retryable):
                failures.append((item, value))
            else:
                raise cast(BaseException, value)
            done += 1
            now = time.monotonic()
            if now - last_report >= progress_every_seconds and done < len(todo):
                last_report = now
                on_progress(Progress(done, len(todo), now - started))
    finally:
        stop.set()  # no new work; the calls in flight finish before this returns or raises
        for thread in threads:
            thread.join()
    on_progress(Progress(done, len(todo), time.monotonic() - started))
    return failures
