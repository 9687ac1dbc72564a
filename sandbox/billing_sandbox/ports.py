"""Loopback ports for the embedded services, each handed to one process only.

Asking the kernel for a free port (bind to port 0, close) and starting a server on it later is
check-then-use: parallel test workers starting their services at the same moment can be handed
the same port, and one of them then fails to start. So every port handed out is also written
down, under a lock, in a file all processes of a run share (in the temporary folder they
inherit, as pytest-xdist workers do), and a port written down recently is never handed out
again: the reservation lasts longer than any server takes to start and bind its port, after
which the kernel itself keeps the port from anyone else.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from filelock import FileLock

HOST = "127.0.0.1"
# Longer than an embedded server needs to start on a loaded machine and bind its port.
HOLD_SECONDS = 600.0
# Tries before giving up: the kernel hands out thousands of ports, a handful are reserved.
_ATTEMPTS = 200


def reservations_file() -> Path:
    """The ports handed out lately, with when: in the temporary folder a run's processes share.

    One file per user: another user's file in a shared /tmp could be neither locked nor written.
    """
    return Path(tempfile.gettempdir()) / f"billing-ports-{os.geteuid()}.json"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on and no process was handed within the last HOLD_SECONDS."""
    path = reservations_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        now = time.time()
        held = {port: at for port, at in _read(path).items() if now - at < HOLD_SECONDS}
        for _ in range(_ATTEMPTS):
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in held:
                break
        else:
            raise RuntimeError(f"no free port on {host} outside the {len(held)} reserved ones")
        held[port] = now
        _write(path, held)
    return port


def _read(path: Path) -> dict[int, float]:
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        # Missing, or left half-written by a killed process: nothing is reserved.
        return {}
    return {int(port): float(at) for port, at in raw.items()} if isinstance(raw, dict) else {}


def _write(path: Path, held: dict[int, float]) -> None:
    # Written aside and renamed: a reader never sees half a file.
    spare = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    spare.write_text(json.dumps({str(port): at for port, at in held.items()}))
    os.replace(spare, path)
