"""Upstream KubeVirt's objects (`kubevirt.io/v1`) as nodefence reads them (pure).

- Which VMs come back after their node is lost is decided by the VirtualMachine's
  `spec.runStrategy` (`Always`, and `RerunOnFailure` unless its instance Succeeded, restart;
  `Manual`, `Halted`, `Once` do not), or the deprecated `spec.running` (true: Always, false:
  Halted), as `VirtualMachine.RunStrategy()` reads them. A VirtualMachineInstance without a
  VirtualMachine never comes back.
- Where a VM runs is its VirtualMachineInstance's `status.nodeName` and `status.phase`;
  `vm_ref` turns them into a `nodefence.agent.maintenance.vm_migration.VmRef` in the words of
  KubeVirt's printable status (Running, Migrating, Starting, Pending, Stopping, Stopped, Unknown),
  so the drain and the fencing judge KubeVirt VMs as they judge Deckhouse's. A finished instance
  (Succeeded, Failed) runs nowhere, though its status still names the node (`VmRef.last_node`).
- The launcher pod (`kubevirt.io=virt-launcher`) is controlled by its instance; its labels
  `kubevirt.io/created-by` (the instance's uid) and `vm.kubevirt.io/name` (the instance's
  hostname) name it too.
- Migrations are VirtualMachineInstanceMigrations (`spec.vmiName`): `migration_ref` reads one
  into an `OpRef` with KubeVirt's phases and its reasons (`status.migrationState.failureReason`,
  the conditions, the scheduler's words for a target pod that cannot be placed).
- `drain_way`: how `maintenance enter` moves a VM, as its `evictionStrategy` says.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from nodefence.agent.kube.node_label import node_label_value
from nodefence.agent.maintenance.vm_capacity import Need, quantity
from nodefence.agent.maintenance.vm_migration import VMOP_NODE_LABEL, OpRef, VmRef
from nodefence.agent.virt.names import Virt, vm_key

GROUP, VERSION = "kubevirt.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
VM_PLURAL = "virtualmachines"
VMI_PLURAL = "virtualmachineinstances"
VMIM_PLURAL = "virtualmachineinstancemigrations"
KUBEVIRT_PLURAL = "kubevirts"
LAUNCHER_SELECTOR = "kubevirt.io=virt-launcher"
CREATED_BY_LABEL = "kubevirt.io/created-by"
VM_NAME_LABEL = "vm.kubevirt.io/name"
DOMAIN_ANNOTATION = "kubevirt.io/domain"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"  # on a migration's target pod

RESTART_STRATEGIES = frozenset({"Always", "RerunOnFailure"})
FINAL_PHASES = frozenset({"Succeeded", "Failed"})
EVICTION_STRATEGIES = ("None", "LiveMigrate", "LiveMigrateIfPossible", "External")
# KubeVirt lets a VM take a tenth of a CPU per vCPU unless it asks (cpuAllocationRatio 10).
MILLICORES_PER_VCPU = 100


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _meta(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    return _dict((obj or {}).get("metadata"))


def _conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = _dict(obj.get("status")).get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


# ---- what must come back -----------------------------------------------------------------


def run_strategy(vm: Mapping[str, Any]) -> str:
    """The VirtualMachine's run strategy: `spec.runStrategy`, else from `spec.running`, else
    Halted (KubeVirt's default)."""
    spec = _dict(vm.get("spec"))
    if spec.get("runStrategy"):
        return str(spec["runStrategy"])
    if spec.get("running") is True:
        return "Always"
    return "Halted"


def restarts(strategy: str, instance_phase: str) -> bool:
    """Whether KubeVirt starts the VM again once its instance is gone with its node: Always
    does; RerunOnFailure unless the instance Succeeded (shut down from inside)."""
    if strategy == "Always":
        return True
    return strategy == "RerunOnFailure" and instance_phase != "Succeeded"


# ---- where it runs -----------------------------------------------------------------------


def _printable(vmi: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(phase, node, migration target) of a VM whose instance is `vmi` (None: none)."""
    if vmi is None:
        return "Stopped", "", ""
    status = _dict(vmi.get("status"))
    phase, node = str(status.get("phase") or ""), str(status.get("nodeName") or "")
    if phase in FINAL_PHASES:
        return "Stopped", "", ""
    if _meta(vmi).get("deletionTimestamp"):
        return "Stopping", node, ""
    if phase == "Running":
        state = _dict(status.get("migrationState"))
        moving = bool(state.get("targetNode")) and not (
            state.get("completed") or state.get("failed")
        )
        if moving:
            return "Migrating", node, str(state["targetNode"])
        return "Running", node, ""
    if phase in ("Scheduling", "Scheduled"):
        return "Starting", node, ""
    if phase == "Unknown":
        return "Unknown", node, ""
    return "Pending", node, ""


def not_migratable(vmi: Mapping[str, Any] | None) -> str:
    """KubeVirt's reason when the instance's LiveMigratable condition is False ("" when it may
    migrate, or does not say)."""
    for cond in _conditions(vmi or {}):
        if cond.get("type") == "LiveMigratable" and cond.get("status") == "False":
            reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
            return f"{reason}: {message}" if reason and message else reason or message or "no"
    return ""


def cluster_eviction(kubevirts: Iterable[Mapping[str, Any]]) -> str:
    """The cluster-wide evictionStrategy of the KubeVirt resource: its
    `spec.configuration.evictionStrategy`, None when it sets none (KubeVirt's default), ""
    when there is no KubeVirt resource to read."""
    for kv in kubevirts:
        config = _dict(_dict(kv.get("spec")).get("configuration"))
        return str(config.get("evictionStrategy") or "None")
    return ""


def vm_need(key: str, vm: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None) -> Need | None:
    """What the VM takes on a target node, as its launcher pod requests it (None when its spec
    does not say): `domain.resources.requests`, else a tenth of a CPU per vCPU and the guest
    memory."""
    if vmi is not None:
        spec = _dict(vmi.get("spec"))
    else:
        spec = _dict(_dict(_dict((vm or {}).get("spec")).get("template")).get("spec"))
    domain = _dict(spec.get("domain"))
    requests = _dict(_dict(domain.get("resources")).get("requests"))
    cpu = quantity(requests.get("cpu"))
    if cpu is None:
        topology = _dict(domain.get("cpu"))
        vcpus = 1
        for part in ("cores", "sockets", "threads"):
            count = quantity(topology.get(part) or 1)
            vcpus *= int(count) if count is not None else 1
        cpu_millis = vcpus * MILLICORES_PER_VCPU
    else:
        cpu_millis = int(cpu * 1000)
    memory = quantity(requests.get("memory") or _dict(domain.get("memory")).get("guest"))
    if memory is None:
        return None
    return Need(key, cpu_millis, int(memory))


def vm_ref(
    vm: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None, cluster_strategy: str = ""
) -> VmRef:
    """The `VmRef` of a VirtualMachine (None: an instance without one) and its instance (None:
    not running); `cluster_strategy` is `cluster_eviction`'s answer."""
    meta = _meta(vm) or _meta(vmi)
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    phase, node, target = _printable(vmi)
    vmi_status = _dict((vmi or {}).get("status"))
    strategy = run_strategy(vm) if vm is not None else ""
    own = str(_dict((vmi or {}).get("spec")).get("evictionStrategy") or "")
    return VmRef(
        namespace=namespace,
        name=name,
        phase=phase,
        node=node,
        target=target,
        virt=Virt.KUBEVIRT,
        policy=strategy,
        restart=restarts(strategy, str(vmi_status.get("phase") or "")),
        last_node=str(vmi_status.get("nodeName") or ""),
        eviction=own or cluster_strategy,
        not_migratable=not_migratable(vmi),
        need=vm_need(vm_key(Virt.KUBEVIRT, namespace, name), vm, vmi),
    )


def vm_refs(
    vms: Iterable[Mapping[str, Any]],
    vmis: Iterable[Mapping[str, Any]],
    cluster_strategy: str = "",
) -> list[VmRef]:
    """Every VM of the cluster: each VirtualMachine with its instance (same namespace and
    name), and each instance that has no VirtualMachine."""
    instances = {(_meta(i).get("namespace"), _meta(i).get("name")): i for i in vmis}
    refs = []
    for vm in vms:
        key = (_meta(vm).get("namespace"), _meta(vm).get("name"))
        refs.append(vm_ref(vm, instances.pop(key, None), cluster_strategy))
    refs += [vm_ref(None, vmi, cluster_strategy) for vmi in instances.values()]
    return sorted(refs, key=lambda r: r.key)


def launcher_vmi(pod: Mapping[str, Any]) -> str:
    """The name of the VirtualMachineInstance a launcher pod carries ("" when it is none):
    its controlling owner, else its `kubevirt.io/domain` annotation."""
    meta = _meta(pod)
    if (_dict(meta.get("labels"))).get("kubevirt.io") != "virt-launcher":
        return ""
    for ref in meta.get("ownerReferences") or []:
        ok = isinstance(ref, dict) and ref.get("controller") and ref.get("name")
        if ok and ref.get("kind") == "VirtualMachineInstance":
            return str(ref["name"])
    return str(_dict(meta.get("annotations")).get(DOMAIN_ANNOTATION) or "")


# ---- migrations --------------------------------------------------------------------------


def _failure(vmim: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> tuple[str, str]:
    """(reason, message) of a failed migration, in KubeVirt's words."""
    state = _dict(_dict(vmim.get("status")).get("migrationState"))
    vmi_state = _dict(_dict((vmi or {}).get("status")).get("migrationState"))
    if not state and vmi_state.get("migrationUid") == _meta(vmim).get("uid"):
        state = vmi_state
    if state.get("failureReason"):
        return "MigrationFailed", str(state["failureReason"])
    if state.get("abortStatus") == "Succeeded":
        return "Aborted", "the migration was aborted"
    for cond in _conditions(vmim):
        if cond.get("type") == "migrationAbortRequested":
            return "Aborted", "the migration was cancelled (the object was deleted)"
    return "MigrationFailed", ""


def _pod_unschedulable(pod: Mapping[str, Any] | None) -> str:
    """The scheduler's words when `pod` is Pending and cannot be placed ("" otherwise)."""
    status = _dict((pod or {}).get("status"))
    if status.get("phase") != "Pending":
        return ""
    for cond in status.get("conditions") or []:
        if not isinstance(cond, dict) or cond.get("type") != "PodScheduled":
            continue
        if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message") or "Unschedulable")
    return ""


def migration_ref(
    vmim: Mapping[str, Any],
    vmi: Mapping[str, Any] | None = None,
    target_pod: Mapping[str, Any] | None = None,
) -> OpRef:
    """The `OpRef` of a VirtualMachineInstanceMigration; `vmi` (its instance) and
    `target_pod` (its target launcher pod) add KubeVirt's reasons: why it failed, or why the
    target cannot be placed."""
    meta, spec, status = _meta(vmim), _dict(vmim.get("spec")), _dict(vmim.get("status"))
    phase = str(status.get("phase") or "")
    reason = message = ""
    if phase == "Failed":
        reason, message = _failure(vmim, vmi)
    else:
        blocked = [
            c
            for c in _conditions(vmim)
            if c.get("status") == "True" and c.get("type") != "migrationAbortRequested"
        ]
        if blocked:
            reason = str(blocked[0].get("reason") or blocked[0].get("type") or "")
            message = str(blocked[0].get("message") or "")
        elif unschedulable := _pod_unschedulable(target_pod):
            reason, message = "TargetPodUnschedulable", unschedulable
    return OpRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        vm=str(spec.get("vmiName") or ""),
        phase=phase,
        reason=reason,
        message=message,
        type="Migration",
        created=str(meta.get("creationTimestamp") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        kind="vmim",
    )


def migration_body(namespace: str, vmi: str, name: str, node: str = "") -> dict[str, Any]:
    """A VirtualMachineInstanceMigration of `vmi`; `node` labels a maintenance run's (as
    `nodefence.agent.maintenance.vm_migration.vmop_body` does)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if node:
        meta["labels"] = {VMOP_NODE_LABEL: node_label_value(node)}
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachineInstanceMigration",
        "metadata": meta,
        "spec": {"vmiName": vmi},
    }


class DrainWay(enum.StrEnum):
    """How `maintenance enter` moves a KubeVirt VM off its node."""

    MIGRATE = "migrate"  # a VirtualMachineInstanceMigration
    EVICT = "evict"  # its launcher pod evicted: KubeVirt does what evictionStrategy says


def drain_way(vm: VmRef) -> DrainWay:
    """As the VM's evictionStrategy says: LiveMigrate migrates (KubeVirt refuses it, in its
    own words, for a VM that cannot); LiveMigrateIfPossible migrates when it can, else is
    treated as None; None evicts the launcher pod, which stops the VM (its runStrategy may
    start it elsewhere); External evicts it too, which hands the VM to its external
    controller. Unknown (the KubeVirt resource unreadable): as LiveMigrateIfPossible."""
    if vm.eviction in ("None", "External"):
        return DrainWay.EVICT
    if vm.eviction in ("LiveMigrateIfPossible", "") and vm.not_migratable:
        return DrainWay.EVICT
    return DrainWay.MIGRATE


def eviction_note(vm: VmRef, handed_over: bool) -> str:
    """What KubeVirt does once `vm`'s launcher pod was evicted (`handed_over`: KubeVirt kept
    the pod and took the VM over: External, or an evacuation)."""
    if handed_over:
        return (
            f"evictionStrategy {vm.eviction or 'unset'}: KubeVirt took it over "
            "(status.evacuationNodeName), waiting for it to leave"
        )
    strategy = vm.eviction or "unknown"
    if vm.eviction == "LiveMigrateIfPossible" or not vm.eviction:
        strategy += f", not migratable ({vm.not_migratable})"
    then = (
        f"runStrategy {vm.policy} starts it again elsewhere"
        if vm.policy == "Always"
        else f"runStrategy {vm.policy or '(no VirtualMachine)'} leaves it stopped"
    )
    return f"launcher pod evicted (evictionStrategy {strategy}): KubeVirt stops it; {then}"
