"""Starting a VM as Deckhouse Virtualization does, and telling when its launcher pod is gone.

Pure reads over the store, used by the ColdStandby controller
(`nodefence.hwsim.virtualization.coldstandby`):
- `launcher_lost`: a Running VM's launcher pod was deleted, or is Failed/Succeeded (the kubelet
  of a rebooted node fails pods with restartPolicy Never): the virtualization controller then
  restarts the VM (or stops it, by runPolicy). A deleted Node alone changes nothing: its pods
  stay until PodGC (after a 40 s quarantine) or a fencer deletes them.
- `disks_ready`: a new launcher pod starts only once every disk (a ReadWriteOnce PVC) is
  attached to its node; until then the VM is Pending with the attach/detach controller's
  reason ("Multi-Attach error for volume ...") when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.attachdetach import FAILED_ATTACH
from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.pods import is_terminal
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.volumes import attachment_name, pod_volumes

Obj = dict[str, Any]


@dataclass
class Start:
    """A VM being started: its new launcher pod, the node, and when its disks were attached."""

    pod: str
    node: str
    attached_at: float | None = None


def active_pod(status: Obj) -> str:
    """The name of the VM's active launcher pod in its status ("" when none is listed)."""
    for pod in status.get("virtualMachinePods") or []:
        if isinstance(pod, dict) and pod.get("active") and pod.get("name"):
            return str(pod["name"])
    return ""


def launcher_lost(store: ObjectStore, namespace: str, status: Obj) -> str:
    """Why the VM's launcher pod no longer carries it ("" while it does): `deleted` or the
    terminal phase (`Failed`, `Succeeded`). A VM listing no pod is not judged here."""
    name = active_pod(status)
    if not name:
        return ""
    try:
        pod = store.get("pods", name, namespace)
    except NotFound:
        return "deleted"
    if is_terminal(pod):
        return str((pod.get("status") or {}).get("phase"))
    return ""


def pod_gone(store: ObjectStore, namespace: str, name: str) -> bool:
    """The pod no longer exists or will never run again (terminal or Terminating)."""
    try:
        pod = store.get("pods", name, namespace)
    except NotFound:
        return True
    return is_terminal(pod) or bool(pod["metadata"].get("deletionTimestamp"))


def disks_ready(store: ObjectStore, namespace: str, pod_name: str) -> tuple[bool, str]:
    """(True, "") when every disk of the pod is attached to its node; else (False, the
    attach/detach controller's complaint, "" while it simply has not attached them yet)."""
    try:
        pod = store.get("pods", pod_name, namespace)
    except NotFound:
        return False, ""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    for volume in pod_volumes(store, pod):
        try:
            va = store.get("volumeattachments", attachment_name(volume.handle, volume.driver, node))
        except NotFound:
            va = None
        if va is not None and (va.get("status") or {}).get("attached"):
            continue
        return False, _attach_problem(store, pod)
    return True, ""


def _attach_problem(store: ObjectStore, pod: Obj) -> str:
    """The newest FailedAttachVolume Event message of the pod ("" when there is none)."""
    meta = pod["metadata"]
    events = store.list(
        "events",
        meta["namespace"],
        field_selector=f"involvedObject.name={meta['name']},reason={FAILED_ATTACH}",
    )["items"]
    ours = [e for e in events if (e.get("involvedObject") or {}).get("uid") == meta["uid"]]
    if not ours:
        return ""
    newest = max(ours, key=lambda e: int(e["metadata"]["resourceVersion"]))
    return str(newest.get("message") or "")
