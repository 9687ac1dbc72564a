"""A day's meter push split by tenant across processes, under one Stripe budget.

One Python process tops out below Stripe's live meter-event limit (the SDK and the transport
hold the GIL for about a millisecond of CPU per event), so a push at a higher rate sends its
events from `shards` processes. Each tenant belongs to one shard by a stable hash of its id
(the same shard in every run and process), and each shard gets 1/shards of the rate and of
the client's budgets, so the shards together never exceed the account's limits.

The ledger's rules do not change: every row is pending (committed by the run) before any
shard starts, and each shard confirms its own rows after Stripe answered them. A shard whose
process dies leaves its unanswered rows pending; the run fails and a re-run re-sends them
with the same identifiers (Stripe recognises each one: no double count).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.planning import MeterReport
from billing_pipelines.lib.metering.push import EventSender, Pace, SendTally, ShardTarget

# Meter events per second one push process is given before the push is sharded: one process
# spends about 1 ms of client CPU per event (BENCHMARKS.md, "Meter reporting"), so 500/s keeps
# it at about half a core, with room for a loaded host; Stripe's live default share (400/s)
# stays in one process.
RATE_PER_SHARD = 500.0
# Events a shard must have to be worth its process: spawning one and importing the client
# costs one to a few seconds of CPU, about what a thousand events cost in the run's process.
EVENTS_PER_SHARD = 2000


class ShardLost(RuntimeError):
    """A shard's process died before it reported: its unanswered ledger rows are pending."""


@dataclass(frozen=True)
class ShardFailed:
    """What a shard's process answers instead of its tally when its push raised."""

    error: str  # the exception's class and message (never the database URL or the API key)


def shard_of(tenant_id: str, shards: int) -> int:
    """The shard a tenant's events go to: a stable hash of its id (not Python's salted hash)."""
    digest = hashlib.blake2b(tenant_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shards_for(rate: float, events: int, cpus: int | None = None) -> int:
    """Processes a push of `events` at `rate` events/s needs: one per RATE_PER_SHARD of the
    rate, at most one per CPU and one per EVENTS_PER_SHARD events (1 for a small day)."""
    cpus = cpus or os.cpu_count() or 1
    by_rate = math.ceil(rate / RATE_PER_SHARD)
    return max(1, min(cpus, by_rate, events // EVENTS_PER_SHARD))


def split(reports: list[MeterReport], shards: int) -> list[list[MeterReport]]:
    """The reports of each shard, in the push's order (a tenant's events all in one shard)."""
    parts: list[list[MeterReport]] = [[] for _ in range(shards)]
    for report in reports:
        parts[shard_of(report.tenant_id, shards)].append(report)
    return parts


@dataclass(frozen=True)
class ShardJob:
    """One shard's work, sent to its process: its reports, its pace, where to send and confirm."""

    index: int
    reports: list[MeterReport]
    pace: Pace
    target: ShardTarget = field(repr=False)


def push_shard(job: ShardJob) -> SendTally:
    """Send one shard's events from this process (its own Stripe client and ledger connection)."""
    import psycopg
    from psycopg.rows import dict_row

    client = job.target.stripe.build()
    with psycopg.connect(job.target.database_url, autocommit=True, row_factory=dict_row) as conn:

        @contextmanager
        def transaction() -> Iterator[ledger.Conn]:
            with conn.transaction():
                yield conn

        return EventSender(client, transaction).send(job.reports, job.pace)


def send_sharded(
    reports: list[MeterReport],
    pace: Pace,
    shards: int,
    target: ShardTarget,
    log: logging.Logger,
) -> SendTally:
    """Send `reports` from `shards` processes, each with its share of the budget; the sum.

    The first shard is sent from this process (it is idle while the others send, and has the
    SDK and the ledger's driver loaded already); every other shard is a fresh interpreter
    running this module (`python -m`), given its job on stdin and answering its tally on
    stdout: it imports the client and the ledger only, not whatever the run's process was
    started from (a multiprocessing spawn re-imports the parent's main module, Dagster and
    all, about as much CPU as a thousand meter events). A shard that dies or fails does not
    stop the others: they finish and confirm their rows.
    """
    parts = split(reports, shards)
    share = pace.share(shards)
    shard_target = ShardTarget(target.stripe.share(shards), target.database_url)
    jobs = [ShardJob(i, part, share, shard_target) for i, part in enumerate(parts) if part]
    if not jobs:
        return SendTally()
    local, remote = jobs[0], jobs[1:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    running = []
    for job in remote:
        # The interpreter running this process; the command is fixed (with this process's id, so
        # the shard stops when this process dies), its job comes on stdin.
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        running.append((job, process))
    # One thread sends this process's shard; one per other shard hands it its job and waits for
    # its answer, so every shard starts at once and one that dies is noticed whatever the others
    # do.
    with ThreadPoolExecutor(max_workers=1 + len(running), thread_name_prefix="shard") as waiters:
        here = waiters.submit(_push_here, local)
        answers = list(waiters.map(lambda jp: _answer(jp[0], jp[1]), running))
        answers.insert(0, here.result())
    total = SendTally()
    lost: list[str] = []
    for job, child, tally in zip(jobs, [None, *(p for _, p in running)], answers, strict=True):
        if isinstance(tally, ShardFailed):
            lost.append(f"shard {job.index + 1} failed: {tally.error}")
            continue
        if tally is None:
            returncode = child.returncode if child is not None else None
            lost.append(f"shard {job.index + 1} exited with {returncode}")
            continue
        total.add(tally)
        log.info(
            "shard %d/%d: %d meter events answered (%d delivered, %d failed)",
            job.index + 1,
            shards,
            len(job.reports),
            tally.outcomes.delivered,
            tally.outcomes.failed,
        )
    if lost:
        raise ShardLost(
            f"a meter push shard's process died or failed ({'; '.join(lost)}; {len(lost)} of "
            f"{len(jobs)} shards); the rows it had not confirmed stay pending: re-run the "
            "partition to send them (same identifiers, no double count)"
        )
    return total


def _push_here(job: ShardJob) -> SendTally | ShardFailed:
    """Send one shard from this process, with its own client (its share of the budget) and
    its own ledger connection, as a shard's process would; its error as a shard's would be."""
    try:
        return push_shard(job)
    except Exception as exc:  # named in the run's failure, as another shard's would be
        return ShardFailed(_error_line(exc))


def _error_line(exc: BaseException) -> str:
    """A shard's error for the run's failure: its class and message."""
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def _answer(job: ShardJob, process: subprocess.Popen[bytes]) -> SendTally | ShardFailed | None:
    """Give a shard's process its job and wait for its tally, or why it failed (None if it
    died without saying)."""
    try:
        answer, _ = process.communicate(pickle.dumps(job))
    except BrokenPipeError:  # it died before it read its job
        process.wait()
        return None
    if not answer:
        return None
    told: SendTally | ShardFailed = pickle.loads(answer)  # our own child's answer
    if process.returncode != 0 and not isinstance(told, ShardFailed):
        return None
    return told


# prctl(2): PR_SET_PDEATHSIG, the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def stop_with_parent(parent: int) -> None:
    """End this process when `parent` (the run that started it) dies, so a shard whose run was
    killed does not go on sending as an orphan. Its unconfirmed rows stay pending, as for any
    crash, and the next run re-sends them with the same identifiers.

    On Linux the kernel sends SIGTERM on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere
    a daemon thread notices the change of parent within PARENT_POLL_SECONDS. Either way a parent
    that died before this ran is caught by the check of the current parent.
    """
    import signal
    import threading

    # An ignored signal stays ignored across fork and exec: a shard started under a parent that
    # ignores SIGTERM (some process supervisors and test runners do) would outlive its run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # it died before the signal was armed: nobody to answer
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve_one_job(parent: int | None) -> None:
    """A shard's process: read the job from stdin, push it, write the tally to stdout (or, if
    the push raised, the error, so the run names it)."""
    if parent is not None:
        stop_with_parent(parent)
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the answer
    job: ShardJob = pickle.load(sys.stdin.buffer)
    try:
        told: SendTally | ShardFailed = push_shard(job)
    except Exception as exc:  # handed to the run, which fails with it
        told = ShardFailed(_error_line(exc))
    answer.write(pickle.dumps(told))
    answer.close()
    if isinstance(told, ShardFailed):
        sys.exit(1)


if __name__ == "__main__":
    # Through the module's importable name, so what it answers (a ShardFailed) unpickles in the
    # run as `billing_pipelines.lib.metering.shards.ShardFailed`, not as a class of `__main__`.
    from billing_pipelines.lib.metering import shards

    shards._serve_one_job(int(sys.argv[1]) if len(sys.argv) > 1 else None)
