"""Is there room elsewhere for a node's VMs? (pure; for `maintenance enter`, before it changes
anything).

A VM needs `spec.cpu.cores` x `spec.cpu.coreFraction` CPUs and `spec.memory.size` of memory on
its target, as its launcher pod requests them; a node offers its `status.allocatable` less what
the VMs it runs (or receives) need. The VMs to move are placed largest first, each on the node
with the most free memory where it fits, as a least-allocated scheduler would; those that fit
nowhere are the shortfall. Other pods' requests are not counted: the check can only be
optimistic, never refuse a drain the scheduler would allow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity (`500m`, `4`, `16Gi`, `1e9`) as a number; None if it is not one."""
    match = _QUANTITY.match(str(value).strip()) if value not in (None, "") else None
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class Need:
    """What one VM needs on its target: millicores and bytes."""

    vm: str
    cpu: int
    memory: int

    def describe(self) -> str:
        """`2 CPU / 6 GiB`."""
        return f"{self.cpu / 1000:g} CPU / {self.memory / 2**30:.3g} GiB"


def vm_need(obj: Mapping[str, Any]) -> Need | None:
    """What a VirtualMachine object needs (None when its spec does not say)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    cpu, memory = spec.get("cpu") or {}, spec.get("memory") or {}
    cores = quantity(cpu.get("cores"))
    fraction = quantity(str(cpu.get("coreFraction") or "100%").rstrip("%"))
    size = quantity(memory.get("size"))
    if cores is None or size is None or fraction is None:
        return None
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    return Need(key, int(cores * fraction * 10), int(size))


@dataclass
class Room:
    """What a node has left: millicores and bytes."""

    node: str
    cpu: int
    memory: int

    def fits(self, need: Need) -> bool:
        """`need` fits in what is left."""
        return need.cpu <= self.cpu and need.memory <= self.memory

    def describe(self) -> str:
        """`node-2: 1.5 CPU / 3 GiB free`."""
        return f"{self.node}: {self.cpu / 1000:g} CPU / {self.memory / 2**30:.3g} GiB free"


def free_rooms(
    allocatable: Mapping[str, tuple[str, str]], placed: Iterable[tuple[str, Need]]
) -> list[Room]:
    """Each target node's room: `allocatable` (node -> (cpu, memory) quantities) less the
    needs `placed` on it; nodes whose allocatable is unknown are left out."""
    rooms: dict[str, Room] = {}
    for node, (cpu, memory) in sorted(allocatable.items()):
        c, m = quantity(cpu), quantity(memory)
        if c is not None and m is not None:
            rooms[node] = Room(node, int(c * 1000), int(m))
    for node, need in placed:
        if node in rooms:
            rooms[node].cpu -= need.cpu
            rooms[node].memory -= need.memory
    return list(rooms.values())


def unplaceable(needs: Iterable[Need], rooms: Iterable[Room]) -> list[Need]:
    """The needs that fit on no room when placed largest first, each on the room with the most
    free memory that takes it (`rooms` are copied, not changed)."""
    left = [Room(r.node, r.cpu, r.memory) for r in rooms]
    out: list[Need] = []
    for need in sorted(needs, key=lambda n: (-n.memory, -n.cpu, n.vm)):
        fitting = [r for r in left if r.fits(need)]
        if not fitting:
            out.append(need)
            continue
        best = max(fitting, key=lambda r: (r.memory, r.cpu, r.node))
        best.cpu -= need.cpu
        best.memory -= need.memory
    return sorted(out, key=lambda n: n.vm)
