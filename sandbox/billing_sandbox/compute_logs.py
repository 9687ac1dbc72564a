"""The sandbox instance's step output capture: into the files the UI shows, not to the terminal.

Dagster's local compute-log manager also mirrors each run's captured output back to the
process's terminal. For that it starts, for every run and each of stdout and stderr, a `tail -F`
process and a Python process watching that `tail` for orphaning: four processes per run. A run
launched by the daemon in its own process barely notices them; the simulated month and the test
suite run most of their runs in one process, a thousand times over, and each of those Python
starts costs more CPU than many of the runs' own steps. Here a run's output still goes to the
same files (the UI's stdout and stderr views read them), only the echo to the terminal is left
out. Production instances keep Dagster's manager (the project's dagster.yaml sets none).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file


class FileComputeLogManager(LocalComputeLogManager):
    """Captures each run's stdout and stderr into the local manager's files, with no echo."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> FileComputeLogManager:
        """This class from dagster.yaml (the parent's names the parent)."""
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        """As `LocalComputeLogManager.capture_logs`, without the `tail` mirroring processes."""
        out = ensure_file(
            self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        )
        err = ensure_file(
            self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        )
        with redirect_to_file(sys.stdout, out), redirect_to_file(sys.stderr, err):
            yield CapturedLogContext(log_key)
        # The artifact that tells readers the capture is complete, as the local manager leaves.
        touch_file(self.complete_artifact_path(log_key))
