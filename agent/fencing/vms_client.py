"""The VMs of a fenced node: which ran there (snapshot, before its Node is deleted) and where
the restartable ones run now, for every VM API in use (`nodefence.agent.virt.layer_client`). Reads
only; the verdicts are `nodefence.agent.fencing.machine`'s."""

from __future__ import annotations

from nodefence.agent.fencing.events import VmOutcome, VmsSeen, VmsSnapshotted
from nodefence.agent.fencing.operation import Operation
from nodefence.agent.kube.client import ClusterApi
from nodefence.agent.maintenance.vm_migration import RUNNING
from nodefence.agent.virt.layer_client import VirtLayer


async def snapshot_vms(api: ClusterApi, op: Operation, virt: VirtLayer) -> VmsSnapshotted:
    """The VMs on `op.node` now (whatever their phase: the node their status names), and a
    capacity warning when no other node can take them."""
    found = [
        VmOutcome(vm.namespace, vm.name, vm.policy, vm.restart, virt=vm.virt)
        for vm in await virt.list_vms()
        if vm.last_node == op.node
    ]
    warning = ""
    if any(v.expected_restart for v in found):
        nodes = await api.list_nodes()
        room = [
            n
            for n in nodes
            if n.name != op.node and n.ready and not n.unschedulable and not n.maintenance
        ]
        if not room:
            warning = (
                f"no other Ready, schedulable node for {op.node}'s "
                f"{sum(v.expected_restart for v in found)} ColdStandby VMs"
            )
    return VmsSnapshotted(tuple(sorted(found, key=lambda v: v.key)), warning)


async def vms_seen(op: Operation, virt: VirtLayer) -> VmsSeen:
    """Where each snapshotted restartable VM is Running now (None: not Running)."""
    wanted = {v.key for v in op.vms or () if v.expected_restart}
    running = {
        vm.key: vm.node if vm.phase == RUNNING else None
        for vm in await virt.list_vms()
        if vm.key in wanted
    }
    return VmsSeen(running)
