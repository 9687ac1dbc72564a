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
from collections.abc import Iterator
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

    Processes are spawned (not forked: the run's process has threads and open connections).
    """
    # Imported here: the Dagster definitions import this module, and only a sharded push needs it.
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    parts = split(reports, shards)
    share = pace.share(shards)
    shard_target = ShardTarget(target.stripe.share(shards), target.database_url)
    jobs = [ShardJob(i, part, share, shard_target) for i, part in enumerate(parts) if part]
    total = SendTally()
    if not jobs:
        return total
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        running = {pool.submit(push_shard, job): job for job in jobs}
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    tally = future.result()
                    total.add(tally)
                    log.info(
                        "shard %d/%d: %d meter events answered (%d delivered, %d failed)",
                        job.index + 1,
                        shards,
                        len(job.reports),
                        tally.outcomes.delivered,
                        tally.outcomes.failed,
                    )
        except BrokenProcessPool as exc:
            # The pool stops every shard when one process dies; each one's answered events
            # are confirmed up to its last batch, the rest stay pending for the re-run.
            raise ShardLost(
                f"a meter push shard's process died ({len(running)} of {len(jobs)} shards had "
                "not finished); their unconfirmed ledger rows stay pending: re-run the "
                "partition to send them (same identifiers, no double count)"
            ) from exc
    return total
