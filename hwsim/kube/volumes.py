"""CSI volumes as Kubernetes names them: a pod's claims, their volumes, their attachments.

Pure functions over store objects, shared by the kubelet (which reports `volumesInUse`), the
attach/detach controller and the VM controller. A CSI volume's unique name is
`kubernetes.io/csi/<driver>^<volumeHandle>` (what `node.status.volumesInUse` and
`volumesAttached` list); its VolumeAttachment is named `csi-<sha256(handle, driver, node)>`, as
the CSI attacher names it, so every component finds the same object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]

DEFAULT_DRIVER = "rbd.csi.ceph.com"
SINGLE_NODE_MODES = ("ReadWriteOnce", "ReadWriteOncePod")
MULTI_NODE_MODES = ("ReadWriteMany", "ReadOnlyMany")


@dataclass(frozen=True)
class PodVolume:
    """One CSI persistent volume a pod uses."""

    pv: str  # PersistentVolume name
    driver: str
    handle: str
    claim: str  # the pod's PersistentVolumeClaim (namespace/name)
    multi_node: bool  # RWX/ROX: may be attached to several nodes at once

    @property
    def unique_name(self) -> str:
        """`kubernetes.io/csi/<driver>^<handle>`."""
        return f"kubernetes.io/csi/{self.driver}^{self.handle}"


def attachment_name(handle: str, driver: str, node: str) -> str:
    """The VolumeAttachment name the CSI attacher uses for (volume, driver, node)."""
    digest = hashlib.sha256(f"{handle}{driver}{node}".encode()).hexdigest()
    return f"csi-{digest}"


def claim_names(pod: Obj) -> list[str]:
    """The PersistentVolumeClaims a pod's volumes name, in order."""
    names = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        claim = (volume or {}).get("persistentVolumeClaim") or {}
        if claim.get("claimName"):
            names.append(str(claim["claimName"]))
    return names


def volume_of(pv: Obj, claim: str) -> PodVolume | None:
    """The CSI volume a PersistentVolume describes, or None when it is not a CSI volume."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi") or {}
    if not csi.get("driver") or not csi.get("volumeHandle"):
        return None
    modes = spec.get("accessModes") or []
    return PodVolume(
        pv["metadata"]["name"],
        str(csi["driver"]),
        str(csi["volumeHandle"]),
        claim,
        multi_node=any(m in MULTI_NODE_MODES for m in modes),
    )


def pod_volumes(store: ObjectStore, pod: Obj) -> list[PodVolume]:
    """The bound CSI volumes of a pod (claims not found or not bound are skipped)."""
    namespace = (pod.get("metadata") or {}).get("namespace") or ""
    found = []
    for claim in claim_names(pod):
        try:
            pvc = store.get("persistentvolumeclaims", claim, namespace)
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            if not pv_name:
                continue
            volume = volume_of(store.get("persistentvolumes", pv_name), f"{namespace}/{claim}")
        except NotFound:
            continue
        if volume is not None:
            found.append(volume)
    return found


def make_disk(
    name: str, namespace: str, size: str = "10Gi", access_mode: str = "ReadWriteOnce"
) -> tuple[Obj, Obj]:
    """A bound claim `name` (ReadWriteOnce unless `access_mode` says, e.g. ReadWriteMany for a
    shared block volume a VM can live-migrate with) and its CSI PersistentVolume
    `pvc-<ns>-<name>`, as a provisioner leaves them (the claim's and the volume's status are
    written apart)."""
    pv_name = f"pvc-{namespace}-{name}"
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": [access_mode],
            "volumeMode": "Block",
            "storageClassName": "ceph-rbd",
            "resources": {"requests": {"storage": size}},
            "volumeName": pv_name,
        },
    }
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "accessModes": [access_mode],
            "volumeMode": "Block",
            "capacity": {"storage": size},
            "storageClassName": "ceph-rbd",
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": name},
            "csi": {"driver": DEFAULT_DRIVER, "volumeHandle": f"0001-{namespace}-{name}"},
        },
    }
    return pvc, pv


def create_disk(
    store: ObjectStore, name: str, namespace: str, access_mode: str = "ReadWriteOnce"
) -> None:
    """Create a bound claim and its volume (`make_disk`), both with status Bound; a claim
    that exists already is kept as it is."""
    pvc, pv = make_disk(name, namespace, access_mode=access_mode)
    try:
        store.get("persistentvolumeclaims", name, namespace)
        return
    except NotFound:
        pass
    store.create("persistentvolumes", pv)
    store.patch(
        "persistentvolumes",
        pv["metadata"]["name"],
        {"status": {"phase": "Bound"}},
        subresource="status",
    )
    store.create("persistentvolumeclaims", pvc, namespace)
    capacity = pvc["spec"]["resources"]["requests"]
    status = {"phase": "Bound", "accessModes": pvc["spec"]["accessModes"], "capacity": capacity}
    store.patch("persistentvolumeclaims", name, {"status": status}, namespace, subresource="status")
