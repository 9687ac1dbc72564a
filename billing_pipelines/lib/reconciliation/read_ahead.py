"""Reads started ahead in a few threads, each awaited where its answer is needed.

The usage audit asks Stripe for each invoice line's meter summaries (paced by Stripe's
per-endpoint limit) and the warehouse for the line's truth (a query), one line after the
other. The two wait on different services, so the Stripe reads go ahead in threads while the
caller queries the warehouse: the same requests, the same answers, overlapped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadAhead(Generic[K, V]):
    """`read(key)` for each key, once, started in order by `workers` threads; `get` awaits one.

    A read's error is raised by `get` for that key only, where the caller would have met it.
    A key that was not given is read when asked for. `close` (or leaving the `with` block)
    drops the reads not yet started and waits for those running.
    """

    def __init__(self, read: Callable[[K], V], keys: Iterable[K], *, workers: int = 4) -> None:
        self._read = read
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-ahead")
        self._futures: dict[K, Future[V]] = {}
        for key in keys:
            if key not in self._futures:
                self._futures[key] = self._pool.submit(read, key)

    def get(self, key: K) -> V:
        """The answer for `key` (waiting for its read; reading it now if it was not given)."""
        if key not in self._futures:
            self._futures[key] = self._pool.submit(self._read, key)
        return self._futures[key].result()

    def close(self) -> None:
        """Drop the reads not started, wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadAhead[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
