"""Mutation-testing ratchet: every money module keeps at least its recorded score (and 90 %).

Runs mutmut (configured in pyproject.toml, [tool.mutmut]) over the modules named in
mutation/scores.toml, driven by the unit tests, then scores each module:

    score = killed (timeouts included) / (mutants - listed equivalent mutants)

Survivors, mutants no unit test reaches and any other outcome count against. The equivalent
mutants are listed in mutation/EQUIVALENT.md with the reason each one cannot change behaviour;
a listed mutant that no longer exists or is now killed fails the run, so the list stays reviewed.

    python mutation/ratchet.py            # run, print the table, exit 1 below the ratchet
    python mutation/ratchet.py --record   # the same, then write the scores to scores.toml
    python mutation/ratchet.py --no-run   # score the results of the last run only
    python mutation/ratchet.py --keep     # reuse mutants/ (mutmut re-tests changed functions
                                          # only: survivors of unchanged ones stay survivors)

Without --keep every run starts from an empty mutants/ directory: mutmut keeps a cached verdict
while the mutated function is unchanged, even when the tests changed, so only a fresh run is a
measurement of the tests as they are.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "mutation"
SCORES = HERE / "scores.toml"
EQUIVALENT = HERE / "EQUIVALENT.md"
FLOOR = 90.0
KILLED = frozenset({"killed", "timeout", "caught by type check"})

# `mutmut results --all=true` prints one "    <mutant name>: <status>" line per mutant.
RESULT_LINE = re.compile(r"^\s+(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+?)\s*$")
SECTION = re.compile(r"^## (?P<path>\S+\.py)\s*$")
EQUIVALENT_LINE = re.compile(r"^- (?P<name>[\w.ǁ]+__mutmut_\d+): (?P<why>\S.*)$")


@dataclass(frozen=True)
class Target:
    """One measured module: its recorded score and the functions left out of its score."""

    path: str
    recorded: float | None
    excluded: frozenset[str]

    @property
    def module(self) -> str:
        """The dotted module name mutmut prefixes its mutant names with."""
        return self.path.removesuffix(".py").replace("/", ".")


@dataclass
class Score:
    """One module's outcome: mutants by status, equivalents, and what did not die."""

    target: Target
    statuses: Counter[str] = field(default_factory=Counter)
    equivalent: int = 0
    alive: list[tuple[str, str]] = field(default_factory=list)  # (mutant, status)

    @property
    def total(self) -> int:
        """Mutants that count: all of the module's, less the listed equivalent ones."""
        return sum(self.statuses.values()) - self.equivalent

    @property
    def killed(self) -> int:
        """Mutants some unit test caught (a timeout is a catch)."""
        return sum(n for status, n in self.statuses.items() if status in KILLED)

    @property
    def percent(self) -> float:
        """The mutation score in percent (100 for a module without countable mutants)."""
        return 100.0 * self.killed / self.total if self.total else 100.0


def function_of(mutant: str) -> str:
    """The mutated function's plain name: x_plan_day__mutmut_3 -> plan_day, a method
    xǁAuditRowǁclean__mutmut_1 -> AuditRow.clean."""
    mangled = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in mangled:
        _, cls, method = mangled.split("ǁ", 2)
        return f"{cls}.{method}"
    return mangled.removeprefix("x_")


def load_targets(path: Path = SCORES) -> list[Target]:
    """The measured modules from scores.toml, in file order."""
    data = tomllib.loads(path.read_text("utf-8"))
    targets = []
    for module, body in data.get("modules", {}).items():
        recorded = body.get("score")
        targets.append(
            Target(
                module,
                float(recorded) if recorded is not None else None,
                frozenset(body.get("exclude", ())),
            )
        )
    return targets


def load_equivalent(path: Path = EQUIVALENT) -> dict[str, dict[str, str]]:
    """Module path -> {mutant name: why it cannot change behaviour}."""
    out: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        heading = SECTION.match(line)
        if heading:
            section = out.setdefault(heading["path"].removeprefix("billing_pipelines/"), {})
            continue
        entry = EQUIVALENT_LINE.match(line)
        if entry:
            if section is None:
                raise SystemExit(f"{path.name}:{number}: mutant listed before any module heading")
            section[entry["name"]] = entry["why"]
        elif line.startswith("- "):
            raise SystemExit(f"{path.name}:{number}: expected '- <mutant name>: <reason>'")
    return out


def mutmut(*args: str) -> subprocess.CompletedProcess[str]:
    """Run mutmut from the repository root (where pyproject.toml configures it)."""
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )


def run_mutmut(children: int, *, keep: bool) -> None:
    """Generate the mutants and test them, from scratch unless `keep`."""
    if not keep:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    done = mutmut("run", "--max-children", str(children))
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-4000:])
        raise SystemExit(f"mutmut run failed (exit {done.returncode})")


def read_results() -> dict[str, str]:
    """Every mutant of the last run with its status."""
    done = mutmut("results", "--all=true")
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-4000:])
        raise SystemExit(f"mutmut results failed (exit {done.returncode})")
    return {m["name"]: m["status"] for m in map(RESULT_LINE.match, done.stdout.splitlines()) if m}


def score(
    targets: list[Target], results: dict[str, str], equivalent: dict[str, dict[str, str]]
) -> tuple[list[Score], list[str]]:
    """Per module score, and the problems with the equivalent list (stale or wrong entries)."""
    problems: list[str] = []
    scores = []
    known = {t.path.removeprefix("billing_pipelines/") for t in targets}
    for section in sorted(set(equivalent) - known):
        problems.append(f"EQUIVALENT.md lists billing_pipelines/{section}, which is not measured")
    for target in targets:
        listed = equivalent.get(target.path.removeprefix("billing_pipelines/"), {})
        s = Score(target)
        prefix = target.module + "."
        for name, status in sorted(results.items()):
            if not name.startswith(prefix) or function_of(name) in target.excluded:
                continue
            s.statuses[status] += 1
            if name in listed:
                if status in KILLED:
                    problems.append(f"{name} is listed as equivalent but a test kills it")
                else:
                    s.equivalent += 1
            elif status not in KILLED:
                s.alive.append((name, status))
        for name in sorted(listed):
            if results.get(name) is None or function_of(name) in target.excluded:
                problems.append(f"{name} is listed as equivalent but is not a measured mutant")
        scores.append(s)
    return scores, problems


def floor_tenth(value: float) -> float:
    """A score rounded down to 0.1 %, so recording it never makes the same run fail."""
    return math.floor(value * 10 + 1e-9) / 10


def table(scores: list[Score]) -> str:
    """The per-module table."""
    rows = [
        f"{'module':<52} {'mutants':>7} {'killed':>6} {'equiv':>5} {'alive':>5} "
        f"{'score':>6} {'recorded':>8}"
    ]
    for s in scores:
        recorded = f"{s.target.recorded:.1f}" if s.target.recorded is not None else "-"
        rows.append(
            f"{s.target.path:<52} {sum(s.statuses.values()):>7} {s.killed:>6} "
            f"{s.equivalent:>5} {len(s.alive):>5} {s.percent:>5.1f}% {recorded:>8}"
        )
    return "\n".join(rows)


def verdict(scores: list[Score]) -> list[str]:
    """Every module below its recorded score or below the floor, with its surviving mutants."""
    failures = []
    for s in scores:
        needed = max(FLOOR, s.target.recorded or 0.0)
        if floor_tenth(s.percent) < needed:
            alive = "\n".join(f"    {name}: {status}" for name, status in s.alive)
            failures.append(
                f"{s.target.path}: {s.percent:.1f}% is below {needed:.1f}% "
                f"(recorded {s.target.recorded or '-'}, floor {FLOOR:.0f}%); not killed "
                f"(`mutmut show <name>` shows the change):\n{alive}"
            )
    return failures


def record(scores: list[Score], path: Path = SCORES) -> None:
    """Rewrite each module's `score = ...` line in scores.toml, keeping everything else."""
    text = path.read_text("utf-8")
    for s in scores:
        header = f'[modules."{s.target.path}"]'
        start = text.index(header)
        end = text.find("\n[", start + len(header))
        end = len(text) if end < 0 else end
        body = text[start:end]
        line = f"score = {floor_tenth(s.percent):.1f}"
        body, count = re.subn(r"(?m)^score = .*$", line, body)
        if not count:
            body = body.replace(header, f"{header}\n{line}", 1)
        text = text[:start] + body + text[end:]
    path.write_text(text, "utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run, score, print; 1 when a module is below its recorded score or below 90 %."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the scores to scores.toml")
    parser.add_argument("--no-run", action="store_true", help="score the last run's results")
    parser.add_argument("--keep", action="store_true", help="reuse the cached mutants/ results")
    parser.add_argument(
        "--children", type=int, default=os.cpu_count() or 2, help="parallel mutant workers"
    )
    args = parser.parse_args(argv)
    targets = load_targets()
    equivalent = load_equivalent()
    if not args.no_run:
        run_mutmut(args.children, keep=args.keep)
    scores, problems = score(targets, read_results(), equivalent)
    print(table(scores))
    if args.record:
        record(scores)
        print(f"recorded in {SCORES.relative_to(ROOT)}")
    failures = problems + verdict(scores)
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
