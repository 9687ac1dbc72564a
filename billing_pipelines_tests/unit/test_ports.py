"""Ports for embedded services: parallel processes are never handed the same one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from billing_sandbox import ports

# Each process asks for this many ports without starting anything on them: every one is still
# free when the next is asked for, as when parallel test workers start their services at once.
PER_PROCESS = 150
PROCESSES = 6
TAKE = (
    "from billing_sandbox.ports import free_port\n"
    f"print(*[free_port() for _ in range({PER_PROCESS})])\n"
)


def _take_in_parallel(tmp: Path) -> list[int]:
    env = {**os.environ, "TMPDIR": str(tmp)}  # one run's shared temporary folder
    children = [
        subprocess.Popen([sys.executable, "-c", TAKE], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    taken: list[int] = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        taken += [int(port) for port in out.split()]
    return taken


def test_parallel_processes_sharing_a_temporary_folder_never_get_the_same_port(
    tmp_path: Path,
) -> None:
    taken = _take_in_parallel(tmp_path)
    assert len(taken) == PROCESSES * PER_PROCESS
    # The kernel alone hands a just-released port out again (dozens of repeats among 900).
    assert len(set(taken)) == len(taken)


def test_a_port_handed_out_is_free_to_listen_on() -> None:
    port = ports.free_port()
    with socket.socket() as sock:
        sock.bind((ports.HOST, port))
        sock.listen()
        assert sock.getsockname()[1] == port


def test_a_half_written_reservations_file_reserves_nothing_and_is_rewritten(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    reservations = tmp_path / ports.reservations_file().name
    reservations.write_text('{"4')  # a process killed mid-write
    out = subprocess.run(
        [sys.executable, "-c", "from billing_sandbox.ports import free_port; print(free_port())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    port = int(out)
    assert 0 < port < 65536
    assert str(port) in reservations.read_text()
