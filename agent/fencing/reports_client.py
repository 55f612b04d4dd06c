"""What a fencing operation tells people: a log line and a Kubernetes Event per phase, one
Event per VM when it runs elsewhere (its outage counted from the node's last heartbeat, the
time after the Node's deletion as a detail) or is given up at the deadline. Failing to write
an Event never stops an operation."""

from __future__ import annotations

import logging

from nodefence.agent.fencing.events import VmOutcome
from nodefence.agent.fencing.operation import Operation, Phase
from nodefence.agent.fencing.outcome import outage_words
from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.agent.observe import metrics
from nodefence.agent.virt.kubevirt_objects import API_VERSION
from nodefence.agent.virt.names import Virt

log = logging.getLogger("nodefence.fencing")


class FenceReporter:
    """Events and metrics of fencing operations."""

    def __init__(self, api: ClusterApi) -> None:
        self.api = api

    async def phase_changed(self, op: Operation) -> None:
        """`op` entered a new phase."""
        warning = op.phase in (Phase.FENCE_FAILED, Phase.RECOVERY_INCOMPLETE, Phase.ABORTED)
        log.log(
            logging.WARNING if warning else logging.INFO,
            "fencing node=%s op=%s: %s (%s)",
            op.node,
            op.id,
            op.phase.value,
            op.reason,
        )
        reason = op.phase.value if op.phase.value.startswith("Fence") else f"Fence{op.phase.value}"
        await self.event(op, reason, op.reason or op.phase.value, warning)

    async def release_events(self, op: Operation, before: Operation) -> None:
        """One Event per release step when it is done (taint, pods, attachments, untaint)."""
        if op.tainted and not before.tainted:
            what = f"{op.node} tainted node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
            await self.event(op, "FenceTainted", what, False)
        if op.pods_released and not before.pods_released:
            what = f"force-deleted {op.pods_deleted} pods bound to {op.node}"
            await self.event(op, "FenceReleasedPods", what, False)
        if op.attachments_released and not before.attachments_released:
            what = (
                f"no volume attached to {op.node} any more ({op.attachments_removed}"
                " VolumeAttachments removed by nodefence)"
            )
            if op.errors and op.errors != before.errors:
                what += f" ({op.errors[-1]})"
            await self.event(op, "FenceReleasedAttachments", what, op.errors != before.errors)
        if op.powered_on and not before.powered_on:
            await self.event(op, "FencePoweredOn", f"{op.node} powered on again", False)
        if op.untainted and not before.untainted:
            await self.event(op, "FenceUntainted", f"{op.node} is back: taint removed", False)

    async def vm_events(self, op: Operation, before: tuple[VmOutcome, ...] | None) -> None:
        """One Event per VM when it is seen running elsewhere, or given up at the deadline."""
        old = {v.key: v for v in before or ()}
        for vm in op.vms or ():
            was = old.get(vm.key)
            if vm.running_on and (was is None or not was.running_on) and vm.expected_restart:
                what = "deleted" if op.node_deleted else "released"
                after = outage_words(vm.outage, vm.recovered_after, op.node, what)
                msg = f"[{op.id}] running on {vm.running_on} {after}"
                metrics.VM_RECOVERY.observe(
                    vm.outage if vm.outage is not None else vm.recovered_after or 0.0
                )
                await self._vm_event(vm, "VMRecoveredAfterFence", msg, False)
        if op.phase is Phase.RECOVERY_INCOMPLETE and before is not None:
            for vm in op.vms or ():
                if vm.expected_restart and not vm.running_on:
                    await self._vm_event(
                        vm,
                        "VMNotRecoveredAfterFence",
                        f"[{op.id}] not running elsewhere before the deadline "
                        f"after {op.node} was fenced",
                        True,
                    )

    async def _vm_event(self, vm: VmOutcome, reason: str, message: str, warning: bool) -> None:
        try:
            if vm.virt is Virt.KUBEVIRT:
                await self.api.vm_event(
                    vm.namespace, vm.name, reason, message, warning, api_version=API_VERSION
                )
            else:
                await self.api.vm_event(vm.namespace, vm.name, reason, message, warning)
        except ClusterError as err:
            log.warning("cannot record event %s for VM %s: %s", reason, vm.key, err)

    async def event(self, op: Operation, reason: str, message: str, warning: bool) -> None:
        """An Event on the fenced node, tagged with the operation id."""
        try:
            await self.api.node_event(op.node, "", reason, f"[{op.id}] {message}", warning)
        except ClusterError as err:
            log.warning("cannot record event %s for %s: %s", reason, op.node, err)
