"""KubeVirt's live migrations (VirtualMachineInstanceMigration) and evacuations, as
`pkg/virt-controller/watch/migration` and `watch/drain/evacuation` run them, for
`nodefence.hwsim.kubevirt.controller.KubevirtController`.

A migration goes through upstream's phases: Pending (queued while `parallelMigrationsPerCluster`
(5) or `parallelOutboundMigrationsPerNode` (2) are reached) -> Scheduling (its target pod, on the
least-loaded eligible node; where none is, the pod stays Pending, Unschedulable in the
scheduler's words, and after `unschedulable_timeout` (KubeVirt's 5 minutes) it is deleted and
the migration fails) -> Scheduled (the target pod runs: its disks attached) -> PreparingTarget
-> TargetReady -> Running (the instance's `status.migrationState` names source and target) ->
Succeeded (the instance runs on the target; its processes moved, never copied) or Failed, with
`migrationState.failureReason` where virt-handler would set one and a Warning Event
`FailedMigration` in the controller's words. A source node that is not Ready, or has no power,
makes no progress; `progress_timeout` (150 s) without any aborts it. A migration whose object
is deleted is aborted.

Evacuation: an instance marked by the eviction webhook (`status.evacuationNodeName`, see
`nodefence.hwsim.kubevirt.admission`) gets a migration `kubevirt-evacuation-<random>` unless one is
under way; the mark goes once it runs elsewhere.

Its bookkeeping is `nodefence.hwsim.kubevirt.migration_state`; its writes,
`nodefence.hwsim.kubevirt.migration_status`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nodefence.hwsim.kube.errors import ApiError, NotFound
from nodefence.hwsim.kubevirt.migration_state import (
    EVACUATION_ANNOTATION,
    OUTBOUND_PER_NODE,
    PER_CLUSTER,
    UNFINISHED,
    Key,
    Migration,
    Obj,
    Stage,
)
from nodefence.hwsim.kubevirt.migration_status import MigrationWriter
from nodefence.hwsim.kubevirt.objects import (
    FINAL,
    MIGRATION_VMI_LABEL,
    VMI,
    VMIM,
    launcher_pod,
    mark_pod_running,
)
from nodefence.hwsim.virtualization.coldstandby_nodes import (
    eligible_nodes,
    is_out_of_service,
    unavailable_message,
)
from nodefence.hwsim.virtualization.vm_start import disks_ready, pod_gone

if TYPE_CHECKING:
    from nodefence.hwsim.kubevirt.controller import KubevirtController

log = logging.getLogger(__name__)


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _key(obj: Obj) -> Key:
    return (str(obj["metadata"]["namespace"]), str(obj["metadata"]["name"]))


def _ready(node: Obj | None) -> bool:
    conditions = _dict((node or {}).get("status")).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class KubevirtMigrations(MigrationWriter):
    """Runs the VirtualMachineInstanceMigrations of `host`; `tick()` once per pass."""

    def __init__(
        self,
        host: KubevirtController,
        *,
        unschedulable_timeout: float = 300.0,
        progress_timeout: float = 150.0,
    ) -> None:
        self.host = host
        self.store = host.store
        self.unschedulable_timeout = unschedulable_timeout
        self.progress_timeout = progress_timeout
        self.active: dict[Key, Migration] = {}  # by instance

    # ---- the loop -----------------------------------------------------------------------

    def tick(self, nodes: dict[str, Obj], load: dict[str, int], now: float) -> None:
        """Evacuate, accept new migrations, advance every one."""
        ops = self.store.list(VMIM)["items"]
        vmis = {_key(v): v for v in self.store.list(VMI)["items"]}
        for vmi in vmis.values():
            self._guarded(_key(vmi), self._evacuate, vmi, ops)
        present = {_key(o) for o in ops}
        for op in ops:
            self._guarded(_key(op), self._accept, op, vmis, now)
        for mig in list(self.active.values()):
            self._guarded(mig.op, self._advance, mig, nodes, load, present, now)

    def _guarded(self, key: Key, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except (ApiError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("kubevirt migrations: skipped %s/%s: %r", *key, exc)

    def lose(self, vmi: Key) -> None:
        """The instance stopped or failed under a migration: it fails."""
        mig = self.active.pop(vmi, None)
        if mig is None:
            return
        if mig.target_pod:
            self._delete_pod(mig.vmi[0], mig.target_pod)
        self._fail(mig.op, "Migration failed vmi shutdown during migration.", "")

    # ---- evacuation ---------------------------------------------------------------------

    def _evacuate(self, vmi: Obj, ops: list[Obj]) -> None:
        status = _dict(vmi.get("status"))
        mark, node = status.get("evacuationNodeName"), status.get("nodeName")
        if not mark:
            return
        key = _key(vmi)
        if mark != node or status.get("phase") in FINAL:
            if self.host.spend():  # it left the node: the mark goes
                vmi = {**vmi, "status": {**status, "evacuationNodeName": None}}
                self.store.update(VMI, vmi, key[0])
            return
        if status.get("phase") != "Running" or key in self.active:
            return
        mine = [
            o for o in ops if _key(o)[0] == key[0] and _dict(o.get("spec")).get("vmiName") == key[1]
        ]
        if any(_dict(o.get("status")).get("phase", "") in UNFINISHED for o in mine):
            return
        if not self.host.spend():
            return
        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": "kubevirt-evacuation-",
                "namespace": key[0],
                "annotations": {EVACUATION_ANNOTATION: str(node)},
            },
            "spec": {"vmiName": key[1]},
        }
        created = self.store.create(VMIM, body, key[0])
        log.info("kubevirt vmi %s/%s: evacuation %s", *key, created["metadata"]["name"])

    # ---- accepting --------------------------------------------------------------------------

    def _accept(self, op: Obj, vmis: dict[Key, Obj], now: float) -> None:
        status, spec = _dict(op.get("status")), _dict(op.get("spec"))
        if status.get("phase"):
            orphan = status.get("phase") in UNFINISHED and not self._followed(_key(op))
            if orphan and self.host.spend():  # begun by a controller that is gone
                self._fail(_key(op), "the migration controller lost track of it", "")
            return
        if not self.host.spend():
            return
        key = _key(op)
        vmi_key = (key[0], str(spec.get("vmiName") or ""))
        labels = {**_dict(op["metadata"].get("labels")), MIGRATION_VMI_LABEL: vmi_key[1]}
        self.store.patch(VMIM, key[1], {"metadata": {"labels": labels}}, key[0])
        vmi = vmis.get(vmi_key)
        if vmi is None:
            self._fail(key, "Migration failed because vmi does not exist.", "")
            return
        vmi_status = _dict(vmi.get("status"))
        if vmi_status.get("phase") != "Running" or vmi_key in self.active:
            self._fail(
                key,
                "VMI is not eligible for migration because another migration job is in progress."
                if vmi_key in self.active
                else "Migration failed vmi shutdown during migration.",
                "",
            )
            return
        source = str(vmi_status.get("nodeName") or "")
        pod = next(iter(_dict(vmi_status.get("activePods"))), "")
        source_pod = self._pod_name(key[0], str(pod)) if pod else ""
        self.active[vmi_key] = Migration(
            key, str(op["metadata"].get("uid", "")), vmi_key, source, source_pod, Stage.QUEUED, now
        )
        self._phase(key, "Pending")
        log.info("kubevirt vmim %s/%s: %s queued", *key, vmi_key[1])

    def _followed(self, op: Key) -> bool:
        return any(m.op == op for m in self.active.values())

    # ---- advancing ----------------------------------------------------------------------

    def _advance(
        self,
        mig: Migration,
        nodes: dict[str, Obj],
        load: dict[str, int],
        present: set[Key],
        now: float,
    ) -> None:
        if mig.op not in present:  # deleted: cancelled
            self._abort(mig, None)
            return
        try:
            vmi = self.store.get(VMI, mig.vmi[1], mig.vmi[0])
        except NotFound:
            del self.active[mig.vmi]
            self._fail(mig.op, "Migration failed because vmi does not exist.", "")
            return
        if mig.stage is Stage.QUEUED:
            if not self._slot_free(mig):
                return
            mig.stage, mig.since = Stage.SCHEDULING, now
        if mig.stage is Stage.SCHEDULING:
            self._schedule(mig, vmi, nodes, load, now)
            return
        if mig.target and self._target_lost(mig, nodes):
            self._abort(mig, "Target pod is down")
            return
        if mig.stage is Stage.SCHEDULED and self.host.spend():
            mig.stage = Stage.PREPARING
            self._phase(mig.op, "PreparingTarget")
        elif mig.stage is Stage.PREPARING and self.host.spend():
            mig.stage = Stage.TARGET_READY
            self._phase(mig.op, "TargetReady")
        elif mig.stage is Stage.TARGET_READY and self.host.spend():
            self._begin(mig, vmi, now)
        elif mig.stage is Stage.RUNNING:
            self._sync(mig, vmi, nodes, now)

    def _slot_free(self, mig: Migration) -> bool:
        running = [m for m in self.active.values() if m.stage is not Stage.QUEUED]
        if len(running) >= PER_CLUSTER:
            return False
        return sum(1 for m in running if m.source == mig.source) < OUTBOUND_PER_NODE

    def _schedule(
        self, mig: Migration, vmi: Obj, nodes: dict[str, Obj], load: dict[str, int], now: float
    ) -> None:
        if mig.target_pod and not mig.target:  # waiting, unbound, for a node
            fits = [n for n in eligible_nodes(nodes.values()) if n != mig.source]
            if now - mig.since >= self.unschedulable_timeout:
                self._delete_pod(mig.vmi[0], mig.target_pod)
                self._event(
                    mig.op,
                    "Normal",
                    "SuccessfulDelete",
                    f"unschedulable pod {mig.vmi[0]}/{mig.target_pod} timeout period exceeded",
                )
                mig.target_pod = ""
                self._abort(
                    mig, "", event="Migration target pod was removed during active migration."
                )
                return
            if not fits:
                return
            self._delete_pod(mig.vmi[0], mig.target_pod)
            mig.target_pod = ""
        if mig.target_pod:
            ready, _ = disks_ready(self.store, mig.vmi[0], mig.target_pod)
            if pod_gone(self.store, mig.vmi[0], mig.target_pod):
                self._abort(
                    mig,
                    "Target pod is down",
                    event="Migration target pod was removed during active migration.",
                )
                return
            if ready and self.host.spend():
                mark_pod_running(self.store, mig.vmi[0], mig.target_pod, "", self.host.stamp())
                mig.stage = Stage.SCHEDULED
                self._phase(mig.op, "Scheduled")
            return
        if not self.host.spend():
            return
        fits = [n for n in eligible_nodes(nodes.values()) if n != mig.source]
        target = min(fits, key=lambda n: (load.get(n, 0), n), default=None)
        op = self.store.get(VMIM, mig.op[1], mig.op[0])
        if target is None:
            pod = self.store.create("pods", launcher_pod(vmi, "", target_of=op))
            mig.target_pod = str(pod["metadata"]["name"])
            message = unavailable_message(nodes.values(), mig.source)
            unschedulable = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                        "lastTransitionTime": self.host.stamp(),
                    }
                ],
            }
            self.store.patch(
                "pods", mig.target_pod, {"status": unschedulable}, mig.vmi[0], subresource="status"
            )
            self._event(
                mig.op,
                "Warning",
                "MigrationTargetPodUnschedulable",
                f"Migration target pod for VMI [{mig.vmi[0]}/{mig.vmi[1]}] is currently "
                "unschedulable.",
            )
            mig.since = now
        else:
            pod = self.store.create("pods", launcher_pod(vmi, target, target_of=op))
            mig.target, mig.target_pod = target, str(pod["metadata"]["name"])
            mig.target_uid = str(nodes[target]["metadata"].get("uid", ""))
            load[target] = load.get(target, 0) + 1
            self._event(
                mig.op,
                "Normal",
                "SuccessfulCreate",
                f"Created migration target pod {mig.vmi[0]}/{mig.target_pod}",
            )
        self._phase(mig.op, "Scheduling")

    def _begin(self, mig: Migration, vmi: Obj, now: float) -> None:
        stamp = self.host.stamp()
        state = {
            "startTimestamp": stamp,
            "sourceNode": mig.source,
            "sourcePod": mig.source_pod,
            "targetNode": mig.target,
            "targetPod": mig.target_pod,
            "migrationUid": mig.uid,
            "mode": "PreCopy",
        }
        self._write_vmi(vmi, {"migrationState": state})
        mig.stage, mig.since, mig.last, mig.progress_at = Stage.RUNNING, now, now, now
        self._phase(mig.op, "Running")
        log.info(
            "kubevirt vmim %s/%s: %s from %s to %s", *mig.op, mig.vmi[1], mig.source, mig.target
        )

    def _sync(self, mig: Migration, vmi: Obj, nodes: dict[str, Obj], now: float) -> None:
        elapsed, mig.last = now - mig.last, now
        if _ready(nodes.get(mig.source)) and self.host.powered(mig.source):
            mig.synced = min(1.0, mig.synced + elapsed / max(self.host.migration_delay, 1e-3))
            mig.progress_at = now
        if now - mig.progress_at > self.progress_timeout:
            stuck = f"Live migration stuck for {self.progress_timeout:g} sec and has been aborted"
            self._abort(mig, stuck)
            return
        if mig.synced < 1.0 - 1e-9 or not self.host.spend():
            return
        if not self.host.truth.runs_on(mig.vmi, mig.source):
            self._abort(mig, f"the domain no longer runs on {mig.source}")
            return
        del self.active[mig.vmi]
        stamp = self.host.stamp()
        status = _dict(vmi.get("status"))
        state = {**_dict(status.get("migrationState")), "completed": True, "endTimestamp": stamp}
        target_uid = self._pod_uid(mig.vmi[0], mig.target_pod)
        self._write_vmi(
            vmi,
            {
                "nodeName": mig.target,
                "activePods": {target_uid: mig.target},
                "migrationState": state,
            },
        )
        self._delete_pod(mig.vmi[0], mig.source_pod)  # its virt-launcher exits
        self.host.truth.move(mig.vmi, mig.source, mig.target)
        self._finish(mig.op, "Succeeded", state)
        self._event(
            mig.op, "Normal", "SuccessfulMigration", "Source node reported migration succeeded"
        )
        log.info("kubevirt vmi %s/%s: migrated from %s to %s", *mig.vmi, mig.source, mig.target)

    def _target_lost(self, mig: Migration, nodes: dict[str, Obj]) -> bool:
        node = nodes.get(mig.target)
        return (
            node is None
            or is_out_of_service(node)
            or str(node["metadata"].get("uid", "")) != mig.target_uid
            or not self.host.powered(mig.target)
            or pod_gone(self.store, mig.vmi[0], mig.target_pod)
        )

    def _abort(self, mig: Migration, reason: str | None, event: str = "") -> None:
        """Give a migration up: the instance stays where it runs; the migration Failed with
        `reason` as virt-handler's failureReason (None: it was deleted, nothing to write)."""
        self.active.pop(mig.vmi, None)
        if mig.target_pod:
            self._delete_pod(mig.vmi[0], mig.target_pod)
        state: Obj = {}
        if mig.stage is Stage.RUNNING:
            try:
                vmi = self.store.get(VMI, mig.vmi[1], mig.vmi[0])
            except NotFound:
                vmi = {}
            if vmi:
                state = {
                    **_dict(_dict(vmi.get("status")).get("migrationState")),
                    "completed": True,
                    "failed": True,
                    "endTimestamp": self.host.stamp(),
                }
                if reason:
                    state["failureReason"] = reason
                if reason is None:
                    state["abortStatus"] = "Succeeded"
                self._write_vmi(vmi, {"migrationState": state})
        if reason is None:
            return
        self._fail(mig.op, event or "source node reported migration failed", reason, state)
