"""`nodefence-hwsim simulate`: run many seeds, print what they did, replay one exactly.

A batch prints runs, steps, simulated time, faults injected by kind, violations by invariant
and runs per minute (measured on this process's CPU time: one core). Each failing seed gets its
violations, the last events of its run and the one command that replays it. A replay
(`--replay SEED`) prints only what the seed determines (no timings), so its output is the
same every time; `-v` adds the whole event log and the agent's last log lines.
"""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from nodefence.hwsim.sim.runner import EVENTS_SHOWN, RunResult, run_seed

DETAILED_FAILURES = 3  # failing seeds printed in full in a batch
REFERENCE_EVERY = 250  # runs between two timings of the reference loop
LOG_SHOWN = 15  # agent log lines printed with a failing seed


@dataclass
class BatchSummary:
    """Totals over a batch of seeds."""

    runs: int = 0
    steps: int = 0
    sim_seconds: float = 0.0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: collections.Counter[str] = field(default_factory=collections.Counter)
    failing: list[int] = field(default_factory=list)
    storms: int = 0
    power_offs: int = 0
    fenced: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    reference: list[float] = field(default_factory=list)  # `reference_seconds` samples

    def add(self, r: RunResult) -> None:
        """Fold one run in."""
        self.runs += 1
        self.steps += r.steps
        self.sim_seconds += r.sim_seconds
        self.faults.update(r.faults)
        self.violations.update(v.invariant for v in r.violations)
        if r.violations:
            self.failing.append(r.seed)
        self.storms += r.storm
        self.power_offs += r.power_offs
        self.fenced += r.fenced

    @property
    def runs_per_minute(self) -> float:
        """Runs per minute of CPU time (one core)."""
        return 60.0 * self.runs / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def reference_seconds() -> float:
    """CPU seconds of a fixed piece of pure Python (calls, attribute and dict reads, small
    objects: what a run is made of): how fast this core is right now. CPU time on a shared
    machine varies by a third between two identical batches; runs per minute divided by
    this reference's speed does not."""
    started = time.process_time()
    table: dict[int, list[int]] = {}
    for i in range(300_000):
        key = i % 997
        cell = table.get(key)
        if cell is None:
            cell = table[key] = [0]
        cell[0] = max(cell[0], _step(i, key))
    return time.process_time() - started


def _step(i: int, key: int) -> int:
    return (i * 31 + key) & 0xFFFF


def replay_command(seed: int) -> str:
    """The command that replays `seed` exactly."""
    return f"nodefence-hwsim simulate --replay {seed} -v"


def run_batch(seeds: Iterable[int], out: TextIO) -> BatchSummary:
    """Run `seeds`, print failing ones as they come and the totals at the end; the reference
    loop is timed before, every `REFERENCE_EVERY` runs and after (its time is not the runs')."""
    summary = BatchSummary()
    summary.reference.append(reference_seconds())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    detailed = 0
    for seed in seeds:
        result = run_seed(seed)
        if summary.runs == 0:
            # What the first run imported and cached stays for the whole batch: out of the
            # collector's reach, so its full passes walk only what the runs leave.
            gc.collect()
            gc.freeze()
        summary.add(result)
        if summary.runs % REFERENCE_EVERY == 0:
            summary.reference.append(reference_seconds())
        if result.violations:
            if detailed < DETAILED_FAILURES:
                detailed += 1
                print_failure(result, out)
            else:
                print(f"seed {seed}: {_kinds(result)}  ({replay_command(seed)})", file=out)
    summary.wall_seconds = time.perf_counter() - wall0
    summary.reference.append(reference_seconds())
    # The samples taken between runs are not the runs' time.
    summary.cpu_seconds = time.process_time() - cpu0 - sum(summary.reference[1:])
    print_summary(summary, out)
    return summary


def _kinds(result: RunResult) -> str:
    counts = collections.Counter(v.invariant for v in result.violations)
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def print_failure(result: RunResult, out: TextIO) -> None:
    """A failing seed: its violations, its last events, the replay command."""
    print(f"== VIOLATION in seed {result.seed}: {_kinds(result)}", file=out)
    for v in result.violations[:10]:
        print(f"   {v}", file=out)
    print(f"-- last {EVENTS_SHOWN} events of seed {result.seed}:", file=out)
    for line in result.events[-EVENTS_SHOWN:]:
        print(f"   {line}", file=out)
    print(f"-- agent log, last {LOG_SHOWN} lines:", file=out)
    for line in result.log_tail[-LOG_SHOWN:]:
        print(f"   {line}", file=out)
    print(f"-- replay: {replay_command(result.seed)}", file=out)


def print_summary(s: BatchSummary, out: TextIO) -> None:
    """The batch totals."""
    print(
        f"runs {s.runs}  steps {s.steps}  simulated {s.sim_seconds / 60:.1f} min"
        f"  power-offs {s.power_offs}  nodes fenced {s.fenced}  storms held {s.storms}",
        file=out,
    )
    faults = ", ".join(f"{k} {n}" for k, n in sorted(s.faults.items()))
    print(f"faults injected: {faults or 'none'}", file=out)
    total = sum(s.violations.values())
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(s.violations.items()))
    print(
        f"violations: {total}" + (f" ({by_kind}) in {len(s.failing)} seeds" if total else ""),
        file=out,
    )
    if s.failing:
        shown = " ".join(str(x) for x in s.failing[:50])
        more = f" (+{len(s.failing) - 50} more)" if len(s.failing) > 50 else ""
        print(f"failing seeds: {shown}{more}", file=out)
    print(
        f"speed: {s.runs_per_minute:.0f} runs per minute (one core: {s.cpu_seconds:.1f} s CPU),"
        f" {s.wall_seconds:.1f} s wall",
        file=out,
    )
    if s.reference:
        samples = sorted(round(x * 1000) for x in s.reference)
        print(
            f"this core's speed: the reference loop took {samples[len(samples) // 2]} ms of CPU"
            f" (median of {len(samples)} samples during the batch, {samples[0]}-{samples[-1]}"
            " ms): compare runs per minute between machines or days as ratios to it",
            file=out,
        )


def replay(seed: int, verbose: bool, out: TextIO) -> RunResult:
    """Run one seed and print what it did (deterministic output)."""
    r = run_seed(seed)
    print(
        f"seed {seed}: {r.steps} steps, {r.sim_seconds:.1f} s simulated,"
        f" {r.power_offs} power-offs, {r.records} fencing records, {r.fenced} nodes fenced,"
        f" {'settled' if r.settled else 'not settled'}{', storm held' if r.storm else ''}",
        file=out,
    )
    faults = ", ".join(f"{k} {n}" for k, n in sorted(r.faults.items()))
    print(f"faults injected: {faults or 'none'}", file=out)
    if verbose:
        print("-- event log:", file=out)
        for line in r.events:
            print(f"   {line}", file=out)
        print("-- agent log (last lines):", file=out)
        for line in r.log_tail:
            print(f"   {line}", file=out)
    if r.violations:
        print(f"violations: {len(r.violations)} ({_kinds(r)})", file=out)
        for v in r.violations:
            print(f"   {v}", file=out)
        if not verbose:
            print(f"-- last {EVENTS_SHOWN} events:", file=out)
            for line in r.events[-EVENTS_SHOWN:]:
                print(f"   {line}", file=out)
    else:
        print("violations: 0", file=out)
    return r
