"""VirtualMachines and their launcher Pods as Deckhouse Virtualization writes them.

Builders for `virtualization.deckhouse.io/v1alpha2` VirtualMachine objects, their status in each
phase and the `virt-launcher` Pod that carries a running VM, plus `place_vms`, which puts a set
of running VMs on nodes for tests and benchmarks. A VM's disk (`blockDeviceRefs` VirtualDisk
`<vm>-root`) is a ReadWriteOnce PersistentVolumeClaim of that name, which its launcher pod
mounts: it can be attached to one node at a time. Pure dict builders, except `place_vms`, which
writes them to a store. The emulator drops `status` on create for resources with a status
subresource, so statuses are written through the status subresource, as a controller does.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.volumes import create_disk

Obj = dict[str, Any]

VIRT_API_VERSION = "virtualization.deckhouse.io/v1alpha2"
VM_LABEL = "vm.kubevirt.internal.virtualization.deckhouse.io/name"
LAUNCHER_LABEL = "kubevirt.internal.virtualization.deckhouse.io"
RUN_POLICIES = ("AlwaysOn", "AlwaysOnUnlessStoppedManually", "Manual", "AlwaysOff")
DEFAULT_RUN_POLICY = "AlwaysOnUnlessStoppedManually"  # the CRD's default
RESTARTED_POLICIES = frozenset({"AlwaysOn", "AlwaysOnUnlessStoppedManually"})


class VmPhase(StrEnum):
    """`status.phase` of a VirtualMachine."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    MIGRATING = "Migrating"
    PAUSE = "Pause"
    DEGRADED = "Degraded"
    TERMINATING = "Terminating"


class RunningRegistry(Protocol):
    """Whoever tracks where VMs really run (the ColdStandby controller's `actual`)."""

    def mark_running(self, namespace: str, name: str, node: str) -> None:
        """Record that the VM's processes run on `node` now."""


def condition(type_: str, status: bool, reason: str, message: str, now: str) -> Obj:
    """A `metav1.Condition`."""
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


def running_conditions(now: str) -> list[Obj]:
    """The conditions of a VM running normally (agent up, migratable)."""
    return [
        condition("Running", True, "VirtualMachineRunning", "", now),
        condition("AgentReady", True, "AgentReady", "", now),
        condition("Migratable", True, "VirtualMachineMigratable", "", now),
    ]


def make_vm(
    name: str,
    namespace: str = "default",
    run_policy: str = DEFAULT_RUN_POLICY,
    node: str | None = None,
    *,
    ip_address: str = "",
    pod_name: str = "",
    now: str = "",
) -> Obj:
    """A VirtualMachine with every required spec field; `status` Running on `node` if given.

    The status is for a later status write (a create drops it); without `node` it is Stopped.
    """
    vm: Obj = {
        "apiVersion": VIRT_API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "virtualMachineClassName": "generic",
            "runPolicy": run_policy,
            "cpu": {"cores": 1},
            "memory": {"size": "1Gi"},
            "blockDeviceRefs": [{"kind": "VirtualDisk", "name": f"{name}-root"}],
        },
    }
    if node:
        vm["status"] = running_status(node, ip_address, pod_name or f"virt-launcher-{name}", now)
    else:
        vm["status"] = stopped_status(ip_address, now)
    return vm


def running_status(node: str, ip_address: str, pod_name: str, now: str) -> Obj:
    """The status of a VM Running on `node` in launcher pod `pod_name`, started at `now`."""
    return {
        "phase": VmPhase.RUNNING.value,
        "nodeName": node,
        "ipAddress": ip_address,
        "virtualMachinePods": [{"name": pod_name, "active": True}],
        "stats": {"lastStartTime": now},
        "conditions": running_conditions(now),
    }


def stopped_status(ip_address: str, now: str) -> Obj:
    """The status of a stopped VM: no node, no pod."""
    return {
        "phase": VmPhase.STOPPED.value,
        "ipAddress": ip_address,
        "virtualMachinePods": [],
        "conditions": [condition("Running", False, "VirtualMachineNotRunning", "", now)],
    }


def launcher_pod_name(vm_name: str) -> str:
    """`virt-launcher-<vm>-<5 random characters>`, as KubeVirt names them."""
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"virt-launcher-{vm_name}-{suffix}"


def disk_claims(vm: Obj) -> list[str]:
    """The PersistentVolumeClaims of the VM's disks: one per VirtualDisk in blockDeviceRefs."""
    refs = (vm.get("spec") or {}).get("blockDeviceRefs") or []
    return [
        str(r["name"])
        for r in refs
        if isinstance(r, dict) and r.get("kind") == "VirtualDisk" and r.get("name")
    ]


def launcher_pod(vm: Obj, node: str, name: str = "") -> Obj:
    """The `virt-launcher` Pod of `vm` bound to `node` (owned by the VM, so it goes with it),
    mounting the claims of its disks."""
    meta = vm["metadata"]
    pod_meta: Obj = {
        "name": name or launcher_pod_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": {VM_LABEL: meta["name"], LAUNCHER_LABEL: "virt-launcher"},
    }
    if meta.get("uid"):
        pod_meta["ownerReferences"] = [
            {
                "apiVersion": VIRT_API_VERSION,
                "kind": "VirtualMachine",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_meta,
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{"name": "compute", "image": "hwsim/virt-launcher:latest"}],
            "volumes": [
                {"name": f"vd-{claim}", "persistentVolumeClaim": {"claimName": claim}}
                for claim in disk_claims(vm)
            ],
        },
    }


def launcher_pod_status(ip_address: str, now: str) -> Obj:
    """A Running, Ready pod status."""
    return {
        "phase": "Running",
        "podIP": ip_address,
        "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }


def create_launcher_pod(
    store: ObjectStore, vm: Obj, node: str, now: str, *, running: bool = True
) -> str:
    """Create `vm`'s launcher pod on `node`, Running (or Pending: `running=False`, to be marked
    Running with `mark_pod_running` once it started); returns its name."""
    pod = store.create("pods", launcher_pod(vm, node))
    if running:
        mark_pod_running(store, vm, str(pod["metadata"]["name"]), now)
    return str(pod["metadata"]["name"])


def mark_pod_running(store: ObjectStore, vm: Obj, pod: str, now: str) -> None:
    """The launcher pod `pod` of `vm` runs: a Running, Ready status."""
    ip = str((vm.get("status") or {}).get("ipAddress") or "")
    status = launcher_pod_status(ip, now)
    store.patch("pods", pod, {"status": status}, vm["metadata"]["namespace"], subresource="status")


def vm_ip(index: int) -> str:
    """The `index`-th address of 10.66.0.0/16 (from 10.66.0.10), the seed's VM network."""
    n = index + 10
    return f"10.66.{(n // 254) % 256}.{n % 254 + 1}"


def _taken(store: ObjectStore, namespace: str) -> tuple[set[str], set[str]]:
    vms = store.list("virtualmachines")["items"]
    names = {v["metadata"]["name"] for v in vms if v["metadata"].get("namespace") == namespace}
    ips = {str((v.get("status") or {}).get("ipAddress") or "") for v in vms}
    return names, ips


def place_vms(
    store: ObjectStore,
    controller: RunningRegistry | None,
    count: int,
    nodes: Sequence[str],
    policies: Iterable[str] = RUN_POLICIES,
    *,
    namespace: str = "default",
    prefix: str = "vm-",
    now: str = "",
) -> list[Obj]:
    """Create `count` VMs over `nodes` round-robin, cycling `policies`; returns them as stored.

    Every VM gets its disk (a bound RWO claim `<name>-root`). Every VM but an `AlwaysOff` one
    is Running (status, Ready launcher pod mounting the disk, registered with `controller` as
    really running there); `AlwaysOff` ones are Stopped with no pod. Names (`<prefix>1`, ...)
    and IP addresses skip those already taken.
    """
    if not nodes:
        raise ValueError("place_vms needs at least one node")
    try:
        store.get("namespaces", namespace)
    except NotFound:
        store.create("namespaces", {"metadata": {"name": namespace}})
    now = now or timestamp(store.clock())
    names, ips = _taken(store, namespace)
    free_names = (f"{prefix}{i}" for i in itertools.count(1) if f"{prefix}{i}" not in names)
    free_ips = (ip for ip in map(vm_ip, itertools.count()) if ip not in ips)
    placed: list[Obj] = []
    for i, policy in zip(range(count), itertools.cycle(list(policies)), strict=False):
        name, ip, node = next(free_names), next(free_ips), nodes[i % len(nodes)]
        vm = store.create("virtualmachines", make_vm(name, namespace, policy), namespace)
        for claim in disk_claims(vm):
            create_disk(store, claim, namespace)
        vm["status"] = {"ipAddress": ip}
        if policy == "AlwaysOff":
            status = stopped_status(ip, now)
        else:
            pod = create_launcher_pod(store, vm, node, now)
            status = running_status(node, ip, pod, now)
        stored = store.patch(
            "virtualmachines", name, {"status": status}, namespace, subresource="status"
        )
        if policy != "AlwaysOff" and controller is not None:
            controller.mark_running(namespace, name, node)
        placed.append(stored)
    return placed
