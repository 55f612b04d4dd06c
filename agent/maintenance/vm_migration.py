"""One VM and its VirtualMachineOperations, as Deckhouse Virtualization reports them (pure).

- `VmRef` / `vm_ref`: where a VirtualMachine runs and, while a live migration is under way,
  where it is going (`status.migrationState.target.node`: the VM's `nodeName` still names the
  source until the migration completed).
- `OpRef` / `op_ref`: an operation's type, phase, progress and the `Completed` condition's
  reason (while it runs: `MigrationPending`, `TargetUnschedulable`, `Syncing`, `NotConverging`,
  ...; once it failed: why). Finished phases are those of the controller's `IsFinished`:
  Completed, Failed, Superseded. A `Terminating` operation is not finished (the admission
  webhook still counts it) but will never complete.
- `existing_operation`: which unfinished operation of a VM a drain follows instead of creating
  its own (the webhook refuses a second one: `activeVMOPValidator`), and which ones it must wait
  for.
- `follow_migration`: how a single migration is going, for `nodefence migrate --wait`.

KubeVirt's VMs and VirtualMachineInstanceMigrations come in the same shapes
(`nodefence.agent.virt.kubevirt_objects` reads them): their phases are added to the sets below, so
the drain and `migrate --wait` judge both alike.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodefence.agent.fencing.operation import RESTART_POLICIES
from nodefence.agent.kube.node_label import node_label_value
from nodefence.agent.maintenance.vm_capacity import Need, vm_need
from nodefence.agent.virt.names import Virt, vm_key

VIRT_API_VERSION = "virtualization.deckhouse.io/v1alpha2"
VMOP_NODE_LABEL = "nodefence.io/maintenance-node"  # on the operations `maintenance` creates
VM_POD_LABEL = "vm.kubevirt.internal.virtualization.deckhouse.io/name"  # on launcher pods

RUNNING = "Running"
MIGRATING = "Migrating"
DEFAULT_RUN_POLICY = "AlwaysOnUnlessStoppedManually"  # the CRD's default
# A VM in one of these phases is changing by itself: wait for it to settle, do not evict.
SETTLING_PHASES = frozenset({MIGRATING, "Starting", "Stopping", "Terminating", "Pending"})
# Deckhouse: Completed, Failed, Superseded; KubeVirt's migrations: Succeeded, Failed.
FINISHED_PHASES = frozenset({"Completed", "Failed", "Superseded", "Succeeded"})
COMPLETED_PHASES = frozenset({"Completed", "Succeeded"})
# Under way: Deckhouse's InProgress; KubeVirt's from Scheduling (the target pod) to Running.
UNDER_WAY_PHASES = frozenset(
    {"InProgress", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running"}
)
MIGRATION_TYPES = frozenset({"Evict", "Migrate", "Migration"})
SHUTDOWN = "Shutdown"  # a KubeVirt launcher pod evicted: KubeVirt stops (or hands over) the VM


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class VmRef:
    """A VirtualMachine: where it runs, its phase, and the target of a migration under way.

    `policy` is what decides whether it comes back after its node is lost (Deckhouse's
    runPolicy, KubeVirt's runStrategy; "" for a KubeVirt VirtualMachineInstance without a
    VirtualMachine), `restart` that verdict. `last_node` is the node its status names even
    when it no longer runs there (what a fence snapshot records). KubeVirt only: `eviction`
    is its effective evictionStrategy ("" when unknown), `not_migratable` KubeVirt's reason
    when its LiveMigratable condition is False. `need`: what it takes on a target node.
    """

    namespace: str
    name: str
    phase: str
    node: str
    target: str = ""
    virt: Virt = Virt.DECKHOUSE
    # Facts read along with it: not part of which VM it is or where it stands.
    policy: str = field(default="", compare=False)
    restart: bool = field(default=False, compare=False)
    last_node: str = field(default="", compare=False)
    eviction: str = field(default="", compare=False)
    not_migratable: str = field(default="", compare=False)
    need: Need | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """`namespace/name` (`kubevirt:namespace/name` for a KubeVirt VM)."""
        return vm_key(self.virt, self.namespace, self.name)

    def arriving_at(self, node: str) -> bool:
        """The VM is migrating onto `node` (it still runs on its source)."""
        return bool(self.target) and self.target == node and self.node != node


def vm_ref(obj: Mapping[str, Any]) -> VmRef:
    """The `VmRef` of a VirtualMachine object."""
    meta, status = _dict(obj.get("metadata")), _dict(obj.get("status"))
    state = _dict(status.get("migrationState"))
    under_way = status.get("phase") == MIGRATING or (
        bool(state.get("startTimestamp")) and not state.get("endTimestamp")
    )
    target = _dict(state.get("target")).get("node") if under_way else ""
    policy = str(_dict(obj.get("spec")).get("runPolicy") or DEFAULT_RUN_POLICY)
    node = str(status.get("nodeName") or "")
    return VmRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        phase=str(status.get("phase") or ""),
        node=node,
        target=str(target or ""),
        policy=policy,
        restart=policy in RESTART_POLICIES,
        last_node=node,
        need=vm_need(obj),
    )


@dataclass(frozen=True)
class OpRef:
    """A VirtualMachineOperation: type, phase, progress and its `Completed` condition."""

    namespace: str
    name: str
    vm: str
    phase: str
    reason: str = ""
    message: str = ""
    type: str = "Evict"
    progress: str = ""
    created: str = ""
    deleting: bool = False
    kind: str = "vmop"  # as kubectl's short name: vmop, vmim (KubeVirt), pod (a Shutdown)

    @property
    def completed(self) -> bool:
        """The operation says it is done."""
        return self.phase in COMPLETED_PHASES

    @property
    def under_way(self) -> bool:
        """Accepted and running, not done yet."""
        return self.phase in UNDER_WAY_PHASES

    @property
    def finished(self) -> bool:
        """Completed, Failed or Superseded: the controller is done with it."""
        return self.phase in FINISHED_PHASES

    @property
    def terminating(self) -> bool:
        """Being deleted: it will not finish, yet the webhook still counts it."""
        return self.deleting or self.phase == "Terminating"

    @property
    def failed(self) -> bool:
        """It will not complete: failed, superseded by another operation, or being deleted."""
        return self.phase in ("Failed", "Superseded") or self.terminating

    @property
    def migration(self) -> bool:
        """An Evict (or the deprecated Migrate), or a KubeVirt migration."""
        return self.type in MIGRATION_TYPES

    @property
    def why(self) -> str:
        """`Reason: message`, the way the controller explains a state or a failure."""
        if self.reason and self.message:
            return f"{self.reason}: {self.message}"
        return self.reason or self.message or f"operation {self.phase or 'not started'}"

    def state(self) -> str:
        """`Pending 0%, MigrationPending: Waiting for a free migration slot.`"""
        text = self.phase or "Pending"
        if self.progress:
            text += f" {self.progress}"
        if self.reason and self.reason not in ("Unknown", self.phase):
            text += f", {self.why}"
        return text


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
        type=str(spec.get("type") or ""),
        progress=str(status.get("progress") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def existing_operation(vm: str, ops: Iterable[OpRef]) -> tuple[OpRef | None, tuple[OpRef, ...]]:
    """(the operation to follow, the ones to wait for) among a VM's operations.

    The admission webhook refuses a new operation while any unfinished one exists for the VM.
    An unfinished Evict or Migrate (the oldest, if several) is followed as if it were ours;
    every other unfinished one (Start, Stop, Restart, or one being deleted) must end first.
    """
    mine = sorted((o for o in ops if o.vm == vm and not o.finished), key=lambda o: o.created)
    follow = next((o for o in mine if o.migration and not o.terminating), None)
    return follow, tuple(o for o in mine if o is not follow)


def vmop_name(vm: str, unix_time: float, attempt: int = 0) -> str:
    """`migrate-<vm>-<unix time>` as the seed names it; `-<attempt>` when that was taken."""
    base = f"migrate-{vm}-{int(unix_time)}"
    suffix = f"-{attempt}" if attempt else ""
    return base[: 253 - len(suffix)] + suffix


def vmop_body(
    namespace: str, vm: str, name: str, node: str = "", force: bool | None = None
) -> dict[str, Any]:
    """A VirtualMachineOperation of type Evict for `vm`; `node` labels a maintenance run's
    (with `nodefence.agent.kube.node_label.node_label_value`: a long node name is hashed); `force`
    sets
    `spec.force` (True: converge by CPU throttling; False: never; None: the VM's policy)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if node:
        meta["labels"] = {VMOP_NODE_LABEL: node_label_value(node)}
    spec: dict[str, Any] = {"type": "Evict", "virtualMachineName": vm}
    if force is not None:
        spec["force"] = force
    return {
        "apiVersion": VIRT_API_VERSION,
        "kind": "VirtualMachineOperation",
        "metadata": meta,
        "spec": spec,
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
    """One look at a migration: its state, the VM's node now, and what the controller says."""

    state: MigrationState
    phase: str
    node: str
    target: str
    op_phase: str
    reason: str = ""
    op_kind: str = "vmop"

    @property
    def final(self) -> bool:
        """DONE or FAILED."""
        return self.state in (MigrationState.DONE, MigrationState.FAILED)

    def describe(self) -> str:
        """`Migrating  node-1 -> node-2  (vmop InProgress 45%, Syncing: ...)`."""
        where = f"{self.node} -> {self.target}" if self.target else self.node or "-"
        text = f"{self.phase or '?':<10} {where}  ({self.op_kind} {self.op_phase or 'Pending'})"
        return f"{text}: {self.reason}" if self.reason else text


OP_KINDS = {"vmop": "VirtualMachineOperation", "vmim": "VirtualMachineInstanceMigration"}


def follow_migration(
    source: str, vm: VmRef | None, op: OpRef | None, op_kind: str = "vmop"
) -> MigrationView:
    """Judge a migration of a VM that ran on `source` from fresh looks at it and its operation
    (`op_kind`: `vmop`, or `vmim` for a KubeVirt VirtualMachineInstanceMigration).

    DONE only when the operation completed and the VM runs on another node; FAILED when the
    operation failed or was superseded, or the VM or the operation was deleted meanwhile.
    While it runs, `reason` is what the controller says it waits for.
    """
    phase, node, target = (vm.phase, vm.node, vm.target) if vm else ("", "", "")
    op_phase = op.state() if op else ""

    def view(state: MigrationState, op_phase: str, reason: str = "") -> MigrationView:
        return MigrationView(state, phase, node, target, op_phase, reason, op_kind)

    if vm is None:
        return view(
            MigrationState.FAILED, op_phase, "the VirtualMachine was deleted during the migration"
        )
    if op is None:
        what = OP_KINDS.get(op_kind, op_kind)
        return view(MigrationState.FAILED, op_phase, f"the {what} was deleted before it finished")
    if op.failed:
        return view(MigrationState.FAILED, op.phase, op.why)
    if op.completed and phase == RUNNING and node and node != source:
        return view(MigrationState.DONE, op.phase)
    moving = phase == MIGRATING or op.under_way or op.completed
    return view(MigrationState.MIGRATING if moving else MigrationState.PENDING, op_phase)
