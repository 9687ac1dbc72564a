"""The simulated month's usage drawn in a process of its own, while the month signs tenants up.

Onboarding and the webhook runs after it mostly wait on Stripe's pacing and read nothing from
the warehouse, and drawing a month of usage is CPU work in the generator and in the warehouse.
A thread would share the month's interpreter lock with the Stripe sandbox and the runs; a
process does not, so the two overlap on separate cores. The month is drawn day by day and
each stored day is reported, so the month waits before a day's push only for that day's rows
(and the next day's, which its clock has entered), not for the whole month.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from multiprocessing.connection import Connection
from typing import Any

from billing_sandbox.usage_generator import GenerationSummary

# The drawing yields the cores to the month's own work: the webhook runs after the sign-ups
# are CPU-bound and on the month's critical path, while the drawing has until the clock enters
# each day, and the month's waits on Stripe's pacing leave idle CPU to draw in.
NICENESS = 10

# Spawned, not forked: the month's process runs the Stripe sandbox, the webhook receiver and
# database pools in threads, and a fork copies their locks in whatever state they were in.
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Drawn:
    """What the generation process inserted, and how long it took there."""

    summary: GenerationSummary
    seconds: float


class GenerationFailed(RuntimeError):
    """The generation process raised, or ended without a result."""


@dataclass
class GenerationJob:
    """Usage being drawn into the warehouse by a child process, day by day."""

    process: multiprocessing.process.BaseProcess
    results: Connection
    stored_through: date | None = None  # every row of this day and the days before is stored
    _drawn: Drawn | None = None

    def wait_through(self, day: date) -> None:
        """Wait until every row of `day` and the days before it is stored.

        A day after the drawn window is stored once the drawing is done (it has no rows).
        """
        while self._drawn is None and (self.stored_through is None or self.stored_through < day):
            self._receive()

    def result(self) -> Drawn:
        """Wait for the drawing to finish; its error, or the process's exit, is raised here."""
        while self._drawn is None:
            self._receive()
        return self._drawn

    def _receive(self) -> None:
        """One message from the child: a day stored, the summary, or its error."""
        try:
            kind, value, seconds = self.results.recv()
        except EOFError:
            self.results.close()
            self.process.join()
            raise GenerationFailed(
                f"the usage generation process (pid {self.process.pid}) exited with code "
                f"{self.process.exitcode} before it reported a result"
            ) from None
        if kind == "day":
            self.stored_through = value
            return
        self.results.close()
        self.process.join()
        if kind == "error":
            raise GenerationFailed(f"usage generation failed in its process:\n{value}")
        self._drawn = Drawn(summary=value, seconds=seconds)


@contextmanager
def drawing(
    clickhouse_url: str,
    tenants: Sequence[str],
    *,
    start: date,
    days: int,
    seed: int,
    monthly_queries: Mapping[str, int] | None = None,
) -> Iterator[GenerationJob]:
    """Start `generate_usage` for these arguments in a child process; stopped on leaving."""
    receiving, sending = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(
        target=_draw,
        args=(
            sending,
            clickhouse_url,
            list(tenants),
            {"start": start, "days": days, "seed": seed, "monthly_queries": monthly_queries},
        ),
        name="usage-generation",
        # Ended with the month's process if that exits without leaving this block.
        daemon=True,
    )
    process.start()
    sending.close()  # the child holds the only sending end: its exit is seen as EOF
    try:
        yield GenerationJob(process, receiving)
    finally:
        # Left before the result was awaited (the month failed): nothing more is drawn.
        if process.is_alive():
            process.terminate()
        process.join()
        receiving.close()


def _draw(
    results: Connection, clickhouse_url: str, tenants: list[str], options: dict[str, Any]
) -> None:
    """The child's work: draw, insert, send back the summary or the error's traceback."""
    from billing_pipelines.lib.usage import warehouse
    from billing_sandbox import usage_generator

    began = time.monotonic()
    # A parent that ignores SIGTERM (as some supervisors and test runners make processes do)
    # passes that on across exec, and the month could then not stop the drawing.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.nice(NICENESS)
        client = warehouse.connect(clickhouse_url)
        try:
            summary = usage_generator.generate_usage(
                client,
                tenants,
                on_day_stored=lambda day: results.send(("day", day, time.monotonic() - began)),
                **options,
            )
        finally:
            client.close()
    except BaseException:
        results.send(("error", traceback.format_exc(), time.monotonic() - began))
    else:
        results.send(("ok", summary, time.monotonic() - began))
    finally:
        results.close()
