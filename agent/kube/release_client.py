"""The Kubernetes calls of releasing a fenced node: its pods, its VolumeAttachments, its taint.

A mixin of `nodefence.agent.kube.client.ClusterApi` (which provides `_call`, the deadline-bounded
client call): kept apart so the release, which only ever runs after a proven power-off, reads as one
small surface. Like the rest of ClusterApi it returns plain values, never client models: the
pods to release as `PodInfo`, the attachments as `AttachmentInfo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client as k8s

from nodefence.agent.kube.errors import ClusterError, Conflict, NotFound
from nodefence.agent.kube.pods_client import PodCalls

T = TypeVar("T")
OUT_OF_SERVICE_KEY = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_TAINT = {"key": OUT_OF_SERVICE_KEY, "value": "nodeshutdown", "effect": "NoExecute"}
FENCED_ANNOTATION = "nodefence.io/fenced-by"  # the operation that tainted the node


@dataclass(frozen=True)
class PodInfo:
    """One Pod bound to a fenced node, as its release deletes it."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class AttachmentInfo:
    """One VolumeAttachment as the release needs it."""

    name: str
    uid: str
    volume: str  # the PersistentVolume, or the attachment's name for inline volumes
    deleting: bool  # marked for deletion, waiting for the CSI attacher's finalizer


def pod_infos(pods: list[dict[str, Any]]) -> list[PodInfo]:
    """The Pods (the API's JSON) that carry a namespace, a name and a uid, as `PodInfo`."""
    found = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
        if name and namespace and uid:
            found.append(PodInfo(str(namespace), str(name), str(uid)))
    return found


class ReleaseCalls(PodCalls):
    """Pods, VolumeAttachments and the out-of-service taint of one node."""

    async def pods_to_release(self, node: str) -> list[PodInfo]:
        """The Pods bound to `node` (`list_node_pods`) that a force-delete can name."""
        return pod_infos(await self.list_node_pods(node))

    async def force_delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """Delete a pod with grace 0 (not waiting for a kubelet that is gone), only that
        object (a uid precondition). False when it was already gone or replaced."""
        options = k8s.V1DeleteOptions(
            grace_period_seconds=0, preconditions=k8s.V1Preconditions(uid=uid)
        )
        return await self._gone_is_fine(
            f"force-delete pod {namespace}/{name}",
            lambda: self.core.delete_namespaced_pod(
                name, namespace, body=options, _request_timeout=self.timeout
            ),
        )

    async def list_volume_attachments(self, node: str) -> list[AttachmentInfo]:
        """The VolumeAttachments of `node` (the API has no field selector for it: all are
        listed and filtered here)."""
        result: Any = await self._call(
            "list volume attachments",
            lambda: self.storage.list_volume_attachment(_request_timeout=self.timeout),
        )
        found = []
        for va in result.items:
            if va.spec is None or va.spec.node_name != node or va.metadata is None:
                continue
            meta, source = va.metadata, va.spec.source
            volume = (source.persistent_volume_name if source else None) or meta.name
            found.append(
                AttachmentInfo(
                    str(meta.name),
                    str(meta.uid or ""),
                    str(volume),
                    meta.deletion_timestamp is not None,
                )
            )
        return found

    async def delete_volume_attachment(self, name: str, uid: str) -> bool:
        """Delete a VolumeAttachment (only that object); False when already gone. The CSI
        attacher's finalizer keeps it until the volume is unpublished from the node."""
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
        return await self._gone_is_fine(
            f"delete volume attachment {name}",
            lambda: self.storage.delete_volume_attachment(
                name, body=options, _request_timeout=self.timeout
            ),
        )

    async def volumes_attached(self, node: str) -> list[str]:
        """`status.volumesAttached` of the Node as the attach/detach controller reports it
        ([] when the Node is gone)."""
        try:
            obj: Any = await self._call(
                f"read node {node}",
                lambda: self.core.read_node(node, _request_timeout=self.timeout),
            )
        except NotFound:
            return []
        attached = (obj.status.volumes_attached or []) if obj.status else []
        return [str(v.name) for v in attached]

    async def taint_out_of_service(
        self, node: str, uid: str | None = None, operation: str = ""
    ) -> bool:
        """Put the out-of-service NoExecute taint on the Node (idempotent) and, with
        `operation`, nodefence's mark naming it. False when the Node no longer exists, or
        (with `uid`) is another object than the one decided dead (`patch_node_taints`)."""

        def tainted(obj: Any) -> dict[str, Any] | None:
            taints = list(obj.spec.taints or []) if obj.spec else []
            marked = not operation or (obj.metadata.annotations or {}).get(FENCED_ANNOTATION)
            if marked and any(
                t.key == OUT_OF_SERVICE_KEY and t.effect == "NoExecute" for t in taints
            ):
                return None
            taints = [t for t in taints if t.key != OUT_OF_SERVICE_KEY]
            meta: dict[str, Any] = {"resourceVersion": obj.metadata.resource_version}
            if operation:
                meta["annotations"] = {FENCED_ANNOTATION: operation}
            return {
                "metadata": meta,
                "spec": {
                    "taints": [
                        *({"key": t.key, "value": t.value, "effect": t.effect} for t in taints),
                        OUT_OF_SERVICE_TAINT,
                    ]
                },
            }

        return await self.patch_node_taints(f"taint node {node}", node, uid, tainted)

    async def remove_out_of_service(self, node: str, uid: str | None) -> bool:
        """Remove the out-of-service taint and nodefence's mark from the Node (only the
        object `uid`, read-modify-write with resourceVersion). False when the Node is gone
        or another object now."""

        def untainted(obj: Any) -> dict[str, Any]:
            taints = list(obj.spec.taints or []) if obj.spec else []
            kept = [
                {"key": t.key, "value": t.value, "effect": t.effect}
                for t in taints
                if t.key != OUT_OF_SERVICE_KEY
            ]
            return {
                "metadata": {
                    "resourceVersion": obj.metadata.resource_version,
                    "annotations": {FENCED_ANNOTATION: None},
                },
                "spec": {"taints": kept or None},
            }

        return await self.patch_node_taints(f"untaint node {node}", node, uid, untainted)

    async def patch_node_taints(
        self, what: str, node: str, uid: str | None, change: Callable[[Any], dict[str, Any] | None]
    ) -> bool:
        """Read-modify-write of a Node's taints (an atomic list): `change(node)` gives the
        patch, carrying the resourceVersion it read (None: nothing to change); retried on a
        conflict. False when the Node is gone, or (with `uid`) is another object now: a Node
        re-registered since the decision is never touched."""
        for _ in range(5):
            try:
                obj: Any = await self._call(
                    f"read node {node}",
                    lambda: self.core.read_node(node, _request_timeout=self.timeout),
                )
            except NotFound:
                return False
            if uid is not None and obj.metadata.uid != uid:
                return False
            body = change(obj)
            if body is None:
                return True
            try:
                await self._call(
                    what,
                    lambda b=body: self.core.patch_node(  # type: ignore[misc]
                        node, b, _request_timeout=self.timeout
                    ),
                )
                return True
            except NotFound:
                return False
            except Conflict:
                continue  # another writer changed the Node since the read: read it again
        raise ClusterError(f"{what}: kept conflicting with other writers")

    async def _gone_is_fine(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            await self._call(what, fn)
        except (NotFound, Conflict):
            return False  # gone already, or the uid precondition found another object
        return True
