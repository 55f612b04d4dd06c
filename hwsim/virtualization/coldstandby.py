"""`ColdStandbyController`: the virtualization controller's node-failure and Evict behaviour.

It keeps two truths per VM. The API objects (VirtualMachine `status.phase`/`nodeName`, the
launcher Pod) are what the real controller believes. `actual` is where the hypervisor processes
really run: they die at once when a node's machine loses power (while the API still says
Running: the real controller cannot know), and they keep running on a node that is only cut off
from the network. So when a Node is deleted (or tainted `node.kubernetes.io/out-of-service` with
NoExecute) while its machine is still on, the VM restarted elsewhere runs twice, and
`violations()` says so: the split brain that fencing exists to prevent.

As Deckhouse Virtualization behaves (ColdStandby), see `nodefence.hwsim.virtualization.vm_start`:
- a Running VM whose launcher pod is gone (deleted, or Failed after its node rebooted) is lost:
  with runPolicy `AlwaysOn`/`AlwaysOnUnlessStoppedManually` it goes `Starting`: a new launcher
  pod on the least-loaded eligible node (Ready, schedulable, no NoSchedule/NoExecute taint),
  which starts once its disk (a ReadWriteOnce PVC) is attached there and `boot_delay` has
  passed; meanwhile the VM is `Pending` with the attach/detach controller's reason (a
  "Multi-Attach error" while the disk is still attached to the old node), or with the
  scheduler's reason while no node is eligible. VMs with other policies go `Stopped`. A Node
  that is deleted, NotReady or tainted changes nothing by itself: its pods stay until PodGC,
  the taint manager or a fencer removes them (`nodefence.hwsim.kube.podgc`).
- VirtualMachineOperation `Evict` (or deprecated `Migrate`): run by
  `nodefence.hwsim.virtualization.migrations` as the real controller does (queued under the
  migration limits, the target chosen by capacity, phases, reasons and `status.progress`,
  `liveMigrationPolicy` and `spec.force`, timeouts); a live migration moves the processes: it never
  runs a VM twice. The admission webhooks (one unfinished operation per VM, local disks in CE,
  KubeVirt's launcher-pod eviction interceptor) are `nodefence.hwsim.virtualization.vm_admission`,
  installed on the store with the controller.

Where a VM may run is `nodefence.hwsim.virtualization.coldstandby_nodes`; what is recorded,
`nodefence.hwsim.virtualization.coldstandby_records`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodefence.hwsim.kube.errors import ApiError, NotFound
from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.periodic import Periodic
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.virtualization.coldstandby_nodes import (
    choose_node,
    conditions_of,
    eligible_nodes,
    load_of,
    mapping_of,
    unavailable_message,
    why_unschedulable,
)
from nodefence.hwsim.virtualization.coldstandby_records import Recovery, SplitBrain
from nodefence.hwsim.virtualization.vm_start import Start, disks_ready, launcher_lost, pod_gone
from nodefence.hwsim.virtualization.vms import (
    DEFAULT_RUN_POLICY,
    RESTARTED_POLICIES,
    VM_LABEL,
    VmPhase,
    condition,
    create_launcher_pod,
    mark_pod_running,
    running_status,
)

if TYPE_CHECKING:
    from nodefence.hwsim.virtualization.migration_state import MigrationLimits

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]
HOSTED = (VmPhase.RUNNING.value, VmPhase.MIGRATING.value)
WAITING = (VmPhase.STARTING.value, VmPhase.PENDING.value)


class ColdStandbyController:
    """The emulated virtualization controller; `tick()` directly or `start_in_thread()`.

    `is_powered(node)` says whether that node's machine has power (a KeyError counts as no).
    Times (`boot_delay`, `migration_delay`, the `history`) are on `clock`; at most `max_actions`
    VMs, operations and pods are acted on per tick, the rest in the next ticks. `edition` (`CE`,
    `EE`), `limits`, `prepare_timeout` and `progress_timeout` are those of
    `nodefence.hwsim.virtualization.migrations` and `nodefence.hwsim.virtualization.vm_admission`.
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
        edition: str = "CE",
        limits: MigrationLimits | None = None,
        prepare_timeout: float = 300.0,
        progress_timeout: float = 150.0,
    ) -> None:
        from nodefence.hwsim.virtualization.migrations import (
            MigrationController,  # it builds on this module
        )
        from nodefence.hwsim.virtualization.vm_admission import VirtualizationWebhooks

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
        self._budget = 0
        self._loop = Periodic(self._guarded_tick, tick, "coldstandby-controller")
        self.migrations = MigrationController(
            self,
            clock,
            limits=limits,
            prepare_timeout=prepare_timeout,
            progress_timeout=progress_timeout,
        )
        self.webhooks = VirtualizationWebhooks(store, edition)
        self.webhooks.install()

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

    def power_lost(self, node: str) -> None:
        """`node`'s machine lost power just now: every VM process there died, even if the
        power is back before the next look (a power cycle)."""
        with self._lock:
            for key, places in self.actual.items():
                if node in places:
                    places.discard(node)
                    log.info("vm %s/%s: its processes on %s died with the power", *key, node)

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
                if mapping_of(n.get("metadata")).get("name")
            }
            vms = self.store.list("virtualmachines")["items"]
            load = load_of(vms)
            for start in self._starting.values():
                load[start.node] = load.get(start.node, 0) + 1
            for vm in vms:
                self._guarded(vm, self._check_launcher, vm, now)
            for vm in vms:
                self._guarded(vm, self._start_if_due, vm, nodes, load, now)
            self.migrations.tick(
                nodes,
                vms,
                load,
                now,
                lambda n: eligible_nodes(n.values()),
                why_unschedulable,
            )
            existing = {_key(v) for v in vms if mapping_of(v.get("metadata")).get("name")}
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
            meta = mapping_of(obj.get("metadata"))
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
        return [
            (p["metadata"]["name"], str(mapping_of(p.get("spec")).get("nodeName"))) for p in pods
        ]

    def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.store.delete("pods", name, namespace)
        except NotFound:
            pass

    # ---- node loss: the launcher pod is gone --------------------------------------------

    def _check_launcher(self, vm: Obj, now: float) -> None:
        status = mapping_of(vm.get("status"))
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
        policy = str(mapping_of(vm.get("spec")).get("runPolicy") or DEFAULT_RUN_POLICY)
        restart = policy in RESTARTED_POLICIES
        self.migrations.lose(key)
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
        status, spec = mapping_of(vm.get("status")), mapping_of(vm.get("spec"))
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
        said = [c.get("message") for c in conditions_of(status) if c.get("type") == "Running"]
        if status.get("phase") == VmPhase.PENDING and said == [message]:
            return  # no write per tick
        cond = condition("Running", False, "PodNotStarted", message, self._now())
        self._patch("virtualmachines", key, {"phase": VmPhase.PENDING.value, "conditions": [cond]})
        log.info("vm %s/%s: Pending: %s", *key, message)

    def _run_on(self, vm: Obj, key: Key, start: Start, now: float) -> None:
        stamp = self._now()
        mark_pod_running(self.store, vm, start.pod, stamp)
        ip = str(mapping_of(vm.get("status")).get("ipAddress") or "")
        self._patch("virtualmachines", key, running_status(start.node, ip, start.pod, stamp))
        del self._starting[key]
        self._record_host(key, start.node)
        self._add_actual(key, start.node)
        for rec in reversed(self.history):
            if (rec.namespace, rec.name) == key and rec.running_at is None:
                rec.running_at, rec.new_node = now, start.node
                break
        log.info("vm %s/%s: Running on %s", *key, start.node)

    # ---- for nodefence.hwsim.virtualization.migrations (its MigrationHost)
    # ------------------------------------------

    def powered(self, node: str) -> bool:
        """The node's machine has power."""
        return self._powered(node)

    def stamp(self) -> str:
        """Now, as an API timestamp."""
        return self._now()

    def spend(self) -> bool:
        """Take one action from this tick's budget (False: none left)."""
        return self._spend()

    def launcher_pods(self, key: Key) -> list[tuple[str, str]]:
        """(pod, node) of every launcher pod of the VM."""
        return self._launcher_pods(key)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (gone already is fine)."""
        self._delete_pod(namespace, name)

    def runs_on(self, key: Key, node: str) -> bool:
        """The VM's processes really run on `node` now."""
        self._reap(key)
        return node in self.actual.get(key, set())

    def moved(self, key: Key, source: str, target: str) -> None:
        """A live migration moved the VM's processes (never copied)."""
        self.actual.get(key, set()).discard(source)
        self._add_actual(key, target)
        self._record_host(key, target)

    # ---- running ------------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Run `tick()` every `tick` seconds in a daemon thread."""
        self._loop.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the thread (idempotent)."""
        self._loop.stop_thread()


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))
