"""Independent pieces of the simulated month's work, done a few at a time in threads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def each_in_threads(items: Sequence[T], work: Callable[[T], R], workers: int) -> list[R]:
    """`work` on every item, up to `workers` at once; results in the items' order.

    The first error (in the items' order) is raised once every item already started has
    finished; items not started by then are not started (none is left half done).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="month") as pool:
        return list(pool.map(work, items))
