"""Every benchmark still runs: each one's `--smoke` size, as a user would start it.

A bench that only a person runs rots unnoticed (bench/recovery.py once did, for months). These
check that each starts, measures and prints its figures, not the figures themselves (speed and
memory are the benches' business, never a timed assertion here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# bench -> a phrase its report prints only once it measured something
SMOKES = {
    "fence_latency.py": "nodefence fence (whole process",
    "detection_latency.py": "CPU over the rounds",
    "lease_cost.py": "Lease requests/s in all",
    "leader_ingest.py": "target: 10,000 nodes",
    "recovery.py": "cut -> Node deleted",
}


def run_smoke(argv: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv[1:])} exited {done.returncode}:\n{out[-3000:]}"
    return out


@pytest.mark.parametrize("bench", sorted(SMOKES))
def test_every_bench_runs_its_smoke_size_and_prints_its_figures(bench: str) -> None:
    out = run_smoke([sys.executable, str(REPO / "bench" / bench), "--smoke"], timeout=300)
    assert SMOKES[bench] in out, out[-3000:]


def test_the_simulation_bench_runs_a_few_seeds_without_a_violation() -> None:
    argv = [
        sys.executable,
        "-m",
        "nodefence.hwsim.cli",
        "simulate",
        "--runs",
        "5",
        "--seed",
        "900000",
    ]
    out = run_smoke(argv, timeout=300)
    assert "violations: 0" in out, out[-3000:]
    assert re.search(r"speed: \d+ runs per minute \(one core: [\d.]+ s CPU\)", out), out[-3000:]
    # The reference that makes runs per minute comparable across days and machines.
    assert re.search(r"reference loop took \d+ ms of CPU \(median of 2 samples during", out)
