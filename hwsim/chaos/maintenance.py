"""A planned maintenance in a chaos run, as an operator does it with the `nodefence` CLI:
`maintenance enter NODE --vms-only`, cut the power for the work, power on when the episode
ends, wait for the Node to be Ready, `maintenance exit NODE --force`."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodefence.hwsim.chaos.actions import FaultKind
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.pdu import restore
from nodefence.hwsim.simcluster import SimCluster


@dataclass
class PlannedWork:
    """One maintenance; `run` blocks until it is over (start it in a thread)."""

    cluster: SimCluster
    say: Callable[..., None]
    stop: threading.Event
    procs: list[subprocess.Popen[str]]  # the CLI processes, killed if the run stops first
    outlet: SimMachine | None = None

    def run(self, node: str, until: float) -> None:
        """Enter maintenance, cut the power for the planned work, power on at `until`, exit."""
        machine = self.cluster.fleet[node]
        self.say(FaultKind.MAINTENANCE.value, node, "maintenance enter --vms-only", count=True)
        timeout = max(5.0, until - time.monotonic() - 4.0)
        code, out = self._nodefence(
            "maintenance", "enter", node, "--vms-only", "--timeout", f"{timeout:.0f}"
        )
        if code == 0 and time.monotonic() < until and not self.stop.is_set():
            machine.cut_power()
            self.say("maintenance-power", node, "power cut for the planned work")
        else:
            self.say("maintenance-failed", node, f"enter exit {code}: {out[-200:]!r}")
        self.stop.wait(max(0.0, until - time.monotonic()))
        if machine.power_state() == "off":
            restore(machine, self.outlet)
            self.say(FaultKind.REPAIR.value, node, "powered on (maintenance over)", count=True)
        ready = time.monotonic() + 20.0
        while time.monotonic() < ready and not self.stop.is_set():
            if self.cluster.node_ready(node):
                break
            time.sleep(0.2)
        code, out = self._nodefence("maintenance", "exit", node, "--force")
        self.say("maintenance-exit", node, "done" if code == 0 else f"exit {code}: {out[-200:]!r}")

    def _nodefence(self, *args: str) -> tuple[int, str]:
        proc = self.cluster.nodefence(*args)
        self.procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return proc.returncode, out
