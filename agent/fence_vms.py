"""The VMs of a fenced node: which ran there (snapshot, before its Node is deleted) and where
the restartable ones run now. Reads only (the leader's caches, `agent.kube_cache`, or the API
server); the verdicts are `agent.fencing`'s."""

from __future__ import annotations

from agent.fencing import RESTART_POLICIES, Operation, VmOutcome, VmsSeen, VmsSnapshotted
from agent.kube_cache import ClusterReads


async def snapshot_vms(api: ClusterReads, op: Operation) -> VmsSnapshotted:
    """The VMs on `op.node` now, and a capacity warning when no other node can take them."""
    found: list[VmOutcome] = []
    for vm in await api.list_vms():
        meta, spec, status = vm.get("metadata", {}), vm.get("spec", {}), vm.get("status", {})
        if (status or {}).get("nodeName") != op.node:
            continue
        policy = (spec or {}).get("runPolicy") or "AlwaysOnUnlessStoppedManually"
        found.append(
            VmOutcome(
                meta.get("namespace", ""), meta.get("name", ""), policy, policy in RESTART_POLICIES
            )
        )
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


async def vms_seen(api: ClusterReads, op: Operation) -> VmsSeen:
    """Where each snapshotted restartable VM is Running now (None: not Running)."""
    wanted = {v.key for v in op.vms or () if v.expected_restart}
    running: dict[str, str | None] = {}
    for vm in await api.list_vms():
        meta, status = vm.get("metadata", {}), vm.get("status") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        if key in wanted:
            running[key] = status.get("nodeName") if status.get("phase") == "Running" else None
    return VmsSeen(running)
