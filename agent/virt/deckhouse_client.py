"""Deckhouse Virtualization (`virtualization.deckhouse.io/v1alpha2`) behind
`nodefence.agent.virt.layer_client`: VirtualMachines (`spec.runPolicy`, `status.nodeName`), their
launcher pods and the VirtualMachineOperations (`Evict`) that migrate them. What nodefence always
did, now one driver of two."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodefence.agent.maintenance.pod_drain import pod_running
from nodefence.agent.maintenance.vm_migration import VM_POD_LABEL, OpRef, VmRef, op_ref, vm_ref
from nodefence.agent.maintenance.vmops_client import create_evict
from nodefence.agent.virt.driver_client import VirtDriver
from nodefence.agent.virt.names import Virt, vm_key

GONE = "the operation was deleted before it finished"


class DeckhouseDriver(VirtDriver):
    """VirtualMachines and VirtualMachineOperations of Deckhouse Virtualization."""

    virt = Virt.DECKHOUSE
    op_kind = "vmop"
    op_what = "VirtualMachineOperation"
    launcher_selector = VM_POD_LABEL

    async def list_vms(self) -> list[VmRef]:
        """See `VirtDriver.list_vms`."""
        return [vm_ref(obj) for obj in await self.api.list_vms()]

    async def get_vm(self, namespace: str, name: str) -> VmRef | None:
        """See `VirtDriver.get_vm`."""
        obj = await self.api.get_vm(namespace, name)
        return vm_ref(obj) if obj is not None else None

    def launcher_vm(self, pod: Mapping[str, Any]) -> str:
        """See `VirtDriver.launcher_vm` (a pod still running only)."""
        meta = pod.get("metadata")
        if not isinstance(meta, dict) or not pod_running(pod):
            return ""
        vm = (meta.get("labels") or {}).get(VM_POD_LABEL)
        return vm_key(self.virt, str(meta.get("namespace") or ""), str(vm)) if vm else ""

    async def list_ops(self, namespace: str) -> list[OpRef]:
        """See `VirtDriver.list_ops`."""
        return [op_ref(o) for o in await self.api.list_vm_operations(namespace)]

    async def get_op(self, op: OpRef) -> OpRef | None:
        """See `VirtDriver.get_op`."""
        obj = await self.api.get_vm_operation(op.namespace, op.name)
        return op_ref(obj) if obj is not None else None

    async def refresh(self, op: OpRef) -> OpRef:
        """See `VirtDriver.refresh`."""
        if not op.name or op.finished:
            return op  # never created, or done with
        fresh = await self.get_op(op)
        if fresh is None:
            return OpRef(op.namespace, op.name, op.vm, "Failed", "Deleted", GONE, op.type)
        return fresh

    async def migrate(
        self, vm: VmRef, unix_time: float, node: str = "", force: bool | None = None
    ) -> OpRef:
        """See `VirtDriver.migrate`: an Evict VirtualMachineOperation."""
        return await create_evict(self.api, vm, unix_time, node, force)
