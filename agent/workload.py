"""What a node runs that fencing would free (reads only), for the maintenance guard of
`agent.policy`: its ColdStandby VMs and the volumes attached to it."""

from __future__ import annotations

from agent.fencing import RESTART_POLICIES
from agent.kube_cache import ClusterReads
from agent.policy import NodeWorkload

# A VM in one of these phases is not on a node any more (or not yet).
NOT_HOSTED = ("Stopped", "Stopping", "Pending")


async def node_workload(api: ClusterReads, node: str) -> NodeWorkload:
    """The node's ColdStandby VMs (restartable run policy, status.nodeName = node) and the
    volumes its VolumeAttachments hold (a pod on it uses them), as the leader's caches (or
    the API server) say. Raises ClusterError."""
    vms = []
    for vm in await api.list_vms():
        meta, spec, status = vm.get("metadata") or {}, vm.get("spec") or {}, vm.get("status") or {}
        policy = spec.get("runPolicy") or "AlwaysOnUnlessStoppedManually"
        if status.get("nodeName") != node or status.get("phase") in NOT_HOSTED:
            continue
        if policy in RESTART_POLICIES:
            vms.append(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
    volumes = [va.volume for va in await api.list_volume_attachments(node)]
    return NodeWorkload(tuple(sorted(vms)), tuple(sorted(set(volumes))))
