"""Parallel workers (pytest-xdist, `--dist loadfile`): a long module never queues behind another.

The suite's conftest puts the long modules first (the simulated months, the browser test), so
each starts at once on its own worker. pytest-xdist, though, hands a worker its next module
ahead of time, as soon as at most two of its tests are left to run: a worker that just took a
module of one or two tests (the browser test) is handed the next long module straight away,
and that module then waits for the first to finish while other workers run short ones. Here a
worker whose current modules have not finished a single test yet is handed the queue's last
module (a short one, the suite's order being longest first) instead; the next long module goes
to the first worker that is actually getting through its work.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling


def takes_from_the_tail(work: dict[str, dict[str, bool]]) -> bool:
    """Whether a worker with this work (module -> test -> done) gets the queue's last module.

    True while its unfinished modules exist and none of their tests has finished yet: the
    worker is still at the start of what it holds, so a long module given now would wait.
    """
    unfinished = [tests for tests in work.values() if not all(tests.values())]
    return bool(unfinished) and not any(any(tests.values()) for tests in unfinished)


class LongModulesApart(LoadFileScheduling):
    """`--dist loadfile`, handing a worker that has not got going a short module, not a long one."""

    def _assign_work_unit(self, node: Any) -> None:
        if len(self.workqueue) > 1 and takes_from_the_tail(self.assigned_work.get(node, {})):
            # The parent pops the queue's first module: put the last one there.
            scope = next(reversed(self.workqueue))
            self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileScheduling | None:
    """The scheduler for `--dist loadfile`; other modes keep pytest-xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    return LongModulesApart(config, log)
