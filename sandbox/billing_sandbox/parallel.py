"""Independent pieces of the simulated month's work, done a few at a time in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

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


class Background(Generic[R]):
    """`work()` on a daemon thread from now on; `result()` waits for it and returns or raises.

    A daemon thread: if the caller fails first, the process can still exit without waiting.
    """

    def __init__(self, work: Callable[[], R], name: str) -> None:
        self._outcome: list[tuple[bool, object]] = []

        def run() -> None:
            try:
                self._outcome.append((True, work()))
            except BaseException as exc:  # handed to whoever asks for the result
                self._outcome.append((False, exc))

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def result(self) -> R:
        """The work's return value, once it has finished (its exception, if it raised)."""
        self._thread.join()
        ok, value = self._outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]
