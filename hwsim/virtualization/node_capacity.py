"""Node CPU and memory as the scheduler counts them, for the emulated virtualization controller.

A VM's launcher pod requests `spec.cpu.cores` x `spec.cpu.coreFraction` CPUs and
`spec.memory.size` bytes; a node offers `status.allocatable`. A node is full when the VMs it
runs or receives leave too little for one more: the scheduler then says `Insufficient cpu` or
`Insufficient memory` for it. Other pods are not counted (the emulated cluster runs only VMs
and small test pods). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from nodefence.agent.maintenance.vm_capacity import quantity


@dataclass(frozen=True)
class Request:
    """CPU (millicores) and memory (bytes)."""

    cpu: int = 0
    memory: int = 0

    def __add__(self, other: Request) -> Request:
        return Request(self.cpu + other.cpu, self.memory + other.memory)


def vm_request(vm: Mapping[str, Any]) -> Request:
    """What a VirtualMachine's launcher pod requests (zero for what its spec does not say)."""
    spec = vm.get("spec") or {}
    cpu, memory = spec.get("cpu") or {}, spec.get("memory") or {}
    cores = quantity(cpu.get("cores")) or Decimal(0)
    fraction = quantity(str(cpu.get("coreFraction") or "100%").rstrip("%")) or Decimal(100)
    size = quantity(memory.get("size")) or Decimal(0)
    return Request(int(cores * fraction * 10), int(size))


def allocatable(node: Mapping[str, Any]) -> Request | None:
    """A Node's allocatable CPU and memory (None when it reports none: no limit)."""
    found = (node.get("status") or {}).get("allocatable") or {}
    cpu, memory = quantity(found.get("cpu")), quantity(found.get("memory"))
    if cpu is None or memory is None:
        return None
    return Request(int(cpu * 1000), int(memory))


def used(
    vms: Iterable[Mapping[str, Any]], extra: Iterable[tuple[str, Request]] = ()
) -> dict[str, Request]:
    """What the VMs running (or arriving) on each node request; `extra` adds (node, request)."""
    total: dict[str, Request] = {}
    for vm in vms:
        status = vm.get("status") or {}
        if status.get("phase") in ("Running", "Migrating", "Starting") and status.get("nodeName"):
            node = str(status["nodeName"])
            total[node] = total.get(node, Request()) + vm_request(vm)
    for node, request in extra:
        total[node] = total.get(node, Request()) + request
    return total


def insufficient(node: Mapping[str, Any], request: Request, in_use: Request) -> str:
    """The scheduler's reason `node` cannot take `request` (`Insufficient memory`), or ""."""
    room = allocatable(node)
    if room is None:
        return ""
    if in_use.memory + request.memory > room.memory:
        return "Insufficient memory"
    if in_use.cpu + request.cpu > room.cpu:
        return "Insufficient cpu"
    return ""


def no_room(
    nodes: Mapping[str, dict[str, Any]],
    source: str,
    request: Request,
    in_use: Mapping[str, Request],
    unschedulable: Callable[[dict[str, Any]], str],
) -> str:
    """`0/5 nodes are available: 2 Insufficient memory, 1 node(s) already run the VM, ...`: the
    scheduler's words for why no node takes a VM now on `source`."""
    counts: dict[str, int] = {}
    for name, node in nodes.items():
        why = unschedulable(node) or (
            "node(s) already run the VM"
            if name == source
            else insufficient(node, request, in_use.get(name, Request()))
        )
        if why:
            counts[why] = counts.get(why, 0) + 1
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    return f"0/{len(nodes)} nodes are available" + (f": {reasons}." if reasons else ".")
