"""The simulated month (`make demo`): wall time and peak memory by tenant count.

Each size runs `billing demo --tenants N` as its own process under a fresh BILLING_HOME (so
PostgreSQL, the chDB bridge and the Dagster instance start empty), samples every half second the
memory of the demo's process tree and of every process tree serving that BILLING_HOME
(PostgreSQL's backends included, as the postmaster's children): the sum of their PSS (shared
pages divided among the processes that map them, so PostgreSQL's shared buffers count once) and
of their RSS, with when the PSS peak came, what held it and the last progress line before it;
and reads the demo's own report (`done in`, `time by phase`, events generated, runs launched).
Reading a large process's PSS is not free (the kernel walks its page tables): the sampler waits
long enough between samples to take at most 5 % of one core, and reports the CPU it took.
The baseline is the smallest size of the same run: the table shows each cost as a multiple of it.

    python bench/simulated_month.py --tenants 50 150 500

`--generation-only --days D` measures the usage generation phase alone, at sizes the whole month
cannot reach here: the demo's tenants (same plans and volumes, same seed) generated for the
month's first D days by a child process into a fresh chDB bridge, both sampled the same way.

    python bench/simulated_month.py --generation-only --days 1 --tenants 500 5000
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
from datetime import date
from pathlib import Path

import psutil

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.5  # the memory sampler's usual interval
SAMPLER_CPU_SHARE = 0.05  # the most of one core the sampler may take


@dataclass
class Sample:
    """What one size cost."""

    tenants: int
    wall: float = 0.0
    demo_rss: int = 0
    all_rss: int = (
        0  # the peak of the sum of every serving process's RSS (shared pages counted in each)
    )
    all_pss: int = 0  # the peak of the sum of their PSS (shared pages divided among their users)
    peak_at: float = 0.0  # seconds from the start to the PSS peak
    peak_during: str = ""  # the last progress line before the PSS peak
    peak_parts: dict[str, int] = field(default_factory=dict)  # PSS by kind at the peak
    processes: int = 0  # the most serving processes seen in one sample
    samples: int = 0  # how many times the memory was sampled
    sampler_cpu: float = 0.0  # CPU seconds the sampling took (the bench's own cost)
    events: int = 0
    runs: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    report: str = ""


def _serving(home: str, root: psutil.Process) -> list[psutil.Process]:
    """The demo's process tree and every process tree whose command line names this BILLING_HOME.

    PostgreSQL's backends (one per connection) name only their database on the command line,
    so they are found as the children of the postmaster, which names its data folder.
    """
    procs = {root.pid: root}
    tops = [root]
    for proc in psutil.process_iter(["cmdline"]):
        if any(home in part for part in (proc.info["cmdline"] or [])):
            procs[proc.pid] = proc
            tops.append(proc)
    for top in tops:
        try:
            for child in top.children(recursive=True):
                procs[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return list(procs.values())


def _kind(proc: psutil.Process, root: psutil.Process) -> str:
    """Which part of the month a process is: the demo, PostgreSQL, the chDB bridge or other."""
    if proc.pid == root.pid:
        return "demo"
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "other"
    if "postgres" in text:
        return "postgres"
    if "clickhouse_bridge" in text or "chdb" in text:
        return "bridge"
    return "other"


def run_size(tenants: int, seed: int, stripe_limits: str = "test") -> Sample:
    """One `billing demo --tenants N` in a fresh BILLING_HOME, sampled while it runs."""
    home = tempfile.mkdtemp(prefix=f"bench-month-{tenants}-")
    # Unbuffered: the progress lines arrive as they are printed, so each is stamped when it was.
    env = {**os.environ, "BILLING_HOME": home, "PYTHONUNBUFFERED": "1"}
    for key in ("DATABASE_URL", "DAGSTER_POSTGRES_URL", "CLICKHOUSE_URL", "DAGSTER_HOME"):
        env.pop(key, None)
    sample = Sample(tenants)
    cmd = [sys.executable, "-m", "billing_pipelines.cli", "demo", "--tenants", str(tenants)]
    cmd += ["--seed", str(seed), "--stripe-limits", stripe_limits]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    done = threading.Event()

    progress = {"line": "starting"}

    def sampler() -> None:
        while not done.is_set():
            cpu = time.thread_time()
            rss_total = pss_total = 0
            parts: dict[str, int] = {}
            procs = _serving(home, root)
            for p in procs:
                try:
                    # PSS (from smaps_rollup) divides PostgreSQL's shared buffers among its
                    # backends; summing RSS would count them once per backend.
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss_total += info.rss
                pss_total += info.pss
                kind = _kind(p, root)
                parts[kind] = parts.get(kind, 0) + info.pss
                if p.pid == root.pid:
                    sample.demo_rss = max(sample.demo_rss, info.rss)
            sample.all_rss = max(sample.all_rss, rss_total)
            sample.processes = max(sample.processes, len(procs))
            if pss_total > sample.all_pss:
                sample.all_pss = pss_total
                sample.peak_at = time.monotonic() - started
                sample.peak_during = progress["line"]
                sample.peak_parts = parts
            cost = time.thread_time() - cpu
            sample.samples += 1
            sample.sampler_cpu += cost
            # Every 0.5 s, or less often when a sample costs more than 5 % of one core: at
            # 5,000 tenants two samples a second took a sixth of a core (about 700 s of CPU in
            # 74 minutes, nearly all of it the kernel's), CPU the month measured did not have.
            done.wait(max(SAMPLE_SECONDS, cost / SAMPLER_CPU_SHARE))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    assert proc.stdout is not None
    lines = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if line.startswith("    ") and len(line) < 300:
            # Progress (the phases and the days), stamped with the seconds since the start.
            elapsed = time.monotonic() - started
            progress["line"] = line.strip()[:120]
            print(f"  [{tenants} {elapsed:7.1f}s] {line.strip()}", file=sys.stderr, flush=True)
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


def _peak_rss(procs: list[psutil.Process], done: threading.Event, peaks: dict[str, int]) -> None:
    """Sample the processes' resident memory twice a second: each one's peak and the sum's."""
    while not done.is_set():
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            peaks[str(p.pid)] = max(peaks.get(str(p.pid), 0), rss)
        peaks["all"] = max(peaks.get("all", 0), total)
        done.wait(0.5)


def generation_child(tenants: int, days: int, seed: int, port: int) -> None:
    """In its own process: the demo tenants' usage for the month's first days, then one line."""
    import clickhouse_connect
    from billing_sandbox.demo import demo_tenants
    from billing_sandbox.month import month_start
    from billing_sandbox.usage_generator import generate_usage

    people = demo_tenants(tenants, seed)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
    started = time.monotonic()
    summary = generate_usage(
        client,
        [p.tenant_id for p in people],
        start=month_start(date.today()),
        days=days,
        seed=seed,
        monthly_queries={p.tenant_id: p.monthly_queries for p in people},
    )
    print(f"rows {summary.rows_inserted} seconds {time.monotonic() - started:.3f}", flush=True)


def run_generation(tenants: int, days: int, seed: int) -> str:
    """The generation phase alone for N tenants and D days; returns a table row."""
    from billing_sandbox.clickhouse_bridge import spawn_bridge

    folder = tempfile.mkdtemp(prefix=f"bench-generate-{tenants}-")
    bridge, port = spawn_bridge(Path(folder) / "data")
    cmd = [sys.executable, __file__, "--generation-child", str(tenants), str(days), str(seed)]
    child = subprocess.Popen([*cmd, str(port)], stdout=subprocess.PIPE, text=True)
    peaks: dict[str, int] = {}
    done = threading.Event()
    procs = [psutil.Process(child.pid), psutil.Process(bridge.pid)]
    thread = threading.Thread(target=_peak_rss, args=(procs, done, peaks), daemon=True)
    thread.start()
    out, _ = child.communicate()
    done.set()
    thread.join()
    bridge.terminate()
    bridge.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)
    if child.returncode != 0 or not (m := re.search(r"rows (\d+) seconds ([\d.]+)", out)):
        raise SystemExit(f"generation for {tenants} tenants failed: {out[-2000:]}")
    rows, seconds = int(m.group(1)), float(m.group(2))
    return (
        f"| {tenants} | {days} | {rows:,} | {seconds:.1f} | {rows / seconds / 1e6:.3f} | "
        f"{seconds * 31 / days:,.0f} | {peaks.get(str(child.pid), 0) / MIB:,.0f} MiB | "
        f"{peaks.get(str(bridge.pid), 0) / MIB:,.0f} MiB | {peaks.get('all', 0) / MIB:,.0f} MiB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[50, 150, 500])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--generation-only", action="store_true")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument(
        "--stripe-limits",
        choices=("test", "live"),
        default="test",
        help="Stripe's rate limits for the months: test mode's (as `make demo`) or live mode's",
    )
    parser.add_argument("--generation-child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generation_child:
        tenants, days, seed, port = args.generation_child
        generation_child(tenants, days, seed, port)
        return
    print(f"cpus {os.cpu_count()}, load before {os.getloadavg()}", file=sys.stderr)
    if args.generation_only:
        print(
            "| tenants | days | usage events | generation (s) | M events/s | 31 days at this rate "
            "(s) | generator peak RSS | bridge peak RSS | both peak RSS |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for n in sorted(args.tenants):
            print(run_generation(n, args.days, args.seed), flush=True)
        print(f"load after {os.getloadavg()}", file=sys.stderr)
        return
    print(f"Stripe limits: {args.stripe_limits} mode", file=sys.stderr)
    samples = [run_size(n, args.seed, args.stripe_limits) for n in sorted(args.tenants)]
    print(f"load after {os.getloadavg()}", file=sys.stderr)
    base = samples[0]
    print(
        "| tenants | usage events | wall (s) | × smallest | sensor runs | onboarding (s) | "
        "sensors + runs (s) | generation (s) | push runs (s) | clock (s) | reconciliation (s) | "
        "demo process peak RSS | all processes peak PSS | all processes peak RSS (sum) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        phase = s.phases.get
        print(
            f"| {s.tenants} | {s.events:,} | {s.wall:.0f} | {s.wall / base.wall:.2f} | "
            f"{s.runs} | {phase('onboarding', 0):.0f} | {phase('sensors and their runs', 0):.0f} | "
            f"{phase('usage generation', 0):.0f} | {phase('usage and meter push runs', 0):.0f} | "
            f"{phase('stripe clock and webhooks', 0):.0f} | {phase('reconciliation', 0):.0f} | "
            f"{s.demo_rss / MIB:,.0f} MiB | {s.all_pss / MIB:,.0f} MiB | "
            f"{s.all_rss / MIB:,.0f} MiB |"
        )
    for s in samples:
        parts = ", ".join(f"{k} {v / MIB:,.0f} MiB" for k, v in sorted(s.peak_parts.items()))
        print(
            f"{s.tenants} tenants: PSS peak at {s.peak_at:.0f} s ({parts}; up to {s.processes} "
            f"processes), during: {s.peak_during}; {s.samples:,} memory samples took "
            f"{s.sampler_cpu:.0f} s of CPU",
            file=sys.stderr,
        )
        print(f"{s.tenants} tenants, the demo's report:\n{s.report[-4000:]}", file=sys.stderr)


if __name__ == "__main__":
    main()
