"""The `billing` command in a process of its own, forked from one that has already imported it.

Every call is a new process with its own environment, arguments, standard streams and exit
status, as `python -m billing_pipelines.cli` gives. Only the imports are shared: the suite runs
the command about a hundred times, and importing Dagster, the Stripe SDK and the code location
costs about one and a half seconds of CPU each time. multiprocessing's fork server imports them
once per test worker (`cli_preload`) and forks a child per call; the child then sets its
environment, points its stdout and stderr at files and runs `billing_pipelines.cli.main`,
exactly what the installed `billing` script runs. The code location's own modules are left for
each call to import, because they read a setting when imported (the first partition day); the
modules kept read nothing from the environment at import, so a call sees what a fresh
interpreter would, except the warnings those modules raise when imported.
"""

from __future__ import annotations

import atexit
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

COMMAND = [sys.executable, "-m", "billing_pipelines.cli"]


def location_modules() -> list[str]:
    """The code location's own modules (billing_pipelines.defs), named from its files."""
    spec = importlib.util.find_spec("billing_pipelines")
    assert spec is not None and spec.submodule_search_locations
    package = Path(spec.submodule_search_locations[0])
    return [
        ".".join(path.relative_to(package.parent).with_suffix("").parts)
        for path in sorted((package / "defs").rglob("*.py"))
        if path.name != "__init__.py"
    ]


_context: multiprocessing.context.ForkServerContext | None = None


def _fork_server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["billing_pipelines_tests.cli_preload"])
        _context = context
    return _context


def _child(args: Sequence[str], env: Mapping[str, str], out: str, err: str) -> None:
    """Become `billing ARGS` with ENV, as an interpreter started for it would, and exit."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    import billing_pipelines.cli as cli

    # The name the installed `billing` script runs under, which click's usage lines show.
    sys.argv = ["billing", *args]
    code: int
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        # The interpreter's own rules for an exit status.
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # What an interpreter does on its way out: exit handlers, then the buffered output.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_billing(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`billing ARGS` with exactly ENV, as `subprocess.run(..., capture_output=True, text=True)`."""
    argv = [*COMMAND, *args]
    with tempfile.TemporaryDirectory(prefix="billing-cli-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        process = _fork_server().Process(
            target=_child, args=(list(args), dict(env), str(out), str(err))
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
        code = process.exitcode
        assert code is not None
        # A child killed by a signal reads as -N, as subprocess reports it.
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())
