"""One bucket factory for every rate limiter of the process, so one thread trims them all.

pyrate-limiter gives each `Limiter` built from a rate its own factory, and each factory starts a
thread (with its own event loop and descriptors) that outlives the limiter: a long process that
makes limiters per push and per account collected hundreds of them.
"""

from __future__ import annotations

import itertools
import threading

from pyrate_limiter import BucketFactory, InMemoryBucket, Rate, RateItem


class ProcessBuckets(BucketFactory):
    """Every limiter's bucket in the process, by name, trimmed by one shared leak thread."""

    def __init__(self) -> None:
        self._buckets: dict[str, InMemoryBucket] = {}
        self._lock = threading.Lock()
        self._names = itertools.count()

    def add(self, rate: Rate) -> str:
        """Register a new bucket for `rate` and return the name its permits are taken under."""
        name = f"limiter-{next(self._names)}"
        bucket = InMemoryBucket([rate])
        with self._lock:
            self._buckets[name] = bucket
            self.schedule_leak(bucket)
        return name

    def remove(self, name: str) -> None:
        """Forget a limiter's bucket; the leak thread ends when no bucket is left."""
        with self._lock:
            bucket = self._buckets.pop(name, None)
            if bucket is not None:
                self.dispose(bucket)

    def __len__(self) -> int:
        return len(self._buckets)

    def wrap_item(self, name: str, weight: int = 1) -> RateItem:
        return RateItem(name, self._buckets[name].now(), weight=weight)

    def get(self, item: RateItem) -> InMemoryBucket:
        return self._buckets[item.name]


BUCKETS = ProcessBuckets()
