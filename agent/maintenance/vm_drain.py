"""Moving every VM off a node: one look at the cluster in, each VM's stage and what to start out
(pure; `nodefence.agent.maintenance.drain_executor` does the looking and the creating).

A VM belongs to the drain while it runs on the node, migrates onto it (its `migrationState`
names the node as target), has a launcher pod there, or was seen there earlier in the run. The
drain is done only when every one of them reached a final stage: moved, left by other means,
or failed; a VM still on the node or arriving at it never is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodefence.agent.maintenance.vm_migration import (
    MIGRATING,
    RUNNING,
    SETTLING_PHASES,
    SHUTDOWN,
    OpRef,
    VmRef,
)

# KubeVirt's parallelOutboundMigrationsPerNode defaults to 2: more at once only queue there.
DEFAULT_PARALLEL = 2


class VmStage(enum.StrEnum):
    """Where one VM of a node under maintenance is."""

    QUEUED = "queued"  # to evict, waiting for a free migration slot of ours
    SETTLING = "settling"  # changing by itself (starting, stopping, a pod still there)
    WAITING = "waiting"  # another operation of the VM must end first (Restart, Stop, ...)
    ARRIVING = "arriving"  # migrating onto the node: evicted once it lands, unless it fails
    REQUESTED = "requested"  # the Evict we follow exists, the migration has not begun
    MIGRATING = "migrating"
    STOPPING = "stopping"  # KubeVirt: its launcher pod evicted, as its evictionStrategy says
    MOVED = "moved"  # runs on another node: the operation we followed completed
    LEFT = "left"  # not on the node any more by other means (stopped, deleted, moved)
    FAILED = "failed"  # the operation we followed failed: the VM is still on the node


FINAL_STAGES = frozenset({VmStage.MOVED, VmStage.LEFT, VmStage.FAILED})
IN_FLIGHT = frozenset({VmStage.REQUESTED, VmStage.MIGRATING, VmStage.STOPPING})


@dataclass(frozen=True)
class VmProgress:
    """One VM's progress off the node."""

    vm: str  # namespace/name
    stage: VmStage
    node: str  # where it runs now ("" when nowhere)
    target: str = ""
    op: str = ""
    detail: str = ""
    op_kind: str = "vmop"  # vmop, vmim (a KubeVirt migration), pod (a launcher pod evicted)

    def describe(self, source: str) -> str:
        """A progress line: `vm default/vm-1: moved node-1 -> node-3`."""
        text = f"vm {self.vm}: {self.stage.value}"
        if self.stage in (VmStage.MIGRATING, VmStage.MOVED):
            text += f" {source} -> {self.target or self.node or '?'}"
        elif self.stage is VmStage.ARRIVING:
            text += f" from {self.node or '?'}"
        shown = (VmStage.REQUESTED, VmStage.MIGRATING, VmStage.ARRIVING, VmStage.STOPPING)
        if self.op and self.stage in shown:
            text += f" ({self.op_kind} {self.op})"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class DrainStep:
    """What one look at the cluster says: every VM's progress, and which to evict now."""

    progress: tuple[VmProgress, ...]
    start: tuple[VmRef, ...]

    @property
    def done(self) -> bool:
        """Nothing left to start or wait for."""
        return not self.start and all(p.stage in FINAL_STAGES for p in self.progress)

    @property
    def failed(self) -> tuple[VmProgress, ...]:
        """The VMs that cannot move (their operation failed)."""
        return tuple(p for p in self.progress if p.stage is VmStage.FAILED)

    @property
    def remaining(self) -> tuple[VmProgress, ...]:
        """The VMs still on the node or arriving at it."""
        return tuple(p for p in self.progress if p.stage not in (VmStage.MOVED, VmStage.LEFT))

    def count(self, *stages: VmStage) -> int:
        """How many VMs are in any of `stages`."""
        return sum(1 for p in self.progress if p.stage in stages)

    def summary(self) -> str:
        """`5 VMs: 3 moved, 2 migrating`."""
        parts = [f"{self.count(stage)} {stage.value}" for stage in VmStage if self.count(stage) > 0]
        return f"{len(self.progress)} VMs: " + (", ".join(parts) or "none")


def _waiting_for(ops: Iterable[OpRef]) -> str:
    said = [f"vmop {o.name} ({o.type}, {o.phase or 'Pending'})" for o in ops]
    return "waiting for " + ", ".join(said) + " to end (one operation at a time per VM)"


def plan_vm_drain(
    node: str,
    vms: Iterable[VmRef],
    ops: Mapping[str, OpRef],
    seen: Iterable[str],
    parallel: int = DEFAULT_PARALLEL,
    *,
    hosted: Iterable[str] = (),
    waiting: Mapping[str, tuple[OpRef, ...]] | None = None,
) -> DrainStep:
    """Every VM of the drain (see the module doc) and which to evict now.

    `ops`: the Evict operation followed for each VM (created by this run or adopted; an `OpRef`
    with an empty phase when it could not be read back); `seen`: VM keys found earlier in the
    run; `hosted`: VM keys with a launcher pod on the node; `waiting`: other unfinished
    operations per VM that must end before an Evict may be created. A VM on the node is evicted
    once, when fewer than `parallel` followed migrations are in flight; a failed operation is
    not retried (its VM is reported). A VM settling by itself, or waiting, is not evicted yet.
    """
    waiting = waiting or {}
    hosted = set(hosted)
    by_key = {vm.key: vm for vm in vms}
    here = {k for k, vm in by_key.items() if vm.node == node or vm.arriving_at(node)}
    progress: list[VmProgress] = []
    candidates: list[VmRef] = []
    for key in sorted(here | hosted | set(seen) | set(ops)):
        vm, op = by_key.get(key), ops.get(key)
        name, kind = (op.name, op.kind) if op else ("", "vmop")
        if vm is None:
            progress.append(VmProgress(key, VmStage.LEFT, "", detail="deleted"))
        elif vm.arriving_at(node):
            detail = op.state() if op else "migrating here"
            progress.append(VmProgress(key, VmStage.ARRIVING, vm.node, node, name, detail, kind))
        elif vm.node != node and key in hosted:
            detail = f"{vm.phase or 'no phase'}, its launcher pod still on {node}"
            progress.append(VmProgress(key, VmStage.SETTLING, vm.node, detail=detail))
        elif vm.node != node:
            moved = op is not None and vm.phase == RUNNING and bool(vm.node)
            stage = VmStage.MOVED if moved else VmStage.LEFT
            where = f" on {vm.node}" if vm.node else ""
            detail = "" if moved else (vm.phase or "no phase") + where
            if moved and op is not None and op.type == SHUTDOWN:
                detail = f"stopped and started again ({vm.policy})"
            progress.append(VmProgress(key, stage, vm.node, vm.node, name, detail, kind))
        elif op is not None:
            if op.failed:
                progress.append(VmProgress(key, VmStage.FAILED, node, op=name, detail=op.why))
            elif op.type == SHUTDOWN:
                progress.append(VmProgress(key, VmStage.STOPPING, node, "", name, op.why, kind))
            elif vm.phase == MIGRATING or op.under_way or op.completed:
                progress.append(
                    VmProgress(key, VmStage.MIGRATING, node, vm.target, name, op.state(), kind)
                )
            else:
                progress.append(
                    VmProgress(key, VmStage.REQUESTED, node, "", name, op.state(), kind)
                )
        elif waiting.get(key):
            detail = _waiting_for(waiting[key])
            progress.append(VmProgress(key, VmStage.WAITING, node, detail=detail))
        elif vm.phase in SETTLING_PHASES:
            progress.append(VmProgress(key, VmStage.SETTLING, node, vm.target, detail=vm.phase))
        else:
            candidates.append(vm)
    free = max(0, parallel - sum(1 for p in progress if p.stage in IN_FLIGHT))
    start = tuple(candidates[:free])
    for vm in candidates:
        stage = VmStage.REQUESTED if vm in start else VmStage.QUEUED
        progress.append(VmProgress(vm.key, stage, node))
    return DrainStep(tuple(sorted(progress, key=lambda p: p.vm)), start)
