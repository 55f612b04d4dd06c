"""KubeVirt's VirtualMachines, VirtualMachineInstances and virt-launcher pods as KubeVirt
writes them, and `place_vms`, which puts a set of running VMs on nodes.

A VM's disk is a PersistentVolumeClaim `<vm>-root` its launcher pod mounts: ReadWriteOnce (it
can be attached to one node at a time, and the instance is not live-migratable:
`DisksNotLiveMigratable`, in virt-handler's words) or ReadWriteMany (a shared block volume: it
can migrate). Pure dict builders, except `place_vms`, which writes them to a store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.volumes import SINGLE_NODE_MODES, create_disk

Obj = dict[str, Any]

API_VERSION = "kubevirt.io/v1"
VM = "virtualmachines.kubevirt.io"
VMI = "virtualmachineinstances.kubevirt.io"
VMIM = "virtualmachineinstancemigrations.kubevirt.io"
KUBEVIRT = "kubevirts.kubevirt.io"
APP_LABEL = "kubevirt.io"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_NAME_LABEL = "vm.kubevirt.io/name"
DOMAIN_ANNOTATION = "kubevirt.io/domain"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
MIGRATION_VMI_LABEL = "kubevirt.io/vmi-name"
RESTARTED = frozenset({"Always", "RerunOnFailure"})  # after their node is lost
FINAL = frozenset({"Succeeded", "Failed"})
NOT_SHARED = (
    "cannot migrate VMI: PVC {} is not shared, live migration requires that all PVCs must be "
    "shared (using ReadWriteMany access mode)"
)


@dataclass(frozen=True)
class VmProfile:
    """How a placed VM is set up: its runStrategy, evictionStrategy (None: unset, the cluster's
    applies) and whether its disk is shared (ReadWriteMany)."""

    run_strategy: str
    eviction: str | None
    shared: bool


# Every runStrategy, every evictionStrategy way: migrated, stopped and restarted, stopped.
# In this order so that with 5 nodes and 10 VMs the last node (the scenarios' victim) runs
# one VM a drain migrates (kv-5) and one it stops and KubeVirt restarts elsewhere (kv-10).
DEFAULT_PROFILES = (
    VmProfile("Halted", None, True),
    VmProfile("RerunOnFailure", "LiveMigrate", True),
    VmProfile("Manual", "LiveMigrateIfPossible", True),
    VmProfile("Always", "None", False),
    VmProfile("Always", "LiveMigrate", True),
    VmProfile("Once", "LiveMigrateIfPossible", False),
)


class RunningRegistry(Protocol):
    """Whoever tracks where VMs really run (the controller's `actual`)."""

    def mark_running(self, namespace: str, name: str, node: str) -> None:
        """Record that the VM's processes run on `node` now."""


def condition(type_: str, status: bool, reason: str, message: str, now: str) -> Obj:
    """A VirtualMachineInstance (or VirtualMachine, migration) condition."""
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }


def make_vm(name: str, namespace: str, profile: VmProfile) -> Obj:
    """A VirtualMachine of one vCPU and 1 GiB with its disk `<name>-root`."""
    spec: Obj = {
        "domain": {
            "cpu": {"cores": 1, "sockets": 1, "threads": 1},
            "memory": {"guest": "1Gi"},
            "resources": {"requests": {"memory": "1Gi"}},
        },
        "terminationGracePeriodSeconds": 30,
        "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": f"{name}-root"}}],
    }
    if profile.eviction:
        spec["evictionStrategy"] = profile.eviction
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runStrategy": profile.run_strategy,
            "template": {"metadata": {"labels": {"kubevirt.io/vm": name}}, "spec": spec},
        },
    }


def vmi_for(vm: Obj, now: str) -> Obj:
    """The VirtualMachineInstance the VM controller creates for `vm`: same name, owned by the
    VM, its template's spec; Pending."""
    meta, template = vm["metadata"], (vm.get("spec") or {}).get("template") or {}
    owner = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": dict(template.get("spec") or {}),
        "status": {
            "phase": "Pending",
            "phaseTransitionTimestamps": [{"phase": "Pending", "phaseTransitionTimestamp": now}],
        },
    }


def disk_claims(vmi: Obj) -> list[str]:
    """The PersistentVolumeClaims of an instance's volumes."""
    out = []
    for volume in (vmi.get("spec") or {}).get("volumes") or []:
        claim = (volume or {}).get("persistentVolumeClaim") or {}
        if claim.get("claimName"):
            out.append(str(claim["claimName"]))
    return out


def not_shared(store: ObjectStore, vmi: Obj) -> str:
    """virt-handler's reason why the instance cannot live-migrate ("" when it can): a claim
    that is not ReadWriteMany."""
    namespace = vmi["metadata"]["namespace"]
    for claim in disk_claims(vmi):
        try:
            pvc = store.get("persistentvolumeclaims", claim, namespace)
        except NotFound:
            continue
        modes = (pvc.get("spec") or {}).get("accessModes") or []
        if not modes or any(m in SINGLE_NODE_MODES for m in modes):
            return NOT_SHARED.format(claim)
    return ""


def launcher_pod(vmi: Obj, node: str, target_of: Obj | None = None) -> Obj:
    """The virt-launcher pod of `vmi` on `node` (None: not bound yet), controlled by it; with
    `target_of` (a migration) the migration's target pod."""
    meta = vmi["metadata"]
    labels = dict(meta.get("labels") or {})
    labels.update(
        {
            APP_LABEL: "virt-launcher",
            CREATED_BY_LABEL: meta.get("uid", ""),
            VM_NAME_LABEL: meta["name"],
        }
    )
    annotations = {DOMAIN_ANNOTATION: meta["name"]}
    if target_of is not None:
        labels[MIGRATION_JOB_LABEL] = target_of["metadata"]["uid"]
        annotations["kubevirt.io/migrationJobName"] = target_of["metadata"]["name"]
    spec: Obj = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "containers": [{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:hwsim"}],
        "volumes": [
            {"name": claim, "persistentVolumeClaim": {"claimName": claim}}
            for claim in disk_claims(vmi)
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"virt-launcher-{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "VirtualMachineInstance",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def mark_pod_running(store: ObjectStore, namespace: str, pod: str, ip: str, now: str) -> None:
    """The pod runs: a Running, Ready status."""
    status = {
        "phase": "Running",
        "podIP": ip,
        "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }
    store.patch("pods", pod, {"status": status}, namespace, subresource="status")


def vm_ip(index: int) -> str:
    """The `index`-th address of 10.67.0.0/16 (KubeVirt VMs; Deckhouse's use 10.66)."""
    n = index + 10
    return f"10.67.{(n // 254) % 256}.{n % 254 + 1}"


def place_vms(
    store: ObjectStore,
    controller: RunningRegistry | None,
    count: int,
    nodes: Sequence[str],
    profiles: Iterable[VmProfile] = DEFAULT_PROFILES,
    *,
    namespace: str = "default",
    prefix: str = "kv-",
    now: str = "",
) -> list[Obj]:
    """Create `count` VirtualMachines over `nodes` round-robin, cycling `profiles`; every one
    but a Halted one Running there (its instance, its Ready launcher pod mounting its disk,
    registered with `controller`). Returns the VirtualMachines as stored."""
    from nodefence.hwsim.kubevirt.status import running_vmi_status, vm_status

    if not nodes:
        raise ValueError("place_vms needs at least one node")
    try:
        store.get("namespaces", namespace)
    except NotFound:
        store.create("namespaces", {"metadata": {"name": namespace}})
    now = now or timestamp(store.clock())
    taken = {v["metadata"]["name"] for v in store.list(VM, namespace)["items"]}
    names = (f"{prefix}{i}" for i in itertools.count(1) if f"{prefix}{i}" not in taken)
    placed = []
    for i, profile in zip(range(count), itertools.cycle(list(profiles)), strict=False):
        name, node = next(names), nodes[i % len(nodes)]
        mode = "ReadWriteMany" if profile.shared else "ReadWriteOnce"
        create_disk(store, f"{name}-root", namespace, mode)
        vm = store.create(VM, make_vm(name, namespace, profile), namespace)
        vmi = None
        if profile.run_strategy != "Halted":
            vmi = store.create(VMI, vmi_for(vm, now), namespace)
            pod = store.create("pods", launcher_pod(vmi, node))["metadata"]["name"]
            ip = vm_ip(i)
            mark_pod_running(store, namespace, pod, ip, now)
            reason = not_shared(store, vmi)
            vmi["status"] = running_vmi_status(
                vmi, node, pod, pod_uid(store, namespace, pod), ip, reason, now
            )
            vmi = store.update(VMI, vmi, namespace)
            if controller is not None:
                controller.mark_running(namespace, name, node)
        status = vm_status(vm, vmi, now)
        placed.append(store.patch(VM, name, {"status": status}, namespace, subresource="status"))
    return placed


def pod_uid(store: ObjectStore, namespace: str, name: str) -> str:
    """The uid of a pod ("" when it is gone)."""
    try:
        return str(store.get("pods", name, namespace)["metadata"]["uid"])
    except NotFound:
        return ""
