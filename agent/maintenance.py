"""Maintenance mode and live migration: the decisions, free of I/O.

`agent.vmops` does the talking (label, cordon, create VirtualMachineOperations, evict pods);
everything it decides comes from here, as functions of API objects it has just read:
- which VMs on a node to evict now, with at most `parallel` migrations in flight, and how
  far each one got (`plan_vm_drain`);
- how a single migration is going (`follow_migration`);
- which remaining pods a drain evicts, skips or must refuse (`classify_pod`), and how long to
  wait after a PodDisruptionBudget said no (`eviction_retry_delay`);
- what state a node's maintenance is in (`node_state`) and the verdict of a run
  (`enter_verdict`).

Objects arrive as the plain dicts the API returns (VirtualMachine, VirtualMachineOperation,
Pod); nothing here imports a client or touches a socket.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.node_label import node_label_value

VIRT_API_VERSION = "virtualization.deckhouse.io/v1alpha2"
MAINTENANCE_VALUE = "true"  # the value of agent.cluster.MAINTENANCE_LABEL on a Node
VMOP_NODE_LABEL = "nodefence.io/maintenance-node"  # on the operations `maintenance` creates
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# KubeVirt's parallelOutboundMigrationsPerNode defaults to 2: more at once only queue there.
DEFAULT_PARALLEL = 2

RUNNING = "Running"
MIGRATING = "Migrating"
# A VM in one of these phases is changing by itself: wait for it to settle, do not evict.
SETTLING_PHASES = frozenset({MIGRATING, "Starting", "Stopping", "Terminating"})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- API objects, reduced to what the decisions need -------------------------------------


@dataclass(frozen=True)
class VmRef:
    """A VirtualMachine: where it runs and in which phase (`target` while migrating)."""

    namespace: str
    name: str
    phase: str
    node: str
    target: str = ""

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"


def vm_ref(obj: Mapping[str, Any]) -> VmRef:
    """The `VmRef` of a VirtualMachine object."""
    meta, status = _dict(obj.get("metadata")), _dict(obj.get("status"))
    target = _dict(_dict(status.get("migrationState")).get("target")).get("node")
    migrating = status.get("phase") == MIGRATING
    return VmRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        phase=str(status.get("phase") or ""),
        node=str(status.get("nodeName") or ""),
        target=str(target or "") if migrating else "",
    )


@dataclass(frozen=True)
class OpRef:
    """A VirtualMachineOperation: its phase and, once it failed, why (`Completed` condition)."""

    namespace: str
    name: str
    vm: str
    phase: str
    reason: str = ""
    message: str = ""

    @property
    def completed(self) -> bool:
        """The operation says it is done."""
        return self.phase == "Completed"

    @property
    def failed(self) -> bool:
        """The operation failed (or is being deleted: it will not finish)."""
        return self.phase in ("Failed", "Terminating")

    @property
    def why(self) -> str:
        """`Reason: message`, the way the controller explains a failure."""
        if self.reason and self.message:
            return f"{self.reason}: {self.message}"
        return self.reason or self.message or f"operation {self.phase}"


def op_ref(obj: Mapping[str, Any]) -> OpRef:
    """The `OpRef` of a VirtualMachineOperation object."""
    meta, spec, status = (_dict(obj.get(k)) for k in ("metadata", "spec", "status"))
    completed = [
        c
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("type") == "Completed"
    ]
    cond = completed[0] if completed else {}
    return OpRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        vm=str(spec.get("virtualMachineName") or ""),
        phase=str(status.get("phase") or ""),
        reason=str(cond.get("reason") or ""),
        message=str(cond.get("message") or ""),
    )


def vmop_name(vm: str, unix_time: float, attempt: int = 0) -> str:
    """`migrate-<vm>-<unix time>` as the seed names it; `-<attempt>` when that was taken."""
    base = f"migrate-{vm}-{int(unix_time)}"
    suffix = f"-{attempt}" if attempt else ""
    return base[: 253 - len(suffix)] + suffix


def vmop_body(namespace: str, vm: str, name: str, node: str = "") -> dict[str, Any]:
    """A VirtualMachineOperation of type Evict for `vm`; `node` labels a maintenance run's
    (with `agent.node_label.node_label_value`: a long node name is hashed)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if node:
        meta["labels"] = {VMOP_NODE_LABEL: node_label_value(node)}
    return {
        "apiVersion": VIRT_API_VERSION,
        "kind": "VirtualMachineOperation",
        "metadata": meta,
        "spec": {"type": "Evict", "virtualMachineName": vm},
    }


# ---- one migration ---------------------------------------------------------------------------


class MigrationState(enum.StrEnum):
    """How a single migration is going."""

    PENDING = "pending"
    MIGRATING = "migrating"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class MigrationView:
    """One look at a migration: its state, the VM's node now, and what went wrong."""

    state: MigrationState
    phase: str
    node: str
    target: str
    op_phase: str
    reason: str = ""

    @property
    def final(self) -> bool:
        """DONE or FAILED."""
        return self.state in (MigrationState.DONE, MigrationState.FAILED)

    def describe(self) -> str:
        """`Migrating  node-1 -> node-2  (vmop InProgress)`."""
        where = f"{self.node} -> {self.target}" if self.target else self.node or "-"
        text = f"{self.phase or '?':<10} {where}  (vmop {self.op_phase or 'Pending'})"
        return f"{text}: {self.reason}" if self.reason else text


def follow_migration(source: str, vm: VmRef | None, op: OpRef | None) -> MigrationView:
    """Judge a migration of a VM that ran on `source` from fresh looks at it and its operation.

    DONE only when the operation completed and the VM runs on another node; FAILED when the
    operation failed, or the VM or the operation was deleted meanwhile.
    """
    phase, node, target = (vm.phase, vm.node, vm.target) if vm else ("", "", "")
    op_phase = op.phase if op else ""
    if vm is None:
        reason = "the VirtualMachine was deleted during the migration"
        return MigrationView(MigrationState.FAILED, phase, node, target, op_phase, reason)
    if op is None:
        reason = "the VirtualMachineOperation was deleted before it finished"
        return MigrationView(MigrationState.FAILED, phase, node, target, op_phase, reason)
    if op.failed:
        return MigrationView(MigrationState.FAILED, phase, node, target, op_phase, op.why)
    if op.completed and phase == RUNNING and node and node != source:
        return MigrationView(MigrationState.DONE, phase, node, target, op_phase)
    moving = phase == MIGRATING or op.phase == "InProgress" or op.completed
    state = MigrationState.MIGRATING if moving else MigrationState.PENDING
    return MigrationView(state, phase, node, target, op_phase)


# ---- moving every VM off a node --------------------------------------------------------------


class VmStage(enum.StrEnum):
    """Where one VM of a node under maintenance is."""

    QUEUED = "queued"  # to evict, waiting for a free migration slot
    SETTLING = "settling"  # changing by itself (starting, stopping, someone's migration)
    REQUESTED = "requested"  # our Evict operation exists, the migration has not begun
    MIGRATING = "migrating"
    MOVED = "moved"  # runs on another node: our operation completed
    LEFT = "left"  # not on the node any more by other means (stopped, deleted, moved)
    FAILED = "failed"  # our operation failed: the VM is still on the node


FINAL_STAGES = frozenset({VmStage.MOVED, VmStage.LEFT, VmStage.FAILED})
IN_FLIGHT = frozenset({VmStage.REQUESTED, VmStage.MIGRATING})


@dataclass(frozen=True)
class VmProgress:
    """One VM's progress off the node."""

    vm: str  # namespace/name
    stage: VmStage
    node: str  # where it runs now ("" when nowhere)
    target: str = ""
    op: str = ""
    detail: str = ""

    def describe(self, source: str) -> str:
        """A progress line: `vm default/vm-1: moved node-1 -> node-3`."""
        text = f"vm {self.vm}: {self.stage.value}"
        if self.stage in (VmStage.MIGRATING, VmStage.MOVED):
            text += f" {source} -> {self.target or self.node or '?'}"
        elif self.stage is VmStage.REQUESTED and self.op:
            text += f" (vmop {self.op})"
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
        """The VMs still on the node."""
        return tuple(p for p in self.progress if p.stage not in (VmStage.MOVED, VmStage.LEFT))

    def count(self, *stages: VmStage) -> int:
        """How many VMs are in any of `stages`."""
        return sum(1 for p in self.progress if p.stage in stages)

    def summary(self) -> str:
        """`5 VMs: 3 moved, 2 migrating`."""
        parts = [f"{self.count(stage)} {stage.value}" for stage in VmStage if self.count(stage) > 0]
        return f"{len(self.progress)} VMs: " + (", ".join(parts) or "none")


def plan_vm_drain(
    node: str,
    vms: Iterable[VmRef],
    ops: Mapping[str, OpRef],
    seen: Iterable[str],
    parallel: int = DEFAULT_PARALLEL,
) -> DrainStep:
    """Every VM on `node` (now, or seen there earlier in this run) and which to evict now.

    `ops` are the Evict operations this run created, by VM key (an `OpRef` with an empty
    phase when it could not be read back); `seen` are VM keys found on the node before. A VM
    on the node is evicted once, when fewer than `parallel` of our migrations are in flight;
    a failed operation is not retried (its VM is reported). A VM in a settling phase waits.
    """
    by_key = {vm.key: vm for vm in vms}
    keys = sorted({k for k, vm in by_key.items() if vm.node == node} | set(seen) | set(ops))
    progress: list[VmProgress] = []
    candidates: list[VmRef] = []
    for key in keys:
        vm, op = by_key.get(key), ops.get(key)
        if vm is None:
            progress.append(VmProgress(key, VmStage.LEFT, "", detail="deleted"))
        elif vm.node != node:
            moved = op is not None and vm.phase == RUNNING and bool(vm.node)
            stage = VmStage.MOVED if moved else VmStage.LEFT
            detail = (
                "" if moved else (vm.phase or "no phase") + (f" on {vm.node}" if vm.node else "")
            )
            progress.append(VmProgress(key, stage, vm.node, vm.node, op.name if op else "", detail))
        elif op is not None:
            if op.failed:
                progress.append(VmProgress(key, VmStage.FAILED, node, op=op.name, detail=op.why))
            elif vm.phase == MIGRATING or op.phase == "InProgress" or op.completed:
                progress.append(VmProgress(key, VmStage.MIGRATING, node, vm.target, op.name))
            else:
                progress.append(VmProgress(key, VmStage.REQUESTED, node, op=op.name))
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


# ---- the pods left after the VMs -----------------------------------------------------------


class PodAction(enum.StrEnum):
    """What a drain does with a pod, as `kubectl drain --ignore-daemonsets
    --delete-emptydir-data` decides."""

    EVICT = "evict"
    SKIP_DAEMONSET = "skip-daemonset"  # its DaemonSet would put it straight back
    SKIP_MIRROR = "skip-mirror"  # a static pod: the kubelet owns it, the API cannot remove it
    WAIT_DELETING = "wait-deleting"  # already being deleted
    REFUSE_UNMANAGED = "refuse-unmanaged"  # no controller would recreate it: needs --force


def _owner_kinds(meta: Mapping[str, Any]) -> list[str]:
    refs = meta.get("ownerReferences") or []
    return [str(r.get("kind")) for r in refs if isinstance(r, dict) and r.get("controller")]


def classify_pod(pod: Mapping[str, Any], force: bool = False) -> PodAction:
    """What the drain does with `pod`; `force` evicts pods no controller manages, too."""
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    if meta.get("deletionTimestamp"):
        return PodAction.WAIT_DELETING
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return PodAction.SKIP_MIRROR
    owners = _owner_kinds(meta)
    if "DaemonSet" in owners:
        return PodAction.SKIP_DAEMONSET
    finished = status.get("phase") in ("Succeeded", "Failed")
    if not owners and not finished and not force:
        return PodAction.REFUSE_UNMANAGED
    return PodAction.EVICT


def pod_key(pod: Mapping[str, Any]) -> str:
    """`namespace/name` of a pod."""
    meta = _dict(pod.get("metadata"))
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def eviction_retry_delay(attempt: int, base: float = 0.5, cap: float = 5.0) -> float:
    """Seconds before asking again after the `attempt`-th refusal (1, 2, ...): doubling, capped
    at kubectl drain's fixed 5 s."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class PodDrain:
    """How the pods after the VMs went."""

    evicted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # DaemonSet and static pods, left by design
    unmanaged: tuple[str, ...] = ()  # refused: no controller would recreate them
    stuck: tuple[tuple[str, str], ...] = ()  # (pod, why) still there at the deadline

    @property
    def ok(self) -> bool:
        """Every pod that had to go is gone."""
        return not self.unmanaged and not self.stuck


# ---- node state and the verdict of a run ---------------------------------------------------


class NodeState(enum.StrEnum):
    """A node's maintenance state, from its mark, its cordon and the VMs still on it."""

    SCHEDULABLE = "schedulable"
    CORDONED = "cordoned"  # unschedulable, but not by us (kubectl cordon / drain)
    DRAINING = "draining"  # marked and cordoned, VMs still on it
    IN_MAINTENANCE = "in maintenance"  # marked, cordoned, no VM left: safe to power off
    MARKED_SCHEDULABLE = "marked, schedulable"  # marked but uncordoned: new VMs may land


def node_state(marked: bool, cordoned: bool, vms_left: int) -> NodeState:
    """The state shown by `maintenance list` and checked by `maintenance enter`."""
    if not marked:
        return NodeState.CORDONED if cordoned else NodeState.SCHEDULABLE
    if not cordoned:
        return NodeState.MARKED_SCHEDULABLE
    return NodeState.DRAINING if vms_left else NodeState.IN_MAINTENANCE


def enter_verdict(
    node: str, step: DrainStep, pods: PodDrain | None, timed_out: bool = False
) -> tuple[bool, list[str]]:
    """(success, the closing lines) of `maintenance enter`; `pods` is None with --vms-only
    or when the VMs did not all move (the pods are then left alone)."""
    moved = step.count(VmStage.MOVED)
    left = step.remaining
    keep = (
        f"{node} stays cordoned and marked {MAINTENANCE_VALUE!r}: nodefence will not fence it. "
        f"Fix the cause and run `nodefence maintenance enter {node}` again, or end it with "
        f"`nodefence maintenance exit {node}`."
    )
    if left:
        why = "did not move within the timeout" if timed_out else "could not move"
        lines = [f"maintenance of {node} is NOT complete: {len(left)} VMs {why}:"]
        lines += [f"  {p.vm}: {p.detail or p.stage.value}" for p in left]
        return False, [*lines, keep]
    if pods is not None and not pods.ok:
        lines = [f"maintenance of {node} is NOT complete: the VMs moved, some pods did not:"]
        lines += [
            f"  {pod}: no controller manages it; it would be lost (pass --force to evict it)"
            for pod in pods.unmanaged
        ]
        lines += [f"  {pod}: {why}" for pod, why in pods.stuck]
        return False, [*lines, keep]
    done = f"{node} is in maintenance: {moved} VMs moved"
    if pods is None:
        done += ", other pods left in place (--vms-only)"
    else:
        done += f", {len(pods.evicted)} pods evicted"
        if pods.skipped:
            done += f", {len(pods.skipped)} DaemonSet or static pods left"
    return True, [
        done + ".",
        f"It may be powered off: nodefence will not fence it. End maintenance with "
        f"`nodefence maintenance exit {node}`.",
    ]


@dataclass(frozen=True)
class NodeFacts:
    """What `maintenance list` needs of a Node."""

    name: str
    marked: bool
    cordoned: bool
    ready: bool | None


@dataclass(frozen=True)
class NodeRow:
    """One row of `maintenance list`."""

    node: str
    state: NodeState
    cordoned: bool
    ready: bool | None
    vms: int


def maintenance_rows(
    nodes: Iterable[NodeFacts], vms: Iterable[VmRef], every_node: bool = False
) -> list[NodeRow]:
    """Rows for the marked nodes (every node with `every_node`), by name; `vms` counts the
    VMs each node still hosts."""
    hosted: dict[str, int] = {}
    for vm in vms:
        if vm.node:
            hosted[vm.node] = hosted.get(vm.node, 0) + 1
    rows = [
        NodeRow(
            n.name,
            node_state(n.marked, n.cordoned, hosted.get(n.name, 0)),
            n.cordoned,
            n.ready,
            hosted.get(n.name, 0),
        )
        for n in nodes
        if every_node or n.marked
    ]
    return sorted(rows, key=lambda r: r.node)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean node-1?)` for a name close to a known one, else ""."""
    scored = [(difflib.SequenceMatcher(None, name, k).ratio(), k) for k in set(known)]
    close = [k for score, k in sorted(scored, key=lambda s: (-s[0], s[1])) if score >= 0.6][:3]
    return f" (did you mean {' or '.join(close)}?)" if close else ""
