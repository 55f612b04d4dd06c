"""Live migrations as Deckhouse Virtualization's controller runs them (VirtualMachineOperation
`Evict` or the deprecated `Migrate`), for
`nodefence.hwsim.virtualization.coldstandby.ColdStandbyController`.

An operation the controller accepts goes through the phases and `Completed` condition reasons of
`vmop/migration/internal/handler/lifecycle.go`, with `status.progress`:
- `Pending` `MigrationPending` 0%: queued while the migration limits are reached, as KubeVirt
  and the controller count them: `per_cluster` (parallelMigrationsPerCluster, 5),
  `outbound_per_node` (parallelOutboundMigrationsPerNode, 2) and `inbound_per_node` (the
  controller's inbound limiter, 1); the message names the limit.
- `InProgress` `TargetUnschedulable` 2%: no node may take the VM (cordoned, tainted, NotReady,
  or `Insufficient cpu`/`memory`: see `nodefence.hwsim.virtualization.node_capacity`). It stays so,
  trying again, until
  `prepare_timeout` (the controller's 5 minutes) fails it: `OperationFailed` "Timed out
  preparing the migration target."
- `InProgress` `TargetPreparing` 3%: the target launcher pod exists on the chosen node and the
  VM is `Migrating` (`status.migrationState.target.node`), for a fifth of `migration_delay`.
- `InProgress` `Syncing` 10-90%: memory is copied for the rest of `migration_delay`. A VM whose
  annotation `hwsim.nodefence.io/dirty-memory` is `high` converges only with auto-converge (CPU
  throttling: its effective `liveMigrationPolicy` AlwaysForced or PreferForced, or `spec.force`
  where the policy allows it); without it, it stops at half (`NotConverging`). A source node
  that is not Ready makes no progress. No progress for `progress_timeout` (KubeVirt's 150 s)
  fails the operation (`NotConverging`, or `Aborted` "Live migration stuck").
- `Completed` 100%: the VM is Running on the target; its processes moved, never copied.
An operation the controller cannot run fails at once with its reason: `VirtualMachineNotFound`,
`NotApplicableForVirtualMachinePhase`, `NotApplicableForLiveMigrationPolicy` (`spec.force`
against an Always* policy), `NotReadyToBeExecuted` (another migration of the VM is under way),
`OperationFailed` (the VM is not migratable). Evacuations (a launcher pod eviction
intercepted) are `nodefence.hwsim.virtualization.evacuation`.

The limits, reasons and the `Migration` record are `nodefence.hwsim.virtualization.migration_state`;
the status writes,
`nodefence.hwsim.virtualization.migration_status`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nodefence.hwsim.kube.errors import ApiError, NotFound
from nodefence.hwsim.virtualization.evacuation import Evacuation
from nodefence.hwsim.virtualization.live_migration_policy import live_migration_settings
from nodefence.hwsim.virtualization.migration_state import (
    ABORTED,
    CLUSTER_LIMIT,
    DIRTY_ANNOTATION,
    EVICT_TYPES,
    FINAL_OP_PHASES,
    INBOUND_LIMIT,
    MIGRATION_COMPLETED,
    MIGRATION_PENDING,
    NOT_APPLICABLE_PHASE,
    NOT_APPLICABLE_POLICY,
    NOT_CONVERGING,
    NOT_CONVERGING_MESSAGE,
    NOT_FOUND,
    NOT_READY_TO_EXECUTE,
    OPERATION_FAILED,
    OUTBOUND_LIMIT,
    PREPARING_MESSAGE,
    QUEUED_MESSAGE,
    SYNCING,
    SYNCING_MESSAGE,
    TARGET_PREPARING,
    TARGET_UNSCHEDULABLE,
    Key,
    Migration,
    MigrationHost,
    MigrationLimits,
    Obj,
    Stage,
    key_of,
    mapping_of,
    node_ready,
)
from nodefence.hwsim.virtualization.migration_status import StatusWriter
from nodefence.hwsim.virtualization.node_capacity import (
    Request,
    insufficient,
    no_room,
    used,
    vm_request,
)
from nodefence.hwsim.virtualization.vms import (
    VmPhase,
    condition,
    create_launcher_pod,
    running_status,
)

log = logging.getLogger(__name__)


class MigrationController(StatusWriter):
    """Runs the Evict operations for `host`; `tick()` once per controller pass."""

    def __init__(
        self,
        host: MigrationHost,
        clock: Callable[[], float],
        *,
        limits: MigrationLimits | None = None,
        prepare_timeout: float = 300.0,
        progress_timeout: float = 150.0,
        evacuation_backoff: float = 2.0,
    ) -> None:
        self.host = host
        self.store = host.store
        self.clock = clock
        self.limits = limits or MigrationLimits()
        self.prepare_timeout = prepare_timeout
        self.progress_timeout = progress_timeout
        self.active: dict[Key, Migration] = {}  # by VM, in the order they were accepted
        self.evacuation = Evacuation(self.store, host.spend, evacuation_backoff)
        # The scheduler's rules, given by the VM controller at each tick.
        self._eligible: Callable[[dict[str, Obj]], list[str]] = lambda nodes: []
        self._unschedulable: Callable[[Obj], str] = lambda node: ""

    # ---- the loop -----------------------------------------------------------------------

    def tick(
        self,
        nodes: dict[str, Obj],
        vms: list[Obj],
        load: dict[str, int],
        now: float,
        eligible: Callable[[dict[str, Obj]], list[str]],
        unschedulable: Callable[[Obj], str],
    ) -> None:
        """One pass: accept new operations, advance every migration, start evacuations."""
        self._eligible, self._unschedulable = eligible, unschedulable
        ops = self.store.list("virtualmachineoperations")["items"]
        present = {key_of(o) for o in ops if mapping_of(o.get("metadata")).get("name")}
        for op in ops:
            if mapping_of(op.get("metadata")).get("name"):
                self._guarded(key_of(op), self._accept, op, now)
        for mig in list(self.active.values()):
            self._guarded(mig.op, self._advance, mig, nodes, vms, load, present, now)
        for vm in vms:
            if mapping_of(vm.get("metadata")).get("name"):
                migrating = key_of(vm) in self.active
                self._guarded(key_of(vm), self.evacuation.check, vm, ops, migrating, now)

    def _guarded(self, key: Key, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except (ApiError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("migration controller: skipped %s/%s: %r", *key, exc)

    def lose(self, vm: Key) -> None:
        """The VM's node was lost under a migration: the operation fails."""
        mig = self.active.pop(vm, None)
        if mig is None:
            return
        if mig.target_pod:
            self.host.delete_pod(vm[0], mig.target_pod)
        message = "Migration failed because the virtual machine is currently not running."
        self._fail(mig.op, OPERATION_FAILED, message)

    # ---- accepting an operation ---------------------------------------------------------

    def _accept(self, op: Obj, now: float) -> None:
        status, spec = mapping_of(op.get("status")), mapping_of(op.get("spec"))
        key = key_of(op)
        vm_key = (key[0], str(spec.get("virtualMachineName") or ""))
        mig = self.active.get(vm_key)
        if status.get("phase") in FINAL_OP_PHASES or (mig is not None and mig.op == key):
            return
        if status.get("phase") == "InProgress":
            if self.host.spend():  # begun by a controller that is gone: nobody will finish it
                self._fail(key, OPERATION_FAILED, "the controller lost track of it")
            return
        if not self.host.spend():
            return
        op_type = spec.get("type")
        if op_type not in EVICT_TYPES:
            message = f"hwsim's controller performs only Evict and Migrate, not {op_type}"
            self._fail(key, OPERATION_FAILED, message)
            return
        try:
            vm = self.store.get("virtualmachines", vm_key[1], vm_key[0])
        except NotFound:
            self._fail(key, NOT_FOUND, "VirtualMachine not found")
            return
        vm_status = mapping_of(vm.get("status"))
        phase, source = vm_status.get("phase") or "", str(vm_status.get("nodeName") or "")
        if mig is not None:
            message = (
                "VMOP cannot be executed now. Previously created operation should finish first."
            )
            self._fail(key, NOT_READY_TO_EXECUTE, message)
            return
        if phase != VmPhase.RUNNING or not source:
            message = (
                f"Operation type {op_type} is not applicable for VirtualMachine in phase {phase}"
            )
            self._fail(key, NOT_APPLICABLE_PHASE, message)
            return
        settings = live_migration_settings(mapping_of(vm.get("spec")), spec.get("force"))
        if isinstance(settings, str):
            self._fail(key, NOT_APPLICABLE_POLICY, f"Operation is invalid: {settings}")
            return
        migratable = [c for c in vm_status.get("conditions") or [] if c.get("type") == "Migratable"]
        if migratable and migratable[0].get("status") == "False":
            message = "VirtualMachine is not migratable, cannot be processed."
            self._fail(key, OPERATION_FAILED, message)
            return
        listed = [p for p in vm_status.get("virtualMachinePods") or [] if isinstance(p, dict)]
        on_source = [n for n, host in self.host.launcher_pods(vm_key) if host == source]
        source_pod = next((str(p["name"]) for p in listed if p.get("active")), "")
        source_pod = source_pod or (on_source[0] if on_source else "")
        mig = Migration(key, vm_key, source, source_pod, settings[1], Stage.QUEUED, now)
        self.active[vm_key] = mig
        self._show(mig, "Pending", MIGRATION_PENDING, QUEUED_MESSAGE, "0%")
        log.info("vmop %s/%s: %s queued (%s)", *key, vm_key[1], settings[0])

    # ---- advancing one ----------------------------------------------------------------------

    def _advance(
        self,
        mig: Migration,
        nodes: dict[str, Obj],
        vms: list[Obj],
        load: dict[str, int],
        present: set[Key],
        now: float,
    ) -> None:
        if mig.op not in present:  # the operation was deleted: the migration is cancelled
            self._abort(mig, None)
            return
        try:
            vm = self.store.get("virtualmachines", mig.vm[1], mig.vm[0])
        except NotFound:
            del self.active[mig.vm]
            self._fail(mig.op, NOT_FOUND, "VirtualMachine not found")
            return
        if mig.target and self._target_lost(mig, nodes):
            self._abort(mig, f"Migration failed: target node {mig.target} was lost")
            return
        if mig.stage is Stage.QUEUED:
            wait = self._slot_wait(mig)
            if wait:
                self._show(mig, "Pending", MIGRATION_PENDING, wait, "0%")
                return
            mig.stage, mig.since = Stage.SCHEDULING, now
        if mig.stage is Stage.SCHEDULING:
            self._schedule(mig, vm, nodes, vms, load, now)
        if mig.stage is Stage.WAITING_INBOUND:
            if self._inbound(mig.target) >= self.limits.inbound_per_node:
                self._show(
                    mig, "Pending", MIGRATION_PENDING, INBOUND_LIMIT.format(mig.target), "0%"
                )
                return
            self._prepare(mig, vm, now)
        if mig.stage is Stage.PREPARING and now - mig.since >= 0.2 * self.host.migration_delay:
            mig.stage, mig.since, mig.last, mig.progress_at = Stage.SYNCING, now, now, now
        if mig.stage is Stage.SYNCING:
            self._sync(mig, vm, nodes, now)

    def _slot_wait(self, mig: Migration) -> str:
        running = [m for m in self.active.values() if m.running]
        if len(running) >= self.limits.per_cluster:
            return CLUSTER_LIMIT
        outbound = sum(1 for m in running if m.source == mig.source)
        if outbound >= self.limits.outbound_per_node:
            return OUTBOUND_LIMIT.format(mig.source)
        return ""

    def _inbound(self, node: str) -> int:
        return sum(
            1
            for m in self.active.values()
            if m.target == node and m.stage in (Stage.PREPARING, Stage.SYNCING)
        )

    def _schedule(
        self,
        mig: Migration,
        vm: Obj,
        nodes: dict[str, Obj],
        vms: list[Obj],
        load: dict[str, int],
        now: float,
    ) -> None:
        need = vm_request(vm)
        arriving = [
            (m.target, vm_request(self._vm(m.vm))) for m in self.active.values() if m.target
        ]
        in_use = used(vms, arriving)
        fits = [
            n
            for n in self._eligible(nodes)
            if n != mig.source and not insufficient(nodes[n], need, in_use.get(n, Request()))
        ]
        target = min(fits, key=lambda n: (load.get(n, 0), n), default=None)
        if target is None:
            message = no_room(nodes, mig.source, need, in_use, self._unschedulable)
            if mig.shown[1] != TARGET_UNSCHEDULABLE:
                mig.since = now  # the controller's clock runs from the reason's transition
            if now - mig.since > self.prepare_timeout:
                self._abort(mig, "Timed out preparing the migration target.")
                return
            self._show(mig, "InProgress", TARGET_UNSCHEDULABLE, message, "2%")
            return
        if not self.host.spend():
            return
        mig.target = target
        mig.target_uid = str(nodes[target]["metadata"].get("uid", ""))
        mig.target_pod = create_launcher_pod(self.store, vm, target, self.host.stamp())
        load[target] = load.get(target, 0) + 1
        mig.stage, mig.since = Stage.WAITING_INBOUND, now

    def _prepare(self, mig: Migration, vm: Obj, now: float) -> None:
        mig.stage, mig.since = Stage.PREPARING, now
        stamp = self.host.stamp()
        vm_status = mapping_of(vm.get("status"))
        conditions = [c for c in vm_status.get("conditions") or [] if c.get("type") != "Migrating"]
        conditions.append(condition("Migrating", True, "VirtualMachineMigrating", "", stamp))
        self._patch_vm(
            mig.vm,
            {
                "phase": VmPhase.MIGRATING.value,
                "virtualMachinePods": [
                    {"name": mig.source_pod, "active": True},
                    {"name": mig.target_pod, "active": False},
                ],
                "migrationState": {
                    "startTimestamp": stamp,
                    "source": {"node": mig.source, "pod": mig.source_pod},
                    "target": {"node": mig.target, "pod": mig.target_pod},
                },
                "conditions": conditions,
            },
        )
        self._show(mig, "InProgress", TARGET_PREPARING, PREPARING_MESSAGE, "3%")
        log.info(
            "vmop %s/%s: migrating %s from %s to %s", *mig.op, mig.vm[1], mig.source, mig.target
        )

    def _sync(self, mig: Migration, vm: Obj, nodes: dict[str, Obj], now: float) -> None:
        elapsed, mig.last = now - mig.last, now
        source = nodes.get(mig.source)
        reachable = source is not None and node_ready(source) and self.host.powered(mig.source)
        dirty = (
            mapping_of(mapping_of(vm.get("metadata")).get("annotations")).get(DIRTY_ANNOTATION)
            == "high"
        )
        ceiling = 0.5 if dirty and not mig.auto_converge else 1.0
        if reachable and mig.synced < ceiling:
            rate = 1.0 / max(0.8 * self.host.migration_delay, 1e-3)
            if dirty:
                rate /= 2  # throttled to converge
            mig.synced = min(ceiling, mig.synced + elapsed * rate)
            mig.progress_at = now
        stuck = dirty and not mig.auto_converge and mig.synced >= ceiling
        if now - mig.progress_at > self.progress_timeout:
            if stuck:
                self._abort(mig, "Migration did not converge", NOT_CONVERGING)
            else:
                stalled = f"Live migration stuck for {self.progress_timeout:g} sec"
                self._abort(mig, f"Migration aborted: {stalled} and has been aborted", ABORTED)
            return
        if mig.synced >= 1.0 - 1e-9:  # float steps of the clock
            self._complete(mig, vm)
            return
        reason, message = (
            (NOT_CONVERGING, NOT_CONVERGING_MESSAGE) if stuck else (SYNCING, SYNCING_MESSAGE)
        )
        self._show(mig, "InProgress", reason, message, f"{10 + int(mig.synced * 80)}%")

    def _complete(self, mig: Migration, vm: Obj) -> None:
        if not self.host.spend():
            return
        if not self.host.runs_on(mig.vm, mig.source):
            self._abort(mig, f"Migration failed: the VM no longer runs on {mig.source}")
            return
        del self.active[mig.vm]
        stamp = self.host.stamp()
        vm_status = mapping_of(vm.get("status"))
        self.host.delete_pod(mig.vm[0], mig.source_pod)
        ip = str(vm_status.get("ipAddress") or "")
        status = running_status(mig.target, ip, mig.target_pod, stamp)
        status["stats"] = vm_status.get("stats") or status["stats"]  # a migration is no restart
        status["migrationState"] = {
            **mapping_of(vm_status.get("migrationState")),
            "endTimestamp": stamp,
            "result": "Succeeded",
        }
        self._patch_vm(mig.vm, status)
        self.host.moved(mig.vm, mig.source, mig.target)
        self._write_op(mig.op, "Completed", True, MIGRATION_COMPLETED, "", "100%")
        log.info("vm %s/%s: migrated from %s to %s", *mig.vm, mig.source, mig.target)

    def _target_lost(self, mig: Migration, nodes: dict[str, Obj]) -> bool:
        node = nodes.get(mig.target)
        taints = mapping_of(node.get("spec")).get("taints") or [] if node else []
        return (
            node is None
            or any(t.get("key") == "node.kubernetes.io/out-of-service" for t in taints)
            or str(node["metadata"].get("uid", "")) != mig.target_uid
            or not self.host.powered(mig.target)
        )

    def _abort(self, mig: Migration, message: str | None, reason: str = OPERATION_FAILED) -> None:
        """Give up a migration: the VM stays Running where it was; the operation fails with
        `message` (None: it was deleted, nothing to say)."""
        del self.active[mig.vm]
        if mig.target_pod:
            self.host.delete_pod(mig.vm[0], mig.target_pod)
        if mig.stage in (Stage.PREPARING, Stage.SYNCING):
            try:
                vm = self.store.get("virtualmachines", mig.vm[1], mig.vm[0])
            except NotFound:
                vm = {}
            vm_status = mapping_of(vm.get("status"))
            if vm:
                conditions = [
                    c for c in vm_status.get("conditions") or [] if c.get("type") != "Migrating"
                ]
                self._patch_vm(
                    mig.vm,
                    {
                        "phase": VmPhase.RUNNING.value,
                        "virtualMachinePods": [{"name": mig.source_pod, "active": True}],
                        "conditions": conditions,
                        "migrationState": {
                            **mapping_of(vm_status.get("migrationState")),
                            "endTimestamp": self.host.stamp(),
                            "result": "Failed",
                        },
                    },
                )
        if message is not None:
            self._fail(mig.op, reason, message, progress=mig.shown[3])
