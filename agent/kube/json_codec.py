"""Nodes, Leases and VolumeAttachments from the API's own JSON into nodefence's small values.

Pure. Lists and watches read raw JSON (the client's models cost far more than the parsing at
thousands of Nodes of 10-30 KB each), single reads may too; either way the same functions
make the `NodeInfo`, `LeaseInfo` and `AttachmentInfo` the rest of the agent uses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from nodefence.agent.fencing.pause import PAUSE_ANNOTATION
from nodefence.agent.kube.release_client import (
    FENCED_ANNOTATION,
    OUT_OF_SERVICE_KEY,
    AttachmentInfo,
)
from nodefence.agent.kube.types import (
    DECKHOUSE_FENCING_LABEL,
    DECKHOUSE_FENCING_MODE_LABEL,
    DECKHOUSE_MAINTENANCE_ANNOTATIONS,
    HEALTH_ANNOTATION,
    MAINTENANCE_CORDON_ANNOTATION,
    MAINTENANCE_LABEL,
    STANDBYS_ANNOTATION,
    LeaseInfo,
    NodeInfo,
)

Obj = Mapping[str, Any]


def _is_map(value: Any) -> bool:
    # A dict first: `isinstance` against the Mapping ABC costs several times more.
    return type(value) is dict or isinstance(value, Mapping)


def _map(value: Any) -> Obj:
    return value if _is_map(value) else {}


_READY = {"True": True, "False": False}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time (`metav1.Time` or `MicroTime`) as an aware datetime; None if absent
    or unreadable."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def node_info(obj: Obj) -> NodeInfo:
    """A Node (`v1.Node` JSON) as the agent needs it."""
    meta, spec, status = _map(obj.get("metadata")), _map(obj.get("spec")), _map(obj.get("status"))
    labels, annotations = _map(meta.get("labels")), _map(meta.get("annotations"))
    ip = next(
        (
            str(a.get("address"))
            for a in _list(status.get("addresses"))
            if _is_map(a) and a.get("type") == "InternalIP"
        ),
        None,
    )
    kubelet = _map(_map(status.get("daemonEndpoints")).get("kubeletEndpoint"))
    ready: bool | None = None
    for cond in _list(status.get("conditions")):
        if _is_map(cond) and cond.get("type") == "Ready":
            ready = _READY.get(str(cond.get("status")))
    allocatable = _map(status.get("allocatable"))
    taints = [t for t in _list(spec.get("taints")) if _is_map(t)]
    fencing = ""
    if DECKHOUSE_FENCING_LABEL in labels:
        fencing = str(labels.get(DECKHOUSE_FENCING_MODE_LABEL) or "Watchdog")
    port = kubelet.get("Port", kubelet.get("port"))
    return NodeInfo(
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        internal_ip=ip,
        kubelet_port=port if isinstance(port, int) else 0,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        maintenance=labels.get(MAINTENANCE_LABEL) == "true",
        health_endpoint=annotations.get(HEALTH_ANNOTATION),
        maintenance_mark=str(labels.get(MAINTENANCE_LABEL) or ""),
        cordoned_by_maintenance=annotations.get(MAINTENANCE_CORDON_ANNOTATION) == "true",
        allocatable_cpu=str(allocatable.get("cpu") or ""),
        allocatable_memory=str(allocatable.get("memory") or ""),
        out_of_service=any(t.get("key") == OUT_OF_SERVICE_KEY for t in taints),
        fenced_by=str(annotations.get(FENCED_ANNOTATION) or ""),
        deckhouse_fencing=fencing,
        deckhouse_maintenance=next(
            (a for a in DECKHOUSE_MAINTENANCE_ANNOTATIONS if a in annotations), ""
        ),
    )


def lease_info(obj: Obj) -> LeaseInfo:
    """A `coordination.k8s.io/v1` Lease as election and detection read it."""
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    annotations = _map(meta.get("annotations"))
    named = str(annotations.get(STANDBYS_ANNOTATION) or "")
    duration = spec.get("leaseDurationSeconds")
    holder = spec.get("holderIdentity")
    return LeaseInfo(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        holder=str(holder) if holder is not None else None,
        renew_time=parse_time(spec.get("renewTime")),
        acquire_time=parse_time(spec.get("acquireTime")),
        duration=duration if isinstance(duration, int) else None,
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(meta.get("resourceVersion") or ""),
        standbys=tuple(n for n in named.split(",") if n),
        paused=str(annotations.get(PAUSE_ANNOTATION) or ""),
    )


def attachment_info(obj: Obj) -> tuple[str, AttachmentInfo]:
    """A VolumeAttachment: the node it attaches to, and what the release needs of it."""
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    name = str(meta.get("name") or "")
    volume = _map(spec.get("source")).get("persistentVolumeName") or name
    info = AttachmentInfo(
        name, str(meta.get("uid") or ""), str(volume), bool(meta.get("deletionTimestamp"))
    )
    return str(spec.get("nodeName") or ""), info
