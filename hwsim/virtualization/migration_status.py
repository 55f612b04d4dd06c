"""How the migration controller writes what it did: the VirtualMachineOperation's phase,
`Completed` and `SignalSent` conditions and `status.progress`, and the VirtualMachine's status
(`StatusWriter`, the base of `nodefence.hwsim.virtualization.migrations.MigrationController`).
"""

from __future__ import annotations

import logging

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.virtualization.migration_state import Key, Migration, MigrationHost, Obj, Stage
from nodefence.hwsim.virtualization.vms import condition

log = logging.getLogger(__name__)


class StatusWriter:
    """Writes VirtualMachineOperation and VirtualMachine status through `host`'s store."""

    host: MigrationHost
    store: ObjectStore

    def _vm(self, key: Key) -> Obj:
        try:
            return self.store.get("virtualmachines", key[1], key[0])
        except NotFound:
            return {}

    def _patch_vm(self, key: Key, status: Obj) -> None:
        self.store.patch(
            "virtualmachines", key[1], {"status": status}, key[0], subresource="status"
        )

    def _show(self, mig: Migration, phase: str, reason: str, message: str, progress: str) -> None:
        """Write the operation's state when it changed (not at every tick)."""
        shown = (phase, reason, message, progress)
        if shown != mig.shown:
            mig.shown = shown
            signal = mig.stage in (Stage.PREPARING, Stage.SYNCING)
            self._write_op(mig.op, phase, False, reason, message, progress, signal)

    def _fail(self, key: Key, reason: str, message: str, progress: str = "") -> None:
        self._write_op(key, "Failed", False, reason, message, progress)
        log.warning("vmop %s/%s: Failed: %s: %s", *key, reason, message)

    def _write_op(
        self,
        key: Key,
        phase: str,
        done: bool,
        reason: str,
        message: str,
        progress: str = "",
        signal_sent: bool = True,
    ) -> None:
        stamp = self.host.stamp()
        conditions = [condition("Completed", done, reason, message, stamp)]
        if signal_sent:
            conditions.append(condition("SignalSent", True, "SignalSentSuccess", "", stamp))
        status: Obj = {"phase": phase, "conditions": conditions}
        if progress:
            status["progress"] = progress
        try:
            self.store.patch(
                "virtualmachineoperations", key[1], {"status": status}, key[0], subresource="status"
            )
        except NotFound:
            pass  # deleted meanwhile: nobody to tell
