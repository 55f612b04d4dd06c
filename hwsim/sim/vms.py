"""VirtualMachines and a small ColdStandby controller (as
`nodefence.hwsim.virtualization.coldstandby` behaves).

Each VM is an API object (`spec.runPolicy`, `status.phase` / `status.nodeName`) and, where it
really runs, a process on a machine (`Machine.vms`). The controller only knows the API: when a
Node is deleted or tainted out-of-service it restarts that Node's VMs with runPolicy `AlwaysOn`
or `AlwaysOnUnlessStoppedManually` on another eligible node (`Manual` and `AlwaysOff` VMs are
`Stopped`) - while their processes keep running on the old machine if it still has power: the
split brain fencing exists to prevent, and the invariants look for. A VM the scheduler marked
*stuck* never starts again (its disk stays attached elsewhere, say): its fencing operation can
only end `RecoveryIncomplete`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodefence.agent.fencing.operation import RESTART_POLICIES
from nodefence.agent.kube.client import MAINTENANCE_LABEL, VM_GROUP, VM_VERSION

if TYPE_CHECKING:
    from nodefence.hwsim.sim.machines import Machine
    from nodefence.hwsim.sim.world import World

RUN_POLICIES = ("AlwaysOn", "AlwaysOnUnlessStoppedManually", "Manual", "AlwaysOff")
RETRY = 5.0  # seconds between placement attempts of a Pending VM


class VmController:
    """Restarts ColdStandby VMs of lost Nodes elsewhere (see the module doc)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.stuck: set[str] = set()

    def create(self, namespace: str, name: str, policy: str, machine: Machine) -> str:
        """A VM Running on `machine` at the start of the run."""
        key = f"{namespace}/{name}"
        self.world.api.create_vm(
            key,
            {
                "apiVersion": f"{VM_GROUP}/{VM_VERSION}",
                "kind": "VirtualMachine",
                "metadata": {"namespace": namespace, "name": name},
                "spec": {"runPolicy": policy},
                "status": {"phase": "Running", "nodeName": machine.name},
            },
        )
        machine.start_vm(key)
        return key

    def node_lost(self, node: str) -> None:
        """A Node was deleted or tainted out-of-service: move its VMs on."""
        w = self.world
        for key, vm in w.api.vms.items():
            status = vm.get("status") or {}
            if status.get("nodeName") != node or status.get("phase") != "Running":
                continue
            if vm["spec"]["runPolicy"] in RESTART_POLICIES:
                w.api.set_vm(key, "Starting", None)
                delay = w.settings.vm_start_delay * (0.5 + w.rng.random())
                w.loop.call_later(delay, self._place, key, context=w.loop.harness)
            else:
                w.api.set_vm(key, "Stopped", None)

    def machine_booted(self, machine: Machine) -> None:
        """A machine came back with its Node still registered: its VMs' processes died with
        the power; the restartable ones are started again (anywhere eligible)."""
        w = self.world
        if machine.name not in w.api.nodes:
            return
        for key, vm in w.api.vms.items():
            status = vm.get("status") or {}
            if status.get("nodeName") == machine.name and status.get("phase") == "Running":
                if key in machine.vms:
                    continue
                if vm["spec"]["runPolicy"] in RESTART_POLICIES:
                    w.api.set_vm(key, "Starting", None)
                    w.loop.call_later(
                        w.settings.vm_start_delay, self._place, key, context=w.loop.harness
                    )
                else:
                    w.api.set_vm(key, "Stopped", None)

    def _eligible(self) -> list[Machine]:
        w = self.world
        out = []
        for name, node in w.api.nodes.items():
            m = w.machines[name]
            if node.tainted or node.unschedulable or node.labels.get(MAINTENANCE_LABEL) == "true":
                continue
            if w.api.node_ready(name) is not True or not m.booted or m.partitioned:
                continue  # (the controller cannot start a VM on a node it cannot reach)
            load = sum(
                1 for vm in w.api.vms.values() if (vm.get("status") or {}).get("nodeName") == name
            )
            if load < m.capacity:
                out.append(m)
        return out

    def _place(self, key: str) -> None:
        w = self.world
        vm = w.api.vms[key]
        if (vm.get("status") or {}).get("phase") not in ("Starting", "Pending"):
            return
        eligible = [] if key in self.stuck else self._eligible()
        if not eligible:
            w.api.set_vm(key, "Pending", None)
            w.loop.call_later(RETRY, self._place, key, context=w.loop.harness)
            return

        def load(m: Machine) -> tuple[int, str]:
            return (
                sum(
                    1
                    for v in w.api.vms.values()
                    if (v.get("status") or {}).get("nodeName") == m.name
                ),
                m.name,
            )

        target = min(eligible, key=load)
        w.api.set_vm(key, "Running", target.name)
        w.trace.event("vm", f"{key} started on {target.name}")
        target.start_vm(key)
