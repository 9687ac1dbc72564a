"""Parallel workers (pytest-xdist, `--dist loadfile`): longest modules first, none queued behind.

This plugin (loaded by the suite's conftest) orders the modules by the seconds each took in a
recorded run of the whole suite (`module_seconds.toml` beside this file), longest first: the
simulated months and the browser test start at once, each on its own worker, and the run ends
on modules of a second or less, so no worker is left alone with a long module while the others
idle. A module the record does not know yet is placed as if it took `UNRECORDED_SECONDS`.

pytest-xdist hands a worker its next module ahead of time, as soon as at most two of its tests
are left to run: a worker that just took a module of one or two tests (the browser test) is
handed the next long module straight away, and that module then waits for the first to finish
while other workers run short ones. Here a worker whose current modules have not finished a
single test yet is handed the queue's last module (a short one, the order being longest first)
instead; the next long module goes to the first worker that is actually getting through its work.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

MODULE_SECONDS = Path(__file__).with_name("module_seconds.toml")
# Where a module missing from the record goes: ahead of the many short modules, behind the long.
UNRECORDED_SECONDS = 20.0
RECORD_OPTION = "--record-module-seconds"
ORDER_OPTION = "--module-seconds"


def read_module_seconds(path: Path = MODULE_SECONDS) -> dict[str, float]:
    """The recorded seconds per module (path relative to the repository), empty if none."""
    if not path.exists():
        return {}
    with path.open("rb") as file:
        return {module: float(seconds) for module, seconds in tomllib.load(file).items()}


def write_module_seconds(seconds: Mapping[str, float], path: Path = MODULE_SECONDS) -> None:
    """Write the record, longest first, so a reader sees at once where the suite's time goes."""
    lines = [
        "# Seconds each test module took (set-up, tests and tear-down) in a whole-suite run on",
        "# four workers. The suite runs its modules longest first; refresh with",
        f'# `make test PYTEST_ARGS="{RECORD_OPTION}"`.',
    ]
    ordered = sorted(seconds.items(), key=lambda item: (-item[1], item[0]))
    lines += [f'"{module}" = {value:.1f}' for module, value in ordered]
    path.write_text("\n".join(lines) + "\n")


def longest_first(modules: Iterable[str], seconds: Mapping[str, float]) -> list[str]:
    """Modules by recorded seconds, longest first; ties and unrecorded ones keep their order."""
    # sorted() is stable: modules of equal seconds stay in the order they came in.
    return sorted(dict.fromkeys(modules), key=lambda m: -seconds.get(m, UNRECORDED_SECONDS))


class ModuleSecondsRecorder:
    """Adds up each module's set-up, call and tear-down time as reports arrive; writes the record.

    Modules this run did not collect keep their recorded seconds, so a partial run
    (`-k`, one folder) refreshes only what it ran.
    """

    def __init__(self, path: Path = MODULE_SECONDS) -> None:
        self.path = path
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid.split("::", 1)[0]] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus != 0 or not self.seconds:
            return  # a failed run's times say little about a passing one's
        write_module_seconds({**read_module_seconds(self.path), **self.seconds}, self.path)


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        ORDER_OPTION,
        type=Path,
        default=MODULE_SECONDS,
        metavar="PATH",
        help="The recorded seconds per module the run orders its modules by (longest first).",
    )
    parser.addoption(
        RECORD_OPTION,
        type=Path,
        nargs="?",
        const=MODULE_SECONDS,
        default=None,
        metavar="PATH",
        help="After a passing run, record each module's seconds there (default: the record "
        "the suite orders its modules by).",
    )


def pytest_configure(config: pytest.Config) -> None:
    """On the controller (reports reach it from every worker), record when asked to."""
    path = config.getoption(RECORD_OPTION)
    if path is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(ModuleSecondsRecorder(path), "module_seconds_recorder")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules longest first by their recorded seconds, each kept whole, its tests in order.

    With parallel workers (`make test`: a module per worker at a time) the simulated months and
    the browser test start at once on different workers, and the run ends on short modules
    that spread evenly over the workers.
    """

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    seconds = read_module_seconds(config.getoption(ORDER_OPTION))
    rank = {name: index for index, name in enumerate(longest_first(map(module, items), seconds))}
    items.sort(key=lambda item: rank[module(item)])


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileScheduling | None:
    """The scheduler for `--dist loadfile`; other modes keep pytest-xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    return LongModulesApart(config, log)
