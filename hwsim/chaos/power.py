"""How a chaos run gives machines their power back (`ChaosPower`, a base of
`nodefence.hwsim.chaos.steps.StepRunner`): an episode's end powers its machine on (its PDU outlet
first) or heals its link; the janitor powers on machines no episode holds, as an operator would, but
not while a fence of the machine is unfinished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nodefence.hwsim.chaos.actions import Action, FaultKind
from nodefence.hwsim.chaos.invariants import FINAL_PHASES
from nodefence.hwsim.pdu import restore
from nodefence.hwsim.simcluster import SimCluster

Say = Callable[..., None]  # (kind, node, detail="", count=False)
RECORD = "fenceoperations"


class ChaosPower:
    """Power and links of the machines a chaos run breaks (the fields are `StepRunner`'s)."""

    cluster: SimCluster
    say: Say
    busy: dict[str, int]
    janitor_after: float
    janitor_patience: float
    _off_since: dict[str, float]

    def _machine(self, node: str) -> Any:
        return self.cluster.fleet[node]

    def power_on_or_heal(self, node: str, action: Action) -> None:
        """End of an episode: power the machine on (its outlet first), or heal its link."""
        machine, sim = self._machine(node), self.cluster.nodes[node]
        if machine.power_state() == "off":
            restore(machine, self._outlet(node))
            self.say(FaultKind.REPAIR.value, node, f"powered on ({action.value})", count=True)
        elif sim.partitioned:
            sim.heal()
            self.say(action.value, node, "network back")

    def _outlet(self, node: str) -> Any:
        bmcs = self.cluster.bmcs
        return bmcs.outlet(node) if bmcs is not None else None

    def janitor(self) -> None:
        """Power on machines left off by no episode (fenced after their episode ended), as an
        operator would: not while a fence of the machine is unfinished (up to
        `janitor_patience`), so a stuck fence does not make its node reset itself in a loop."""
        now = time.monotonic()
        for machine in self.cluster.fleet:
            if machine.power_state() == "on" or machine.name in self.busy:
                self._off_since.pop(machine.name, None)
                continue
            since = self._off_since.setdefault(machine.name, now)
            wait = self.janitor_patience if self._fencing(machine.name) else self.janitor_after
            if now - since >= wait:
                restore(machine, self._outlet(machine.name))
                self._off_since.pop(machine.name, None)
                self.say(FaultKind.REPAIR.value, machine.name, "powered on (orphan)", count=True)

    def _fencing(self, node: str) -> bool:
        """A FenceOperation of `node` is unfinished."""
        records = self.cluster.kube.store.list(RECORD, "nodefence")["items"]
        return any(
            (r.get("spec") or {}).get("nodeName") == node
            and (r.get("status") or {}).get("phase") not in FINAL_PHASES
            for r in records
        )
