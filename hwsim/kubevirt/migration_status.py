"""How the KubeVirt migration controller writes what it did: the VirtualMachineInstanceMigration's
phase (stamped), `migrationState` and Events, the instance's status, launcher pods
(`MigrationWriter`, the base of `nodefence.hwsim.kubevirt.migrations.KubevirtMigrations`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nodefence.hwsim.kube.errors import ApiError, NotFound
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kubevirt.migration_state import Key, Obj
from nodefence.hwsim.kubevirt.objects import VMI, VMIM
from nodefence.hwsim.virtualization.coldstandby_nodes import mapping_of

if TYPE_CHECKING:
    from nodefence.hwsim.kubevirt.controller import KubevirtController

log = logging.getLogger(__name__)


class MigrationWriter:
    """Writes migrations, instances, Events and pods through `host`'s store."""

    host: KubevirtController
    store: ObjectStore

    def _write_vmi(self, vmi: Obj, changes: Obj) -> None:
        fresh = {**vmi, "status": {**mapping_of(vmi.get("status")), **changes}}
        self.store.update(VMI, fresh, vmi["metadata"]["namespace"])

    def _phase(self, op: Key, phase: str, extra: Obj | None = None) -> None:
        try:
            obj = self.store.get(VMIM, op[1], op[0])
        except NotFound:
            return
        status = mapping_of(obj.get("status"))
        stamps = [s for s in status.get("phaseTransitionTimestamps") or [] if isinstance(s, dict)]
        stamps.append({"phase": phase, "phaseTransitionTimestamp": self.host.stamp()})
        new = {"phase": phase, "phaseTransitionTimestamps": stamps, **(extra or {})}
        self.store.patch(VMIM, op[1], {"status": new}, op[0], subresource="status")

    def _finish(self, op: Key, phase: str, state: Obj) -> None:
        self._phase(op, phase, {"migrationState": state} if state else None)

    def _fail(self, op: Key, event: str, reason: str, state: Obj | None = None) -> None:
        if reason and not (state or {}).get("failureReason"):
            state = {**(state or {}), "failed": True, "completed": True, "failureReason": reason}
        self._finish(op, "Failed", state or {})
        self._event(op, "Warning", "FailedMigration", event)
        log.warning("kubevirt vmim %s/%s: Failed: %s %s", *op, event, reason)

    def _event(self, op: Key, kind: str, reason: str, message: str) -> None:
        try:
            obj = self.store.get(VMIM, op[1], op[0])
        except NotFound:
            return
        stamp = self.host.stamp()
        event = {
            "metadata": {"generateName": f"{op[1]}."},
            "involvedObject": {
                "kind": "VirtualMachineInstanceMigration",
                "apiVersion": "kubevirt.io/v1",
                "namespace": op[0],
                "name": op[1],
                "uid": obj["metadata"].get("uid", ""),
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "virtualmachine-controller"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.store.create("events", event, op[0])
        except ApiError as err:
            log.warning("cannot record %s for %s/%s: %s", reason, *op, err)

    def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.store.delete("pods", name, namespace)
        except NotFound:
            pass

    def _pod_uid(self, namespace: str, name: str) -> str:
        try:
            return str(self.store.get("pods", name, namespace)["metadata"]["uid"])
        except NotFound:
            return ""

    def _pod_name(self, namespace: str, uid: str) -> str:
        for pod in self.store.list("pods", namespace)["items"]:
            if pod["metadata"].get("uid") == uid:
                return str(pod["metadata"]["name"])
        return ""
