"""`ColdStandbyController`: the virtualization controller's node-failure and Evict behaviour.

It keeps two truths per VM. The API objects (VirtualMachine `status.phase`/`nodeName`, the
launcher Pod) are what the real controller believes. `actual` is where the hypervisor processes
really run: they die at once when a node's machine loses power (while the API still says
Running: the real controller cannot know), and they keep running on a node that is only cut off
from the network. So when a Node is deleted (or tainted `node.kubernetes.io/out-of-service` with
NoExecute) while its machine is still on, the VM restarted elsewhere runs twice, and
`violations()` says so: the split brain that fencing exists to prevent.

As Deckhouse Virtualization behaves (ColdStandby), see `hwsim.vm_start`:
- a Running VM whose launcher pod is gone (deleted, or Failed after its node rebooted) is lost:
  with runPolicy `AlwaysOn`/`AlwaysOnUnlessStoppedManually` it goes `Starting`: a new launcher
  pod on the least-loaded eligible node (Ready, schedulable, no NoSchedule/NoExecute taint),
  which starts once its disk (a ReadWriteOnce PVC) is attached there and `boot_delay` has
  passed; meanwhile the VM is `Pending` with the attach/detach controller's reason (a
  "Multi-Attach error" while the disk is still attached to the old node), or with the
  scheduler's reason while no node is eligible. VMs with other policies go `Stopped`. A Node
  that is deleted, NotReady or tainted changes nothing by itself: its pods stay until PodGC,
  the taint manager or a fencer removes them (`hwsim.kube.podgc`).
- VirtualMachineOperation `Evict` (or deprecated `Migrate`): validated, then `InProgress` with
  the VM `Migrating`; `migration_delay` later the VM is Running on the target node and the
  operation `Completed`. A live migration moves the processes: it never runs a VM twice.
  Failures carry the real controller's reasons (`VirtualMachineNotFound`,
  `NotApplicableForVirtualMachinePhase`, `NotReadyToBeExecuted`); no eligible target fails with
  `TargetUnschedulable` (the real controller would wait in Pending instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hwsim.kube.errors import ApiError, NotFound
from hwsim.kube.objects import timestamp
from hwsim.kube.periodic import Periodic
from hwsim.kube.store import ObjectStore
from hwsim.vm_start import Start, disks_ready, launcher_lost, pod_gone
from hwsim.vms import (
    DEFAULT_RUN_POLICY,
    RESTARTED_POLICIES,
    VM_LABEL,
    VmPhase,
    condition,
    create_launcher_pod,
    mark_pod_running,
    running_status,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
HOSTED = (VmPhase.RUNNING.value, VmPhase.MIGRATING.value)
WAITING = (VmPhase.STARTING.value, VmPhase.PENDING.value)
EVICT_TYPES = ("Evict", "Migrate")
FINAL_OP_PHASES = ("Completed", "Failed", "Terminating")

# VirtualMachineOperation `Completed` condition reasons, as the real controller sets them
NOT_FOUND = "VirtualMachineNotFound"
NOT_APPLICABLE_PHASE = "NotApplicableForVirtualMachinePhase"
NOT_APPLICABLE_POLICY = "NotApplicableForLiveMigrationPolicy"
NOT_READY_TO_EXECUTE = "NotReadyToBeExecuted"
TARGET_UNSCHEDULABLE = "TargetUnschedulable"
OPERATION_FAILED = "OperationFailed"
MIGRATION_RUNNING = "MigrationRunning"
MIGRATION_COMPLETED = "Completed"


# ---- where a VM may run (pure) ----------------------------------------------------------


def is_out_of_service(node: Obj) -> bool:
    """Whether the node carries `node.kubernetes.io/out-of-service` with effect NoExecute."""
    taints = _dict(node.get("spec")).get("taints") or []
    return any(t.get("key") == OUT_OF_SERVICE and t.get("effect") == "NoExecute" for t in taints)


def why_unschedulable(node: Obj) -> str:
    """The scheduler's words for why nothing new may run on `node`; "" when it may."""
    conditions = _conditions(_dict(node.get("status")))
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return "node(s) were not ready"
    if _dict(node.get("spec")).get("unschedulable"):
        return "node(s) were unschedulable"
    for taint in _dict(node.get("spec")).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute"):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return ""


def eligible_nodes(nodes: Iterable[Obj]) -> list[str]:
    """Names of the nodes a VM may start or migrate on, sorted."""
    return sorted(n["metadata"]["name"] for n in nodes if not why_unschedulable(n))


def choose_node(candidates: Iterable[str], load: dict[str, int]) -> str | None:
    """The least-loaded candidate (ties by name), or None."""
    return min(candidates, key=lambda n: (load.get(n, 0), n), default=None)


def unavailable_message(nodes: Iterable[Obj], excluded: str = "") -> str:
    """`0/3 nodes are available: 1 node(s) were unschedulable, ...`, as the scheduler words it."""
    counts: dict[str, int] = {}
    total = 0
    for node in nodes:
        total += 1
        why = why_unschedulable(node) or (
            "node(s) already run the VM" if node["metadata"]["name"] == excluded else ""
        )
        if why:
            counts[why] = counts.get(why, 0) + 1
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    return f"0/{total} nodes are available" + (f": {reasons}." if reasons else ".")


# ---- records ----------------------------------------------------------------------------


@dataclass
class Recovery:
    """One VM's fate after its node was lost, for tests and benchmarks.

    Times are on the controller's clock: `down_at` is when it saw the launcher pod gone (`why`:
    `deleted`, `Failed`, ...), `running_at` when the API said Running again.
    `lost_node_powered` is True when that node's machine still had power at that moment: a
    recovery started without fencing, a split brain in waiting.
    """

    namespace: str
    name: str
    run_policy: str
    lost_node: str
    why: str
    down_at: float
    restart_expected: bool
    lost_node_powered: bool
    running_at: float | None = None
    new_node: str | None = None

    @property
    def downtime(self) -> float | None:
        """Seconds from the node loss to Running again (None while not running)."""
        return None if self.running_at is None else self.running_at - self.down_at


@dataclass(frozen=True)
class SplitBrain:
    """A VM seen running on several nodes at once."""

    namespace: str
    name: str
    nodes: tuple[str, ...]
    seen_at: float
    wall_time: str

    def __str__(self) -> str:
        where = ", ".join(self.nodes)
        return f"{self.namespace}/{self.name} running on {where} at once (since {self.wall_time})"


@dataclass
class _Migration:
    op: Key
    vm: Key
    source: str
    source_pod: str
    target: str
    target_uid: str
    target_pod: str
    due: float


class ColdStandbyController:
    """The emulated virtualization controller; `tick()` directly or `start_in_thread()`.

    `is_powered(node)` says whether that node's machine has power (a KeyError counts as no).
    Times (`boot_delay`, `migration_delay`, the `history`) are on `clock`; at most `max_actions`
    VMs, operations and pods are acted on per tick, the rest in the next ticks.
    """

    def __init__(
        self,
        store: ObjectStore,
        is_powered: Callable[[str], bool],
        *,
        boot_delay: float = 2.0,
        migration_delay: float = 1.0,
        tick: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        max_actions: int = 100,
    ) -> None:
        self.store = store
        self.is_powered = is_powered
        self.boot_delay = boot_delay
        self.migration_delay = migration_delay
        self.clock = clock
        self.max_actions = max_actions
        self.actual: dict[Key, set[str]] = {}
        self.history: list[Recovery] = []
        self.split_brains: list[SplitBrain] = []
        self._lock = threading.RLock()
        self._hosts: dict[Key, tuple[str, str]] = {}  # VM -> (node, node uid) it was put on
        self._starting: dict[Key, Start] = {}  # VM being started -> its new launcher pod
        self._migrations: dict[Key, _Migration] = {}  # by VM
        self._budget = 0
        self._loop = Periodic(self._guarded_tick, tick, "coldstandby-controller")

    # ---- the two truths -----------------------------------------------------------------

    def mark_running(self, namespace: str, name: str, node: str) -> None:
        """Record that the VM's processes run on `node` (if powered): a second node is a split
        brain."""
        with self._lock:
            self._record_host((namespace, name), node)
            self._add_actual((namespace, name), node)

    def running_places(self, namespace: str, name: str) -> set[str]:
        """Where the VM's processes really run now."""
        with self._lock:
            self._reap((namespace, name))
            return set(self.actual.get((namespace, name), ()))

    def violations(self) -> list[str]:
        """Every double run ever seen (also ones over by now), oldest first."""
        with self._lock:
            return [str(s) for s in self.split_brains]

    def _powered(self, node: str) -> bool:
        try:
            return bool(self.is_powered(node))
        except (KeyError, ValueError, TypeError):  # a node the power callable does not know
            return False

    def _reap(self, key: Key) -> None:
        places = self.actual.get(key) or set()
        for node in [n for n in places if not self._powered(n)]:
            places.discard(node)
            log.info("vm %s/%s: its processes on %s died with the power", *key, node)

    def _add_actual(self, key: Key, node: str) -> None:
        if not self._powered(node):
            log.warning("vm %s/%s: node %s has no power: nothing runs there", *key, node)
            return
        self._reap(key)
        places = self.actual.setdefault(key, set())
        if places and node not in places:
            nodes = tuple(sorted(places | {node}))
            brain = SplitBrain(*key, nodes, self.clock(), timestamp(self.store.clock()))
            self.split_brains.append(brain)
            log.error("SPLIT BRAIN: %s", brain)
        places.add(node)

    def _record_host(self, key: Key, node: str) -> None:
        try:
            uid = str(self.store.get("nodes", node)["metadata"]["uid"])
        except NotFound:
            uid = ""
        self._hosts[key] = (node, uid)

    # ---- the loop -----------------------------------------------------------------------

    def tick(self) -> None:
        """One pass: reap dead processes, recover VMs whose pod is gone, start VMs, run Evicts."""
        with self._lock:
            now = self.clock()
            self._budget = self.max_actions
            for key in list(self.actual):
                self._reap(key)
            nodes = {
                n["metadata"]["name"]: n
                for n in self.store.list("nodes")["items"]
                if _dict(n.get("metadata")).get("name")
            }
            vms = self.store.list("virtualmachines")["items"]
            load = _load(vms)
            for start in self._starting.values():
                load[start.node] = load.get(start.node, 0) + 1
            for vm in vms:
                self._guarded(vm, self._check_launcher, vm, now)
            for vm in vms:
                self._guarded(vm, self._start_if_due, vm, nodes, load, now)
            for mig in list(self._migrations.values()):
                where = {"metadata": {"namespace": mig.op[0], "name": mig.op[1]}}
                self._guarded(where, self._progress, mig, nodes, now)
            for op in self.store.list("virtualmachineoperations")["items"]:
                self._guarded(op, self._begin, op, nodes, load, now)
            existing = {_key(v) for v in vms if _dict(v.get("metadata")).get("name")}
            for table in (self.actual, self._starting, self._hosts):
                for key in [k for k in table if k not in existing]:
                    del table[key]  # the VM was deleted: its pods went with it

    def _guarded_tick(self) -> None:
        try:
            self.tick()
        except ApiError:
            raise  # Periodic logs it; the next tick retries
        except Exception:  # an emulator that dies mid-test would hide the test's real failure
            log.exception("coldstandby controller: tick failed")

    def _spend(self) -> bool:
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    def _guarded(self, obj: Obj, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except (ApiError, KeyError, TypeError, ValueError, AttributeError) as exc:
            meta = _dict(obj.get("metadata"))
            name = f"{meta.get('namespace')}/{meta.get('name')}"
            log.warning("coldstandby controller: skipped %s: %r", name, exc)

    def _now(self) -> str:
        return timestamp(self.store.clock())

    def _patch(self, resource: str, key: Key, status: Obj) -> Obj:
        """Merge `status` into the object's status (None removes a field)."""
        return self.store.patch(resource, key[1], {"status": status}, key[0], subresource="status")

    def _launcher_pods(self, key: Key) -> list[tuple[str, str]]:
        """(pod, node) of every launcher pod of the VM."""
        pods = self.store.list("pods", key[0], label_selector=f"{VM_LABEL}={key[1]}")["items"]
        return [(p["metadata"]["name"], str(_dict(p.get("spec")).get("nodeName"))) for p in pods]

    def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.store.delete("pods", name, namespace)
        except NotFound:
            pass

    # ---- node loss: the launcher pod is gone --------------------------------------------

    def _check_launcher(self, vm: Obj, now: float) -> None:
        status = _dict(vm.get("status"))
        host = status.get("nodeName")
        if status.get("phase") not in HOSTED or not host:
            return
        key = _key(vm)
        known = self._hosts.get(key)
        if known is None or known[0] != host:
            self._record_host(key, str(host))  # first sight of a VM someone else placed
            if key not in self.actual:
                self._add_actual(key, str(host))
        why = launcher_lost(self.store, key[0], status)
        if why and self._spend():
            self._lose(vm, str(host), f"launcher pod {why}", now)

    def _lose(self, vm: Obj, host: str, why: str, now: float) -> None:
        key = _key(vm)
        policy = str(_dict(vm.get("spec")).get("runPolicy") or DEFAULT_RUN_POLICY)
        restart = policy in RESTARTED_POLICIES
        mig = self._migrations.pop(key, None)
        if mig is not None:
            self._delete_pod(key[0], mig.target_pod)
            message = "Migration failed because the virtual machine is currently not running."
            self._fail_op(mig.op, OPERATION_FAILED, message, signal_sent=True)
        for pod, node in self._launcher_pods(key):
            if node == host and pod_gone(self.store, key[0], pod):
                self._delete_pod(key[0], pod)  # a Failed pod is cleaned up with its VM run
        self._hosts.pop(key, None)
        self._starting.pop(key, None)
        if restart:
            phase, reason = VmPhase.STARTING, "Starting"
            message = f"{why} on {host}: starting on another node"
        else:
            phase, reason = VmPhase.STOPPED, "VirtualMachineNotRunning"
            message = f"{why} on {host}; runPolicy {policy} keeps it stopped"
        cond = condition("Running", False, reason, message, self._now())
        status: Obj = {"phase": phase.value, "nodeName": None, "virtualMachinePods": []}
        self._patch("virtualmachines", key, {**status, "conditions": [cond]})
        powered = self._powered(host)
        self.history.append(Recovery(*key, policy, host, why, now, restart, powered))
        log.info("vm %s/%s: %s on %s: %s", *key, why, host, phase.value)

    # ---- starting -----------------------------------------------------------------------

    def _start_if_due(
        self, vm: Obj, nodes: dict[str, Obj], load: dict[str, int], now: float
    ) -> None:
        status, spec = _dict(vm.get("status")), _dict(vm.get("spec"))
        if status.get("phase") not in WAITING or status.get("nodeName"):
            return
        if (spec.get("runPolicy") or DEFAULT_RUN_POLICY) not in RESTARTED_POLICIES:
            return
        key = _key(vm)
        start = self._starting.get(key)
        if start is not None and pod_gone(self.store, key[0], start.pod):
            del self._starting[key]  # its new pod went away before it ran: place it again
            start = None
        if start is None:
            if self._spend():
                self._place(vm, key, status, nodes, load)
            return
        ready, problem = disks_ready(self.store, key[0], start.pod)
        if not ready:
            if problem:
                self._say_pending(key, status, problem)
            return
        if start.attached_at is None:
            start.attached_at = now
            if status.get("phase") == VmPhase.PENDING:
                message = f"launcher pod {start.pod} on {start.node}: disks attached, booting"
                cond = condition("Running", False, "Starting", message, self._now())
                phase = VmPhase.STARTING.value
                self._patch("virtualmachines", key, {"phase": phase, "conditions": [cond]})
        if now - start.attached_at < self.boot_delay or not self._spend():
            return
        self._run_on(vm, key, start, now)

    def _place(
        self, vm: Obj, key: Key, status: Obj, nodes: dict[str, Obj], load: dict[str, int]
    ) -> None:
        target = choose_node(eligible_nodes(nodes.values()), load)
        if target is None:
            self._say_pending(key, status, unavailable_message(nodes.values()))
            return
        pod = create_launcher_pod(self.store, vm, target, self._now(), running=False)
        self._starting[key] = Start(pod, target)
        load[target] = load.get(target, 0) + 1
        message = f"launcher pod {pod} on {target}: attaching its disks"
        cond = condition("Running", False, "Starting", message, self._now())
        self._patch("virtualmachines", key, {"phase": VmPhase.STARTING.value, "conditions": [cond]})
        log.info("vm %s/%s: %s", *key, message)

    def _say_pending(self, key: Key, status: Obj, message: str) -> None:
        said = [c.get("message") for c in _conditions(status) if c.get("type") == "Running"]
        if status.get("phase") == VmPhase.PENDING and said == [message]:
            return  # no write per tick
        cond = condition("Running", False, "PodNotStarted", message, self._now())
        self._patch("virtualmachines", key, {"phase": VmPhase.PENDING.value, "conditions": [cond]})
        log.info("vm %s/%s: Pending: %s", *key, message)

    def _run_on(self, vm: Obj, key: Key, start: Start, now: float) -> None:
        stamp = self._now()
        mark_pod_running(self.store, vm, start.pod, stamp)
        ip = str(_dict(vm.get("status")).get("ipAddress") or "")
        self._patch("virtualmachines", key, running_status(start.node, ip, start.pod, stamp))
        del self._starting[key]
        self._record_host(key, start.node)
        self._add_actual(key, start.node)
        for rec in reversed(self.history):
            if (rec.namespace, rec.name) == key and rec.running_at is None:
                rec.running_at, rec.new_node = now, start.node
                break
        log.info("vm %s/%s: Running on %s", *key, start.node)

    # ---- Evict --------------------------------------------------------------------------

    def _begin(self, op: Obj, nodes: dict[str, Obj], load: dict[str, int], now: float) -> None:
        status, spec = _dict(op.get("status")), _dict(op.get("spec"))
        if status.get("phase") in FINAL_OP_PHASES:
            return
        key = _key(op)
        vm_key = (key[0], str(spec.get("virtualMachineName") or ""))
        mig = self._migrations.get(vm_key)
        if mig is not None and mig.op == key:
            return  # ours, in progress
        if status.get("phase") == "InProgress":
            if self._spend():  # begun by a controller that is gone: nobody will finish it
                self._fail_op(key, OPERATION_FAILED, "the controller lost track of it")
            return
        if not self._spend():
            return
        op_type = spec.get("type")
        if op_type not in EVICT_TYPES:
            message = f"hwsim's controller performs only Evict and Migrate, not {op_type}"
            self._fail_op(key, OPERATION_FAILED, message)
            return
        try:
            vm = self.store.get("virtualmachines", vm_key[1], vm_key[0])
        except NotFound:
            self._fail_op(key, NOT_FOUND, "VirtualMachine not found")
            return
        vm_status = _dict(vm.get("status"))
        phase, source = vm_status.get("phase") or "", str(vm_status.get("nodeName") or "")
        if mig is not None:
            message = (
                "VMOP cannot be executed now. Previously created operation should finish first."
            )
            self._fail_op(key, NOT_READY_TO_EXECUTE, message)
            return
        if phase != VmPhase.RUNNING or not source:
            message = (
                f"Operation type {op_type} is not applicable for VirtualMachine in phase {phase}"
            )
            self._fail_op(key, NOT_APPLICABLE_PHASE, message)
            return
        if _dict(vm.get("spec")).get("liveMigrationPolicy") == "Never":
            message = "Operation is invalid: the VirtualMachine's liveMigrationPolicy is Never"
            self._fail_op(key, NOT_APPLICABLE_POLICY, message)
            return
        migratable = [c for c in _conditions(vm_status) if c.get("type") == "Migratable"]
        if migratable and migratable[0].get("status") == "False":  # e.g. a local disk
            message = "VirtualMachine is not migratable, cannot be processed."
            self._fail_op(key, OPERATION_FAILED, message)
            return
        candidates = [n for n in eligible_nodes(nodes.values()) if n != source]
        target = choose_node(candidates, load)
        if target is None:
            message = unavailable_message(nodes.values(), excluded=source)
            self._fail_op(key, TARGET_UNSCHEDULABLE, message)
            return
        stamp = self._now()
        listed = [p for p in vm_status.get("virtualMachinePods") or [] if isinstance(p, dict)]
        on_source = [n for n, host in self._launcher_pods(vm_key) if host == source]
        source_pod = next((str(p["name"]) for p in listed if p.get("active")), "")
        source_pod = source_pod or (on_source[0] if on_source else "")
        target_pod = create_launcher_pod(self.store, vm, target, stamp)
        load[target] = load.get(target, 0) + 1
        uid = str(nodes[target]["metadata"].get("uid", ""))
        self._migrations[vm_key] = _Migration(
            key, vm_key, source, source_pod, target, uid, target_pod, now + self.migration_delay
        )
        migration_state = {
            "startTimestamp": stamp,
            "source": {"node": source, "pod": source_pod},
            "target": {"node": target, "pod": target_pod},
        }
        vm_pods = [{"name": source_pod, "active": True}, {"name": target_pod, "active": False}]
        conditions = [c for c in _conditions(vm_status) if c.get("type") != "Migrating"]
        conditions.append(condition("Migrating", True, "VirtualMachineMigrating", "", stamp))
        self._patch(
            "virtualmachines",
            vm_key,
            {
                "phase": VmPhase.MIGRATING.value,
                "virtualMachinePods": vm_pods,
                "migrationState": migration_state,
                "conditions": conditions,
            },
        )
        message = "Syncing source and target"
        self._op_status(key, "InProgress", False, MIGRATION_RUNNING, message, signal_sent=True)
        log.info("vmop %s/%s: migrating %s from %s to %s", *key, vm_key[1], source, target)

    def _progress(self, mig: _Migration, nodes: dict[str, Obj], now: float) -> None:
        try:
            vm = self.store.get("virtualmachines", mig.vm[1], mig.vm[0])
        except NotFound:
            del self._migrations[mig.vm]
            self._fail_op(mig.op, NOT_FOUND, "VirtualMachine not found", signal_sent=True)
            return
        node = nodes.get(mig.target)
        if (
            node is None
            or is_out_of_service(node)
            or str(node["metadata"].get("uid", "")) != mig.target_uid
            or not self._powered(mig.target)
        ):
            self._abort(mig, vm, f"Migration failed: target node {mig.target} was lost")
            return
        if now < mig.due or not self._spend():
            return
        self._reap(mig.vm)
        if mig.source not in self.actual.get(mig.vm, set()):
            self._abort(mig, vm, f"Migration failed: the VM no longer runs on {mig.source}")
            return
        del self._migrations[mig.vm]
        stamp = self._now()
        vm_status = _dict(vm.get("status"))
        self._delete_pod(mig.vm[0], mig.source_pod)
        ip = str(vm_status.get("ipAddress") or "")
        status = running_status(mig.target, ip, mig.target_pod, stamp)
        status["stats"] = vm_status.get("stats") or status["stats"]  # a migration is no restart
        status["migrationState"] = {
            **_dict(vm_status.get("migrationState")),
            "endTimestamp": stamp,
            "result": "Succeeded",
        }
        self._patch("virtualmachines", mig.vm, status)
        self.actual.get(mig.vm, set()).discard(mig.source)  # moved, not copied
        self._add_actual(mig.vm, mig.target)
        self._record_host(mig.vm, mig.target)
        self._op_status(mig.op, "Completed", True, MIGRATION_COMPLETED, "", signal_sent=True)
        log.info("vm %s/%s: migrated from %s to %s", *mig.vm, mig.source, mig.target)

    def _abort(self, mig: _Migration, vm: Obj, message: str) -> None:
        """Give up a migration: the VM stays Running where it was, the operation fails."""
        del self._migrations[mig.vm]
        self._delete_pod(mig.vm[0], mig.target_pod)
        vm_status = _dict(vm.get("status"))
        conditions = [c for c in _conditions(vm_status) if c.get("type") != "Migrating"]
        migration_state = {
            **_dict(vm_status.get("migrationState")),
            "endTimestamp": self._now(),
            "result": "Failed",
        }
        self._patch(
            "virtualmachines",
            mig.vm,
            {
                "phase": VmPhase.RUNNING.value,
                "virtualMachinePods": [{"name": mig.source_pod, "active": True}],
                "conditions": conditions,
                "migrationState": migration_state,
            },
        )
        self._fail_op(mig.op, OPERATION_FAILED, message, signal_sent=True)

    def _fail_op(self, key: Key, reason: str, message: str, signal_sent: bool = False) -> None:
        self._op_status(key, "Failed", False, reason, message, signal_sent)
        log.warning("vmop %s/%s: Failed: %s: %s", *key, reason, message)

    def _op_status(
        self, key: Key, phase: str, done: bool, reason: str, message: str, signal_sent: bool
    ) -> None:
        stamp = self._now()
        conditions = [condition("Completed", done, reason, message, stamp)]
        if signal_sent:
            conditions.append(condition("SignalSent", True, "SignalSentSuccess", "", stamp))
        self._patch("virtualmachineoperations", key, {"phase": phase, "conditions": conditions})

    # ---- running ------------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Run `tick()` every `tick` seconds in a daemon thread."""
        self._loop.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the thread (idempotent)."""
        self._loop.stop_thread()


def _dict(value: Any) -> Obj:
    """`value` if it is a mapping, else {} (objects in the store follow no schema)."""
    return value if isinstance(value, dict) else {}


def _conditions(status: Obj) -> list[Obj]:
    found = status.get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))


def _load(vms: list[Obj]) -> dict[str, int]:
    load: dict[str, int] = {}
    for vm in vms:
        node = _dict(vm.get("status")).get("nodeName")
        if isinstance(node, str) and node:
            load[node] = load.get(node, 0) + 1
    return load
