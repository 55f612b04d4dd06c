"""`KubevirtController`: upstream KubeVirt's virt-controller and virt-handler, for what fencing
and maintenance meet, with the two truths of `nodefence.hwsim.virtualization.coldstandby` (the API;
`actual`, where the processes run).

- The VM controller (`pkg/virt-controller/watch/vm`) keeps one VirtualMachineInstance per
  VirtualMachine as its runStrategy says: Always creates one whenever there is none and deletes
  a finished one (so it starts again); RerunOnFailure does so after a Failed instance only;
  Manual and Once leave a finished instance alone; Halted deletes a running one. Its status
  (`printableStatus`, `ready`, `created`) follows the instance.
- An instance goes Pending -> Scheduling (its virt-launcher pod is created on the least-loaded
  eligible node; none: it stays Pending, its PodScheduled condition Unschedulable in the
  scheduler's words) -> Scheduled (every disk attached there: a ReadWriteOnce disk still
  attached to the old node waits, the attach/detach controller's "Multi-Attach error") ->
  Running after `boot_delay`, when its processes start (`actual`). Its LiveMigratable condition
  says whether it can migrate (virt-handler's `DisksNotLiveMigratable` for a disk that is not
  ReadWriteMany).
- A Running instance whose launcher pod is gone, or Failed (its node rebooted), goes Failed
  (`lifecycle.go`: "pod does not exist"); its processes keep running where they ran if that
  machine still has power: KubeVirt cannot know. A launcher pod deleted gracefully on a node
  whose kubelet is alive shuts the guest down: the instance Succeeded, its processes end. A
  node that dies changes nothing by itself: its pods stay until PodGC, the taint manager or a
  fencer removes them. (KubeVirt's own node controller fails instances without a live pod
  once virt-handler's heartbeat is 5 minutes old; the pods of a dead node stay, so it changes
  nothing either.)
- Migrations and evacuations: `nodefence.hwsim.kubevirt.migrations`; virt-api's webhooks:
  `nodefence.hwsim.kubevirt.admission`, installed on the store with the controller.

Its statuses are built by `nodefence.hwsim.kubevirt.status` (pure).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from nodefence.hwsim.kube.errors import ApiError, NotFound
from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.periodic import Periodic
from nodefence.hwsim.kube.pods import is_terminal
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kubevirt.objects import (
    APP_LABEL,
    FINAL,
    RESTARTED,
    VM,
    VMI,
    condition,
    launcher_pod,
    mark_pod_running,
    not_shared,
    vmi_for,
)
from nodefence.hwsim.kubevirt.status import (
    run_strategy,
    running_vmi_status,
    vm_status,
    vmi_conditions,
    with_phase,
)
from nodefence.hwsim.virtualization.coldstandby_nodes import (
    choose_node,
    eligible_nodes,
    mapping_of,
    unavailable_message,
)
from nodefence.hwsim.virtualization.coldstandby_records import Recovery
from nodefence.hwsim.virtualization.vm_start import Start, disks_ready
from nodefence.hwsim.virtualization.vm_truth import ProcessTruth

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))


class KubevirtController:
    """The emulated KubeVirt; `tick()` directly or `start_in_thread()`.

    `is_powered(node)`: the node's machine has power; `kubelet_alive(node)`: its kubelet
    reaches the API (powered and not cut off; default: powered), so a graceful pod deletion
    completes there. Times are on `clock`; at most `max_actions` objects are acted on per tick.
    """

    def __init__(
        self,
        store: ObjectStore,
        is_powered: Callable[[str], bool],
        *,
        kubelet_alive: Callable[[str], bool] | None = None,
        boot_delay: float = 2.0,
        migration_delay: float = 1.0,
        tick: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        max_actions: int = 100,
        unschedulable_timeout: float = 300.0,
        progress_timeout: float = 150.0,
    ) -> None:
        from nodefence.hwsim.kubevirt.admission import KubevirtWebhooks
        from nodefence.hwsim.kubevirt.migrations import KubevirtMigrations

        self.store = store
        self.boot_delay = boot_delay
        self.migration_delay = migration_delay
        self.clock = clock
        self.max_actions = max_actions
        self.truth = ProcessTruth(is_powered, clock, store.clock, "kubevirt vm")
        self.actual = self.truth.actual
        self.kubelet_alive = kubelet_alive or self.truth.powered
        self.history: list[Recovery] = []
        self._starting: dict[Key, Start] = {}
        self._rerun: set[Key] = set()  # RerunOnFailure VMs to start again (a start request)
        self._shown: dict[Key, Obj] = {}
        self._budget = 0
        self._lock = threading.RLock()
        self._loop = Periodic(self._guarded_tick, tick, "kubevirt-controller")
        self.migrations = KubevirtMigrations(
            self, unschedulable_timeout=unschedulable_timeout, progress_timeout=progress_timeout
        )
        self.webhooks = KubevirtWebhooks(store)
        self.webhooks.install()

    # ---- the truth, as `nodefence.hwsim.virtualization.coldstandby.ColdStandbyController` offers
    # it -----------------

    def mark_running(self, namespace: str, name: str, node: str) -> None:
        """Record that the VM's processes run on `node` (if powered)."""
        with self._lock:
            self.truth.add((namespace, name), node)

    def running_places(self, namespace: str, name: str) -> set[str]:
        """Where the VM's processes really run now."""
        with self._lock:
            return self.truth.places((namespace, name))

    def violations(self) -> list[str]:
        """Every double run ever seen (also ones over by now), oldest first."""
        with self._lock:
            return self.truth.violations()

    def powered(self, node: str) -> bool:
        """The node's machine has power."""
        return self.truth.powered(node)

    def stamp(self) -> str:
        """Now, as an API timestamp."""
        return timestamp(self.store.clock())

    def spend(self) -> bool:
        """Take one action from this tick's budget (False: none left)."""
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    # ---- the loop -----------------------------------------------------------------------

    def tick(self) -> None:
        """One pass: instances, then VMs, then migrations."""
        with self._lock:
            now = self.clock()
            self._budget = self.max_actions
            for key in list(self.actual):
                self.truth.reap(key)
            nodes = {
                n["metadata"]["name"]: n
                for n in self.store.list("nodes")["items"]
                if mapping_of(n.get("metadata")).get("name")
            }
            vmis = {_key(v): v for v in self.store.list(VMI)["items"]}
            pods = self.store.list("pods", label_selector=f"{APP_LABEL}=virt-launcher")["items"]
            by_uid = {str(p["metadata"].get("uid")): p for p in pods}
            load: dict[str, int] = {}
            for v in vmis.values():
                node = mapping_of(v.get("status")).get("nodeName")
                if node and mapping_of(v.get("status")).get("phase") not in FINAL:
                    load[str(node)] = load.get(str(node), 0) + 1
            for start in self._starting.values():
                load[start.node] = load.get(start.node, 0) + 1
            for key, vmi in vmis.items():
                self._guarded(key, self._sync_vmi, key, vmi, by_uid, nodes, load, now)
            vmis = {_key(v): v for v in self.store.list(VMI)["items"]}
            for vm in self.store.list(VM)["items"]:
                key = _key(vm)
                self._guarded(key, self._sync_vm, key, vm, vmis.get(key), now)
            self.migrations.tick(nodes, load, now)
            # An instance deleted (its VM restarts it, or stops it) does not end processes
            # that run on a cut-off node: they are forgotten only with the VM itself.
            vms = {_key(vm) for vm in self.store.list(VM)["items"]}
            self.truth.keep_only(vms | set(vmis))
            for key in [k for k in self._starting if k not in vmis]:
                del self._starting[key]

    def _guarded_tick(self) -> None:
        try:
            self.tick()
        except ApiError:
            raise  # Periodic logs it; the next tick retries
        except Exception:  # an emulator that dies mid-test would hide the test's real failure
            log.exception("kubevirt controller: tick failed")

    def _guarded(self, key: Key, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except (ApiError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("kubevirt controller: skipped %s/%s: %r", *key, exc)

    def _write_vmi(self, vmi: Obj, status: Obj) -> None:
        """Write an instance's status (no status subresource: with the object)."""
        vmi = {**vmi, "status": status}
        self.store.update(VMI, vmi, vmi["metadata"]["namespace"])

    # ---- instances --------------------------------------------------------------------------

    def _sync_vmi(
        self,
        key: Key,
        vmi: Obj,
        pods: dict[str, Obj],
        nodes: dict[str, Obj],
        load: dict[str, int],
        now: float,
    ) -> None:
        phase = mapping_of(vmi.get("status")).get("phase") or "Pending"
        if phase == "Pending":
            self._schedule(key, vmi, nodes, load)
        elif phase == "Scheduling":
            self._attach(key, vmi, now)
        elif phase == "Scheduled":
            self._boot(key, vmi, now)
        elif phase == "Running":
            self._watch(key, vmi, pods, now)

    def _schedule(self, key: Key, vmi: Obj, nodes: dict[str, Obj], load: dict[str, int]) -> None:
        if not self.spend():
            return
        status = mapping_of(vmi.get("status"))
        target = choose_node(eligible_nodes(nodes.values()), load)
        if target is None:
            message = unavailable_message(nodes.values())
            said = [
                c.get("message") for c in vmi_conditions(vmi) if c.get("type") == "PodScheduled"
            ]
            if said != [message]:
                cond = condition("PodScheduled", False, "Unschedulable", message, self.stamp())
                self._write_vmi(vmi, {**status, "phase": "Pending", "conditions": [cond]})
            return
        pod = self.store.create("pods", launcher_pod(vmi, target))
        self._starting[key] = Start(str(pod["metadata"]["name"]), target)
        load[target] = load.get(target, 0) + 1
        self._write_vmi(vmi, {**with_phase(status, "Scheduling", self.stamp()), "conditions": []})
        log.info("kubevirt vmi %s/%s: launcher pod %s on %s", *key, pod["metadata"]["name"], target)

    def _attach(self, key: Key, vmi: Obj, now: float) -> None:
        start = self._starting.get(key)
        if start is None:  # begun by a controller that is gone: nobody will finish it
            self._fail(key, vmi, "", "its launcher pod is not known", now)
            return
        try:
            pod = self.store.get("pods", start.pod, key[0])
        except NotFound:
            pod = None
        if pod is None or is_terminal(pod) or pod["metadata"].get("deletionTimestamp"):
            self._fail(key, vmi, "", "pod does not exist (during scheduling)", now)
            return
        ready, _ = disks_ready(self.store, key[0], start.pod)
        if not ready or not self.spend():
            return
        stamp = self.stamp()
        mark_pod_running(self.store, key[0], start.pod, "", stamp)
        start.attached_at = now
        status = with_phase(mapping_of(vmi.get("status")), "Scheduled", stamp)
        status.update({"nodeName": start.node, "activePods": {pod["metadata"]["uid"]: start.node}})
        self._write_vmi(vmi, status)

    def _boot(self, key: Key, vmi: Obj, now: float) -> None:
        start = self._starting.get(key)
        if start is None or start.attached_at is None:
            self._fail(key, vmi, "", "its launcher pod is not known", now)
            return
        if now - start.attached_at < self.boot_delay or not self.spend():
            return
        try:
            pod = self.store.get("pods", start.pod, key[0])
        except NotFound:
            self._fail(key, vmi, start.node, "pod does not exist", now)
            return
        ip = f"10.67.200.{zlib.crc32('/'.join(key).encode()) % 250 + 2}"
        status = running_vmi_status(
            vmi,
            start.node,
            start.pod,
            str(pod["metadata"]["uid"]),
            ip,
            not_shared(self.store, vmi),
            self.stamp(),
        )
        self._write_vmi(vmi, status)
        del self._starting[key]
        self.truth.add(key, start.node)
        for rec in reversed(self.history):
            if (rec.namespace, rec.name) == key and rec.running_at is None:
                rec.running_at, rec.new_node = now, start.node
                break
        log.info("kubevirt vmi %s/%s: Running on %s", *key, start.node)

    def _active_pod(self, vmi: Obj, pods: dict[str, Obj]) -> Obj | None:
        status = mapping_of(vmi.get("status"))
        node = status.get("nodeName")
        for uid, where in mapping_of(status.get("activePods")).items():
            pod = pods.get(str(uid))
            if where == node and pod is not None:
                return pod
        return None

    def _watch(self, key: Key, vmi: Obj, pods: dict[str, Obj], now: float) -> None:
        node = str(mapping_of(vmi.get("status")).get("nodeName") or "")
        pod = self._active_pod(vmi, pods)
        if pod is None:
            if self.spend():
                self._fail(key, vmi, node, "pod does not exist", now)
            return
        if is_terminal(pod):
            if self.spend():
                phase = mapping_of(pod.get("status")).get("phase")
                self._fail(key, vmi, node, f"launcher pod {phase}", now)
            return
        # Deleted gracefully where a kubelet stops it: the guest is shut down.
        graceful = pod["metadata"].get("deletionTimestamp") and self.kubelet_alive(node)
        if graceful and self.spend():
            self._shut_down(key, vmi, node, now)

    def _fail(self, key: Key, vmi: Obj, node: str, why: str, now: float) -> None:
        status = with_phase(mapping_of(vmi.get("status")), "Failed", self.stamp())
        status["conditions"] = [condition("Ready", False, "PodNotExists", why, self.stamp())]
        self._write_vmi(vmi, status)
        self._starting.pop(key, None)
        self.migrations.lose(key)
        if node:
            self._record_loss(key, node, why, now, failed=True)
        log.info("kubevirt vmi %s/%s: Failed on %s: %s", *key, node or "-", why)

    def _shut_down(self, key: Key, vmi: Obj, node: str, now: float) -> None:
        status = with_phase(mapping_of(vmi.get("status")), "Succeeded", self.stamp())
        status["conditions"] = [
            condition("Ready", False, "PodTerminating", "the guest was shut down", self.stamp())
        ]
        self._write_vmi(vmi, status)
        self.truth.stop(key, node)
        self.migrations.lose(key)
        self._record_loss(key, node, "shut down: its launcher pod was deleted", now, failed=False)
        log.info("kubevirt vmi %s/%s: shut down on %s (launcher pod deleted)", *key, node)

    def _record_loss(self, key: Key, node: str, why: str, now: float, failed: bool) -> None:
        try:
            vm = self.store.get(VM, key[1], key[0])
        except NotFound:
            return  # an instance without a VirtualMachine: nothing restarts it
        strategy = run_strategy(vm)
        restart = strategy == "Always" or (strategy == "RerunOnFailure" and failed)
        self.history.append(
            Recovery(*key, strategy, node, why, now, restart, self.truth.powered(node))
        )

    # ---- VirtualMachines -------------------------------------------------------------------

    def _sync_vm(self, key: Key, vm: Obj, vmi: Obj | None, now: float) -> None:
        strategy = run_strategy(vm)
        phase = mapping_of((vmi or {}).get("status")).get("phase")
        if vmi is not None and phase in FINAL:
            restart = strategy == "Always" or (strategy == "RerunOnFailure" and phase == "Failed")
            if strategy in RESTARTED and self.spend():
                self._delete_vmi(key)
                if restart:
                    self._rerun.add(key)
                vmi = None
        elif vmi is not None and strategy == "Halted" and self.spend():
            node = str(mapping_of(vmi.get("status")).get("nodeName") or "")
            if node and self.kubelet_alive(node):
                self.truth.stop(key, node)
            self._delete_vmi(key)
            vmi = None
        elif vmi is None and self._wants_start(key, strategy) and self.spend():
            vmi = self.store.create(VMI, vmi_for(vm, self.stamp()), key[0])
            self._rerun.discard(key)
            log.info("kubevirt vm %s/%s: instance created (runStrategy %s)", *key, strategy)
        status = vm_status(vm, vmi, self.stamp())
        said = {k: v for k, v in mapping_of(vm.get("status")).items() if k != "conditions"}
        if {k: v for k, v in status.items() if k != "conditions"} != said:
            self.store.patch(VM, key[1], {"status": status}, key[0], subresource="status")

    def _wants_start(self, key: Key, strategy: str) -> bool:
        if strategy == "Always":
            return True
        return strategy == "RerunOnFailure" and key in self._rerun

    def _delete_vmi(self, key: Key) -> None:
        try:
            self.store.delete(VMI, key[1], key[0])
        except NotFound:
            pass

    # ---- running ------------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Run `tick()` every `tick` seconds in a daemon thread."""
        self._loop.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the thread (idempotent)."""
        self._loop.stop_thread()
