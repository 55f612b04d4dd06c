"""What a node runs that fencing would free (reads only), for the maintenance guard of
`nodefence.agent.detection.policy`: its ColdStandby VMs (of every VM API in use) and the volumes
attached to it."""

from __future__ import annotations

from nodefence.agent.detection.policy import NodeWorkload
from nodefence.agent.kube.client import ClusterApi
from nodefence.agent.virt.layer_client import VirtLayer

# A VM in one of these phases is not on a node any more (or not yet).
NOT_HOSTED = ("Stopped", "Stopping", "Pending")


async def node_workload(api: ClusterApi, node: str, virt: VirtLayer) -> NodeWorkload:
    """The node's ColdStandby VMs (they come back by themselves, and run there) and the
    volumes its VolumeAttachments hold (a pod on it uses them). Raises ClusterError."""
    vms = [
        vm.key
        for vm in await virt.list_vms()
        if vm.node == node and vm.phase not in NOT_HOSTED and vm.restart
    ]
    volumes = [va.volume for va in await api.list_volume_attachments(node)]
    return NodeWorkload(tuple(sorted(vms)), tuple(sorted(set(volumes))))
