"""A demo killed mid-run leaves runs started on the sandbox instance; the next one ends them."""

from __future__ import annotations

import dagster as dg
from billing_sandbox import month


@dg.op
def noop() -> None:
    """Nothing: the run only needs to exist."""


@dg.job
def orphan_job() -> None:
    """A job whose runs are left behind."""
    noop()


def test_runs_left_started_are_ended_and_their_pool_slots_freed() -> None:
    with dg.instance_for_test() as instance:
        left = instance.create_run_for_job(orphan_job, status=dg.DagsterRunStatus.STARTED)
        done = instance.create_run_for_job(orphan_job, status=dg.DagsterRunStatus.SUCCESS)
        storage = instance.event_log_storage
        storage.set_concurrency_slots("stripe_api", 1)
        claim = storage.claim_concurrency_slot("stripe_api", left.run_id, "noop")
        assert claim.is_claimed
        waiting = storage.claim_concurrency_slot("stripe_api", "next-run", "noop")
        assert not waiting.is_claimed  # the dead run holds the pool's only slot

        assert month._end_orphaned_runs(instance) == [left.run_id]
        left_now, done_now = (
            instance.get_run_by_id(left.run_id),
            instance.get_run_by_id(done.run_id),
        )
        assert left_now is not None and left_now.status == dg.DagsterRunStatus.FAILURE
        assert done_now is not None and done_now.status == dg.DagsterRunStatus.SUCCESS
        assert storage.claim_concurrency_slot("stripe_api", "next-run", "noop").is_claimed
        assert month._end_orphaned_runs(instance) == []
