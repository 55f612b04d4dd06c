"""The I/O of releasing a fenced node, each step only ever planned after a proven Off
(`nodefence.agent.fencing.machine.next_action`): force-delete its pods, remove its
VolumeAttachments, and (cleanup taint + reboot) see whether it came back and lift its taint. Each
returns the event the pure machine folds in; the Lease check before each irreversible step is the
executor's.

Why these steps: after a proven power-off nothing on the node runs, but the API does not know.
Its pods would stay Terminating (a graceful delete waits for a kubelet that is gone) until PodGC
takes them 40 s after the Node is deleted, and the attach/detach controller keeps a volume
still mounted there attached for 6 minutes (maxWaitForUnmountDuration) unless it sees the
out-of-service taint: a VM's disk could not be attached anywhere else ("Multi-Attach error").
medik8s' fence-agents-remediation calls this "resource deletion".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nodefence.agent.fencing.events import AttachmentsReleased, PodsReleased, ReturnChecked
from nodefence.agent.fencing.operation import Operation
from nodefence.agent.kube.client import ClusterApi

log = logging.getLogger("nodefence.fencing")


async def release_pods(api: ClusterApi, op: Operation) -> PodsReleased:
    """Force-delete (grace 0, uid precondition) every pod bound to the fenced node."""
    deleted = 0
    for pod in await api.pods_to_release(op.node):
        if await api.force_delete_pod(pod.namespace, pod.name, pod.uid):
            deleted += 1
    log.warning("fencing node=%s op=%s: force-deleted %d pods", op.node, op.id, deleted)
    return PodsReleased(deleted)


async def release_attachments(api: ClusterApi, op: Operation) -> AttachmentsReleased:
    """Delete the node's VolumeAttachments and say what is still attached: attachments
    waiting for the CSI attacher's finalizer, and the Node's `status.volumesAttached` (the
    attach/detach controller clears it before it detaches)."""
    removed = 0
    remaining: list[str] = []
    for va in await api.list_volume_attachments(op.node):
        if not va.deleting and await api.delete_volume_attachment(va.name, va.uid):
            removed += 1
        remaining.append(va.volume)
    for volume in await api.volumes_attached(op.node):
        remaining.append(volume)
    if removed:
        log.warning("fencing node=%s op=%s: removed %d VolumeAttachments", op.node, op.id, removed)
    return AttachmentsReleased(removed, tuple(sorted(set(remaining))))


async def node_returned(
    api: ClusterApi, op: Operation, last_heartbeat: Callable[[str], float | None], now: float
) -> ReturnChecked:
    """Is the powered-on node back: its Node (the same object) Ready, and a heartbeat of its
    agent received (leader clock `now`) after the power-on?"""
    node = await api.get_node(op.node)
    if node is None or (op.node_uid and node.uid != op.node_uid) or not node.ready:
        return ReturnChecked(False)
    since = op.powered_on_at if op.powered_on_at is not None else now
    heard = last_heartbeat(op.node)
    if heard is None or heard <= since:
        return ReturnChecked(False)
    return ReturnChecked(True, f"Ready, heartbeat {now - heard:.1f} s ago")
