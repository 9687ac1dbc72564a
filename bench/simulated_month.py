"""The simulated month (`make demo`): wall time and peak memory by tenant count.

Each size runs `billing demo --tenants N` as its own process under a fresh BILLING_HOME (so
PostgreSQL, the chDB bridge and the Dagster instance start empty), samples the resident memory
of the demo process and of every process serving that BILLING_HOME twice a second, and reads
the demo's own report (`done in`, `time by phase`, events generated, runs launched). The
baseline is the smallest size of the same run: the table shows each cost as a multiple of it.

    python bench/simulated_month.py --tenants 50 150 500
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


@dataclass
class Sample:
    """What one size cost."""

    tenants: int
    wall: float = 0.0
    demo_rss: int = 0
    all_rss: int = 0
    events: int = 0
    runs: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    report: str = ""


def _serving(home: str, root: psutil.Process) -> list[psutil.Process]:
    """The demo process tree and every process whose command line names this BILLING_HOME."""
    procs = {root.pid: root}
    try:
        for child in root.children(recursive=True):
            procs[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter(["cmdline"]):
        if any(home in part for part in (proc.info["cmdline"] or [])):
            procs[proc.pid] = proc
    return list(procs.values())


def run_size(tenants: int, seed: int) -> Sample:
    """One `billing demo --tenants N` in a fresh BILLING_HOME, sampled while it runs."""
    home = tempfile.mkdtemp(prefix=f"bench-month-{tenants}-")
    env = {**os.environ, "BILLING_HOME": home}
    for key in ("DATABASE_URL", "DAGSTER_POSTGRES_URL", "CLICKHOUSE_URL", "DAGSTER_HOME"):
        env.pop(key, None)
    sample = Sample(tenants)
    cmd = [sys.executable, "-m", "billing_pipelines.cli", "demo", "--tenants", str(tenants)]
    cmd += ["--seed", str(seed)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            total = 0
            for p in _serving(home, root):
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if p.pid == root.pid:
                    sample.demo_rss = max(sample.demo_rss, rss)
            sample.all_rss = max(sample.all_rss, total)
            done.wait(0.5)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    assert proc.stdout is not None
    lines = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if "day " in line and "/" in line:
            print(f"  [{tenants}] {line.strip()}", file=sys.stderr, flush=True)
    code = proc.wait()
    sample.wall = time.monotonic() - started
    done.set()
    thread.join()
    subprocess.run(
        [sys.executable, "-m", "billing_pipelines.cli", "sandbox", "down"],
        env=env,
        capture_output=True,
        check=False,
    )
    shutil.rmtree(home, ignore_errors=True)
    sample.report = "\n".join(lines)
    if code != 0:
        raise SystemExit(f"demo with {tenants} tenants failed:\n{sample.report[-3000:]}")
    text = sample.report
    if m := re.search(r"([\d,]+) usage events", text):
        sample.events = int(m.group(1).replace(",", ""))
    if m := re.search(r"runs launched by sensors: (\d+)", text):
        sample.runs = int(m.group(1))
    if m := re.search(r"time by phase: (.*)", text):
        for part in m.group(1).split(", "):
            name, _, seconds = part.rpartition(" ")
            sample.phases[name] = float(seconds.rstrip("s"))
    if "zero difference" not in text:
        raise SystemExit(f"{tenants} tenants: the usage audit did not end at zero difference")
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[50, 150, 500])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}, load before {os.getloadavg()}", file=sys.stderr)
    samples = [run_size(n, args.seed) for n in sorted(args.tenants)]
    print(f"load after {os.getloadavg()}", file=sys.stderr)
    base = samples[0]
    print(
        "| tenants | usage events | wall (s) | × smallest | sensor runs | push runs (s) | "
        "sensors + runs (s) | generation (s) | demo process peak RSS | all processes peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        print(
            f"| {s.tenants} | {s.events:,} | {s.wall:.0f} | {s.wall / base.wall:.2f} | "
            f"{s.runs} | {s.phases.get('usage and meter push runs', 0):.0f} | "
            f"{s.phases.get('sensors and their runs', 0):.0f} | "
            f"{s.phases.get('usage generation', 0):.0f} | {s.demo_rss / MIB:,.0f} MiB | "
            f"{s.all_rss / MIB:,.0f} MiB |"
        )


if __name__ == "__main__":
    main()
