"""The resources served out of the box, with the columns `kubectl get` prints for them.

Enough of core/v1, coordination, events, policy and apps for the agent, kubectl drain and the
simulators, plus Deckhouse Virtualization's VirtualMachine and VirtualMachineOperation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.tables import AGE, NAME, Cell, Column, age_of, lookup, path_column

Obj = dict[str, Any]

VIRT_GROUP = "virtualization.deckhouse.io"


def _condition(obj: Obj, ctype: str) -> Obj | None:
    for cond in lookup(obj, "status.conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def _node_status(obj: Obj, _: datetime) -> Cell:
    ready = _condition(obj, "Ready")
    state = "Unknown" if ready is None else "Ready" if ready.get("status") == "True" else "NotReady"
    if lookup(obj, "spec.unschedulable"):
        state += ",SchedulingDisabled"
    return state


def _node_roles(obj: Obj, _: datetime) -> Cell:
    prefix = "node-role.kubernetes.io/"
    labels = lookup(obj, "metadata.labels") or {}
    roles = sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _node_ip(obj: Obj, _: datetime) -> Cell:
    for addr in lookup(obj, "status.addresses") or []:
        if addr.get("type") == "InternalIP":
            return str(addr.get("address"))
    return "<none>"


def _pod_ready(obj: Obj, _: datetime) -> Cell:
    total = len(lookup(obj, "spec.containers") or [])
    ready = sum(1 for c in lookup(obj, "status.containerStatuses") or [] if c.get("ready"))
    return f"{ready}/{total}"


def _pod_status(obj: Obj, _: datetime) -> Cell:
    if lookup(obj, "metadata.deletionTimestamp"):
        return "Terminating"
    return str(lookup(obj, "status.reason") or lookup(obj, "status.phase") or "Pending")


def _pod_restarts(obj: Obj, _: datetime) -> Cell:
    return sum(int(c.get("restartCount", 0)) for c in lookup(obj, "status.containerStatuses") or [])


def _count(path: str, *more: str) -> Column:
    def value(obj: Obj, _: datetime) -> Cell:
        return sum(len(lookup(obj, p) or {}) for p in (path, *more))

    return Column("Data", value, "integer")


def _ports(obj: Obj, _: datetime) -> Cell:
    ports = lookup(obj, "spec.ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _event_object(obj: Obj, _: datetime) -> Cell:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _last_seen(obj: Obj, now: datetime) -> Cell:
    when = (
        obj.get("lastTimestamp")
        or obj.get("eventTime")
        or lookup(obj, "metadata.creationTimestamp")
    )
    return age_of(when, now)


_POD_LIST_KEYS = (
    ("spec.containers", "name"),
    ("spec.initContainers", "name"),
    ("spec.containers.ports", "containerPort"),
    ("spec.containers.env", "name"),
    ("spec.containers.volumeMounts", "mountPath"),
    ("spec.volumes", "name"),
    ("spec.imagePullSecrets", "name"),
    ("status.conditions", "type"),
)
_EVENT_COLUMNS = (
    Column("Last Seen", _last_seen),
    path_column("Type", ".type"),
    path_column("Reason", ".reason"),
    Column("Object", _event_object),
    Column("Message", lambda o, _: str(o.get("message") or o.get("note") or "")),
)


def _core(**fields: Any) -> ResourceType:
    return ResourceType(group="", version="v1", built_in=True, **fields)


def builtin_types() -> list[ResourceType]:
    """A fresh list of the built-in resource types."""
    return [
        _core(
            kind="Namespace",
            plural="namespaces",
            namespaced=False,
            short_names=("ns",),
            status_subresource=True,
            keep_status_on_create=True,
            columns=(NAME, path_column("Status", ".status.phase"), AGE),
            field_selectors=("status.phase",),
        ),
        _core(
            kind="Node",
            plural="nodes",
            namespaced=False,
            short_names=("no",),
            status_subresource=True,
            keep_status_on_create=True,
            columns=(
                NAME,
                Column("Status", _node_status),
                Column("Roles", _node_roles),
                AGE,
                path_column("Version", ".status.nodeInfo.kubeletVersion"),
                Column("Internal-IP", _node_ip, priority=1),
            ),
            field_selectors=("spec.unschedulable",),
            merge_keys=(
                ("status.conditions", "type"),
                ("status.addresses", "type"),
                ("spec.podCIDRs", ""),
            ),
        ),
        _core(
            kind="Pod",
            plural="pods",
            short_names=("po",),
            categories=("all",),
            status_subresource=True,
            columns=(
                NAME,
                Column("Ready", _pod_ready),
                Column("Status", _pod_status),
                Column("Restarts", _pod_restarts, "integer"),
                AGE,
                path_column("IP", ".status.podIP", priority=1),
                path_column("Node", ".spec.nodeName", priority=1),
            ),
            field_selectors=("spec.nodeName", "status.phase", "spec.restartPolicy"),
            merge_keys=_POD_LIST_KEYS,
            subresources=("eviction",),
        ),
        _core(
            kind="Event",
            plural="events",
            short_names=("ev",),
            columns=_EVENT_COLUMNS,
            field_selectors=(
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "type",
            ),
        ),
        _core(
            kind="ConfigMap",
            plural="configmaps",
            short_names=("cm",),
            columns=(NAME, _count("data", "binaryData"), AGE),
        ),
        _core(
            kind="Secret",
            plural="secrets",
            columns=(NAME, path_column("Type", ".type"), _count("data"), AGE),
            field_selectors=("type",),
        ),
        _core(
            kind="Service",
            plural="services",
            short_names=("svc",),
            categories=("all",),
            status_subresource=True,
            columns=(
                NAME,
                path_column("Type", ".spec.type"),
                path_column("Cluster-IP", ".spec.clusterIP"),
                Column("Ports", _ports),
                AGE,
            ),
            merge_keys=(("spec.ports", "port"),),
        ),
        _core(
            kind="ServiceAccount",
            plural="serviceaccounts",
            short_names=("sa",),
        ),
        ResourceType(
            group="coordination.k8s.io",
            version="v1",
            kind="Lease",
            plural="leases",
            built_in=True,
            columns=(NAME, path_column("Holder", ".spec.holderIdentity"), AGE),
            allow_unconditional_update=False,  # a PUT without resourceVersion is 422
        ),
        ResourceType(
            group="events.k8s.io",
            version="v1",
            kind="Event",
            plural="events",
            short_names=("ev",),
            built_in=True,
            columns=_EVENT_COLUMNS,
            field_selectors=("regarding.kind", "regarding.name", "reason", "type"),
        ),
        ResourceType(
            group="policy",
            version="v1",
            kind="PodDisruptionBudget",
            plural="poddisruptionbudgets",
            short_names=("pdb",),
            built_in=True,
            status_subresource=True,
            columns=(
                NAME,
                path_column("Min Available", ".spec.minAvailable"),
                path_column("Max Unavailable", ".spec.maxUnavailable"),
                path_column("Allowed Disruptions", ".status.disruptionsAllowed", "integer"),
                AGE,
            ),
        ),
        *(
            ResourceType(
                group="apps",
                version="v1",
                kind=kind,
                plural=plural,
                short_names=(short,),
                categories=("all",),
                built_in=True,
                status_subresource=True,
                merge_keys=tuple((f"spec.template.{k}", v) for k, v in _POD_LIST_KEYS[:-1]),
            )
            for kind, plural, short in (
                ("DaemonSet", "daemonsets", "ds"),
                ("Deployment", "deployments", "deploy"),
                ("ReplicaSet", "replicasets", "rs"),
                ("StatefulSet", "statefulsets", "sts"),
            )
        ),
        ResourceType(
            group="apiextensions.k8s.io",
            version="v1",
            kind="CustomResourceDefinition",
            plural="customresourcedefinitions",
            namespaced=False,
            short_names=("crd", "crds"),
            built_in=True,
            status_subresource=True,
            allow_unconditional_update=False,
            columns=(
                NAME,
                Column("Created At", lambda o, _: lookup(o, "metadata.creationTimestamp")),
            ),
        ),
        *storage_types(),
        *virtualization_types(),
    ]


def _access_modes(obj: Obj, _: datetime) -> Cell:
    short = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX"}
    modes = lookup(obj, "spec.accessModes") or []
    return ",".join(short.get(m, m) for m in modes)


def storage_types() -> list[ResourceType]:
    """PersistentVolumeClaim, PersistentVolume and VolumeAttachment (what a CSI disk is made of)."""
    return [
        _core(
            kind="PersistentVolumeClaim",
            plural="persistentvolumeclaims",
            short_names=("pvc",),
            status_subresource=True,
            columns=(
                NAME,
                path_column("Status", ".status.phase"),
                path_column("Volume", ".spec.volumeName"),
                path_column("Capacity", ".status.capacity.storage"),
                Column("Access Modes", _access_modes),
                path_column("StorageClass", ".spec.storageClassName"),
                AGE,
            ),
        ),
        _core(
            kind="PersistentVolume",
            plural="persistentvolumes",
            namespaced=False,
            short_names=("pv",),
            status_subresource=True,
            columns=(
                NAME,
                path_column("Capacity", ".spec.capacity.storage"),
                Column("Access Modes", _access_modes),
                path_column("Status", ".status.phase"),
                Column(
                    "Claim",
                    lambda o, _: "/".join(
                        str(lookup(o, f"spec.claimRef.{f}") or "") for f in ("namespace", "name")
                    ),
                ),
                AGE,
            ),
        ),
        ResourceType(
            group="storage.k8s.io",
            version="v1",
            kind="VolumeAttachment",
            plural="volumeattachments",
            namespaced=False,
            built_in=True,
            status_subresource=True,
            columns=(
                NAME,
                path_column("Attacher", ".spec.attacher"),
                path_column("PV", ".spec.source.persistentVolumeName"),
                path_column("Node", ".spec.nodeName"),
                path_column("Attached", ".status.attached"),
                AGE,
            ),
        ),
    ]


def virtualization_types() -> list[ResourceType]:
    """VirtualMachine (`vm`) and VirtualMachineOperation (`vmop`), as Deckhouse's CRDs declare."""
    return [
        ResourceType(
            group=VIRT_GROUP,
            version="v1alpha2",
            kind="VirtualMachine",
            plural="virtualmachines",
            short_names=("vm", "vms"),
            singular="virtualmachine",
            categories=("all", "virtualization"),
            status_subresource=True,
            columns=(
                NAME,
                path_column("Phase", ".status.phase"),
                path_column("Cores", ".spec.cpu.cores", "integer", priority=1),
                path_column("Memory", ".spec.memory.size", priority=1),
                path_column("Node", ".status.nodeName"),
                path_column("IPAddress", ".status.ipAddress"),
                AGE,
            ),
        ),
        ResourceType(
            group=VIRT_GROUP,
            version="v1alpha2",
            kind="VirtualMachineOperation",
            plural="virtualmachineoperations",
            short_names=("vmop", "vmops"),
            singular="virtualmachineoperation",
            categories=("virtualization",),
            status_subresource=True,
            immutable_spec=True,
            columns=(
                NAME,
                path_column("Phase", ".status.phase"),
                path_column("Type", ".spec.type"),
                path_column("VirtualMachine", ".spec.virtualMachineName"),
                AGE,
            ),
        ),
    ]
