"""The sandbox instance keeps each run's step output for the UI without a process per stream."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
from billing_sandbox.compute_logs import FileComputeLogManager
from dagster._core.storage.compute_log_manager import ComputeIOType


def _children() -> list[str]:
    """The command lines of this process's children (the session's services among them)."""
    pids: list[str] = []
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    return [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in pids]


def _mirroring(children: list[str]) -> list[str]:
    """The children that echo captured output: `tail -F` and the watchers of its orphaning."""
    return [c for c in children if c.startswith("tail ") or "watch_orphans" in c]


@dg.op
def speak() -> list[str]:
    """Writes to both streams; returns this process's children while the output is captured."""
    print("said on stdout")
    print("said on stderr", file=sys.stderr)
    return _children()


@dg.job
def speaking_job() -> None:
    """One step that writes to stdout and stderr."""
    speak()


def _run(instance: dg.DagsterInstance) -> tuple[list[str], str, str]:
    """Run the job; its step's children, and the stdout and stderr the UI would show."""
    result = speaking_job.execute_in_process(instance=instance)
    assert result.success
    children = result.output_for_node("speak")
    (captured,) = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
    assert captured.dagster_event is not None
    manager = instance.compute_log_manager
    # The key the UI builds from the run's event to read the captured output.
    log_key = manager.build_log_key_for_run(
        result.run_id, captured.dagster_event.logs_captured_data.file_key
    )
    data = manager.get_log_data(log_key)
    out = (data.stdout or b"").decode()
    err = (data.stderr or b"").decode()
    assert manager.is_capture_complete(log_key)
    assert manager.get_log_data_for_type(log_key, ComputeIOType.STDOUT, 0, None)[0] == data.stdout
    return children, out, err


def test_the_sandbox_instance_captures_step_output_without_tail_processes(
    embedded_services: dict[str, str],
) -> None:
    # The instance `billing sandbox up` configures (the demo's, the month's, the UI's).
    instance = dg.DagsterInstance.get()
    assert type(instance.compute_log_manager) is FileComputeLogManager
    assert Path(instance.compute_log_manager.inst_data.config_dict["base_dir"]).parent == Path(  # type: ignore[union-attr]
        embedded_services["DAGSTER_HOME"]
    )
    children, out, err = _run(instance)
    assert _mirroring(children) == []
    assert "said on stdout" in out and "said on stderr" not in out
    assert "said on stderr" in err and "said on stdout" not in err


def test_dagster_s_own_manager_starts_the_processes_the_sandbox_leaves_out(
    embedded_services: dict[str, str],
) -> None:
    # What the sandbox's manager is measured against: the same run on Dagster's default manager.
    storage = {"postgres": {"postgres_url": embedded_services["DAGSTER_POSTGRES_URL"]}}
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        assert type(instance.compute_log_manager) is not FileComputeLogManager
        children, out, err = _run(instance)
    mirroring = _mirroring(children)
    assert len(mirroring) == 4  # per stream, a `tail -F` and its watcher
    assert sum(c.startswith("tail -F") for c in mirroring) == 2
    assert "said on stdout" in out and "said on stderr" in err
