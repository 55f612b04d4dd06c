"""`AttachDetachController`: kube-controller-manager's attach/detach controller and a CSI
external-attacher, for CSI persistent volumes (pkg/controller/volume/attachdetach).

Like upstream it keeps its own actual state of the world (which volume it believes attached to
which node) and reconciles it every `loop_period` (upstream 100 ms) against the desired state:
every volume of every pod bound to a node that is not Succeeded/Failed (a Terminating pod still
wants its volumes: a dead kubelet never says they are unmounted).
- Detach, when a volume is no longer desired on a node: at once if the node's kubelet does not
  report it in `status.volumesInUse` (unmounted); if it does, only when the node carries the
  `node.kubernetes.io/out-of-service` taint (non-graceful node shutdown), or, for a node that is
  not Ready or gone, once `max_wait_for_unmount` (upstream maxWaitForUnmountDuration, 6 min)
  has passed since the detach was wanted. A deleted Node's last `volumesInUse` counts.
- Attach, when desired and not attached: a ReadWriteOnce volume attached (in its own state) to
  another node is not attached; the pod gets a `FailedAttachVolume` Warning Event, "Multi-Attach
  error for volume ...", once. Otherwise it creates the VolumeAttachment (`csi-<hash>`, with the
  external-attacher's finalizer).
- Sync, every `sync_period` (upstream --attach-detach-reconcile-sync-period, 60 s): an
  attachment whose VolumeAttachment is gone, or not attached, is forgotten. This is the only
  way it learns of a VolumeAttachment somebody else deleted.
- It writes `status.volumesAttached` of each existing Node.
The external-attacher part: a new VolumeAttachment gets `status.attached: true` (ControllerPublish
always works here); one being deleted loses its finalizer (ControllerUnpublish, which a CSI
driver such as Ceph RBD can do without the node) and so goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import AlreadyExists, ApiError, NotFound
from nodefence.hwsim.kube.objects import timestamp, wall_clock
from nodefence.hwsim.kube.patch import STRATEGIC
from nodefence.hwsim.kube.periodic import Periodic, PeriodicController
from nodefence.hwsim.kube.podgc import OUT_OF_SERVICE, has_taint_key, node_ready
from nodefence.hwsim.kube.pods import is_terminal
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.volumes import PodVolume, attachment_name, pod_volumes

log = logging.getLogger(__name__)
Obj = dict[str, Any]
FAILED_ATTACH = "FailedAttachVolume"


def finalizer_for(driver: str) -> str:
    """The external-attacher's finalizer on a VolumeAttachment of `driver`."""
    return "external-attacher/" + "".join(c if c.isalnum() or c == "-" else "-" for c in driver)


@dataclass
class _Attached:
    volume: PodVolume
    node: str
    detach_wanted: float | None = None


class AttachDetachController(PeriodicController):
    """See the module doc; `tick()` runs one reconcile (and a sync when due)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_wait_for_unmount: float = 360.0,
        sync_period: float = 60.0,
        loop_period: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], Any] = wall_clock,
    ) -> None:
        self.store = store
        self.max_wait_for_unmount = max_wait_for_unmount
        self.sync_period = sync_period
        self.monotonic = monotonic
        self.clock = clock
        self.attached: dict[tuple[str, str], _Attached] = {}  # (volume, node): what it believes
        self.detached: list[tuple[float, str, str, str]] = []  # (when, pv, node, why)
        self._in_use: dict[str, set[str]] = {}  # node -> volumesInUse last seen
        self._reported: set[tuple[str, str]] = set()  # (volume, pod uid) Multi-Attach told
        self._last_sync = monotonic()
        self._loop = Periodic(self.tick, loop_period, "attach-detach-controller")

    def tick(self) -> None:
        """One reconcile: the external attacher, detaches, attaches, node status, sync."""
        now = self.monotonic()
        nodes = {n["metadata"]["name"]: n for n in self.store.list("nodes")["items"]}
        for name, node in nodes.items():
            self._in_use[name] = set((node.get("status") or {}).get("volumesInUse") or [])
        attachments = {
            va["metadata"]["name"]: va for va in self.store.list("volumeattachments")["items"]
        }
        self._external_attacher(attachments)
        desired = self._desired()
        self._detach(desired, nodes, now)
        self._attach(desired, attachments, nodes)
        if now - self._last_sync >= self.sync_period:
            self._last_sync = now
            self._sync()
        self._node_statuses(nodes)

    # ---- desired state ----------------------------------------------------------------------

    def _desired(self) -> dict[tuple[str, str], tuple[PodVolume, list[Obj]]]:
        desired: dict[tuple[str, str], tuple[PodVolume, list[Obj]]] = {}
        for pod in self.store.list("pods")["items"]:
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or is_terminal(pod):
                continue
            for volume in pod_volumes(self.store, pod):
                desired.setdefault((volume.unique_name, node), (volume, []))[1].append(pod)
        return desired

    # ---- detaching --------------------------------------------------------------------------

    def _detach(
        self,
        desired: dict[tuple[str, str], tuple[PodVolume, list[Obj]]],
        nodes: dict[str, Obj],
        now: float,
    ) -> None:
        for key, att in list(self.attached.items()):
            if key in desired:
                att.detach_wanted = None
                continue
            if att.detach_wanted is None:
                att.detach_wanted = now
            node = nodes.get(att.node)
            timeout = now - att.detach_wanted > self.max_wait_for_unmount
            force = timeout and (node is None or not node_ready(node))
            out_of_service = node is not None and has_taint_key(node, OUT_OF_SERVICE)
            mounted = att.volume.unique_name in self._in_use.get(att.node, set())
            if mounted and not force and not out_of_service:
                continue
            why = (
                "unmounted"
                if not mounted
                else f"{OUT_OF_SERVICE} taint"
                if out_of_service
                else f"maxWaitForUnmountDuration {self.max_wait_for_unmount:g} s expired"
            )
            del self.attached[key]
            self._delete_attachment(att)
            self.detached.append((now, att.volume.pv, att.node, why))
            log.info("detach %s from %s: %s", att.volume.pv, att.node, why)

    def _delete_attachment(self, att: _Attached) -> None:
        name = attachment_name(att.volume.handle, att.volume.driver, att.node)
        try:
            self.store.delete("volumeattachments", name)
        except NotFound:
            pass  # deleted by someone else already: detached is detached

    # ---- attaching --------------------------------------------------------------------------

    def _attach(
        self,
        desired: dict[tuple[str, str], tuple[PodVolume, list[Obj]]],
        attachments: dict[str, Obj],
        nodes: dict[str, Obj],
    ) -> None:
        for (unique, node), (volume, pods) in sorted(desired.items(), key=lambda i: i[0]):
            if (unique, node) in self.attached or node not in nodes:
                continue  # a node it does not manage (gone): nothing is attached there
            others = sorted(n for (u, n) in self.attached if u == unique and n != node)
            if others and not volume.multi_node:
                self._multi_attach(volume, pods, node, desired)
                continue
            name = attachment_name(volume.handle, volume.driver, node)
            if name not in attachments:
                body = {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "VolumeAttachment",
                    "metadata": {"name": name, "finalizers": [finalizer_for(volume.driver)]},
                    "spec": {
                        "attacher": volume.driver,
                        "nodeName": node,
                        "source": {"persistentVolumeName": volume.pv},
                    },
                }
                try:
                    self.store.create("volumeattachments", body)
                except AlreadyExists:
                    pass
            self.attached[(unique, node)] = _Attached(volume, node)
            log.info("attach %s to %s", volume.pv, node)

    def _multi_attach(
        self,
        volume: PodVolume,
        pods: list[Obj],
        node: str,
        desired: dict[tuple[str, str], tuple[PodVolume, list[Obj]]],
    ) -> None:
        for pod in pods:
            meta = pod["metadata"]
            if (volume.unique_name, meta["uid"]) in self._reported:
                continue
            self._reported.add((volume.unique_name, meta["uid"]))
            users = sorted(
                p["metadata"]["name"]
                for (u, n), (_, ps) in desired.items()
                if u == volume.unique_name and n != node
                for p in ps
                if p["metadata"]["namespace"] == meta["namespace"]
            )
            detail = (
                f"Volume is already used by pod(s) {', '.join(users)}"
                if users
                else "Volume is already exclusively attached to one node and can't be attached"
                " to another"
            )
            self._event(pod, f'Multi-Attach error for volume "{volume.pv}" {detail}')

    def _event(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        stamp = timestamp(self.clock())
        event = {
            "metadata": {"generateName": f"{meta['name']}."},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": FAILED_ATTACH,
            "message": message,
            "type": "Warning",
            "source": {"component": "attachdetach-controller"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.store.create("events", event, meta["namespace"])
        except ApiError as err:
            log.warning("cannot record %s for %s: %s", FAILED_ATTACH, meta["name"], err)

    # ---- the external attacher, sync and node status ----------------------------------------

    def _external_attacher(self, attachments: dict[str, Obj]) -> None:
        for name, va in list(attachments.items()):
            meta = va["metadata"]
            if meta.get("deletionTimestamp"):
                finalizers = [
                    f
                    for f in meta.get("finalizers") or []
                    if not f.startswith("external-attacher/")
                ]
                try:
                    self.store.patch(
                        "volumeattachments", name, {"metadata": {"finalizers": finalizers or None}}
                    )
                except NotFound:
                    pass
                attachments.pop(name, None)
            elif not (va.get("status") or {}).get("attached"):
                try:
                    self.store.patch(
                        "volumeattachments",
                        name,
                        {"status": {"attached": True}},
                        subresource="status",
                    )
                except NotFound:
                    attachments.pop(name, None)

    def _sync(self) -> None:
        for key, att in list(self.attached.items()):
            name = attachment_name(att.volume.handle, att.volume.driver, att.node)
            try:
                va = self.store.get("volumeattachments", name)
            except NotFound:
                va = None
            if va is None or va["metadata"].get("deletionTimestamp"):
                del self.attached[key]  # VerifyVolumesAreAttached: marked detached
                log.info("sync: %s is no longer attached to %s", att.volume.pv, att.node)

    def _node_statuses(self, nodes: dict[str, Obj]) -> None:
        for name, node in nodes.items():
            want = sorted(u for (u, n) in self.attached if n == name)
            have = sorted(
                str(v.get("name")) for v in (node.get("status") or {}).get("volumesAttached") or []
            )
            if want == have:
                continue
            value = [{"name": u, "devicePath": ""} for u in want] or None
            try:
                self.store.patch(
                    "nodes",
                    name,
                    {"status": {"volumesAttached": value}},
                    patch_type=STRATEGIC,
                    subresource="status",
                )
            except NotFound:
                pass
