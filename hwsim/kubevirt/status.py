"""KubeVirt's statuses as its controllers write them (pure): an instance Running on a node, a
VirtualMachine's `printableStatus`/`ready`/`runStrategy` from its instance, phase transitions.

Used by `nodefence.hwsim.kubevirt.controller` and, to place VMs already running,
`nodefence.hwsim.kubevirt.objects`.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kubevirt.objects import FINAL, condition
from nodefence.hwsim.virtualization.coldstandby_nodes import mapping_of

Obj = dict[str, Any]


def run_strategy(vm: Obj) -> str:
    """`spec.runStrategy`, else Always/Halted from the deprecated `spec.running`."""
    spec = mapping_of(vm.get("spec"))
    if spec.get("runStrategy"):
        return str(spec["runStrategy"])
    return "Always" if spec.get("running") is True else "Halted"


def vmi_conditions(obj: Obj) -> list[Obj]:
    """The well-formed entries of the object's `status.conditions`."""
    found = mapping_of(obj.get("status")).get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def with_phase(status: Obj, phase: str, now: str) -> Obj:
    """`status` moved to `phase`, its transition stamped."""
    stamps = [s for s in status.get("phaseTransitionTimestamps") or [] if isinstance(s, dict)]
    stamps.append({"phase": phase, "phaseTransitionTimestamp": now})
    return {**status, "phase": phase, "phaseTransitionTimestamps": stamps[-8:]}


def running_vmi_status(
    vmi: Obj, node: str, pod: str, pod_uid: str, ip: str, not_migratable: str, now: str
) -> Obj:
    """The status of an instance Running on `node` in launcher pod `pod`."""
    migratable = (
        condition("LiveMigratable", False, "DisksNotLiveMigratable", not_migratable, now)
        if not_migratable
        else condition("LiveMigratable", True, "", "", now)
    )
    status = with_phase(mapping_of(vmi.get("status")), "Running", now)
    status.update(
        {
            "nodeName": node,
            "activePods": {pod_uid: node} if pod_uid else {},
            "interfaces": [{"name": "default", "ipAddress": ip}],
            "conditions": [condition("Ready", True, "", "", now), migratable],
        }
    )
    return status


def vm_status(vm: Obj, vmi: Obj | None, now: str) -> Obj:
    """A VirtualMachine's status as the VM controller writes it from its instance."""
    strategy = run_strategy(vm)
    if vmi is None:
        return {
            "printableStatus": "Stopped",
            "ready": False,
            "created": False,
            "runStrategy": strategy,
            "conditions": [condition("Ready", False, "VMINotExists", "VMI does not exist", now)],
        }
    status = mapping_of(vmi.get("status"))
    phase = status.get("phase")
    ready = phase == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in vmi_conditions(vmi)
    )
    state = mapping_of(status.get("migrationState"))
    unschedulable = any(
        c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
        for c in vmi_conditions(vmi)
    )
    if mapping_of(vmi.get("metadata")).get("deletionTimestamp"):
        printable = "Stopping"
    elif phase in FINAL:
        printable = "Stopped"
    elif phase == "Running":
        moving = state.get("targetNode") and not (state.get("completed") or state.get("failed"))
        printable = "Migrating" if moving else "Running"
    elif unschedulable:
        printable = "ErrorUnschedulable"
    else:
        printable = "Starting"
    reason = "" if ready else str(phase or "Pending")
    return {
        "printableStatus": printable,
        "ready": ready,
        "created": True,
        "runStrategy": strategy,
        "conditions": [condition("Ready", ready, reason, "", now)],
    }
