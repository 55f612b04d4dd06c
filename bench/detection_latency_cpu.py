"""CPU time from /proc: shares of one core of some processes and of the whole machine over a
window, and the pid of a child (mosquitto). bench/leader_ingest.py measures with these too."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all CPUs together spent neither idle nor waiting for I/O, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU shares of one core, over a window, of some processes and of the whole machine: on a
    shared machine, load from outside the benchmark skews every figure, so it is shown too."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"bench": os.getpid(), **pids}
        self.t0 = time.monotonic()
        self.cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.machine0 = machine_busy_seconds()

    def shares(self, elsewhere: float = 0.0) -> dict[str, float]:
        """Each process's share, `machine` (all CPUs, so up to their count) and `others`: the
        machine's minus ours (`elsewhere`: processes of ours measured by other means)."""
        wall = time.monotonic() - self.t0
        out = {k: (cpu_seconds(p) - self.cpu0[k]) / wall for k, p in self.pids.items()}
        out["machine"] = (machine_busy_seconds() - self.machine0) / wall
        out["others"] = max(0.0, out["machine"] - sum(out[k] for k in self.pids) - elsewhere)
        return out


def child_pid(name: str) -> int | None:
    """The pid of this process's child called `name` (mosquitto, started by MosquittoBroker)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            text = (entry / "stat").read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            if ppid == me and comm == name:
                return int(entry.name)
    return None
