"""`VirtDriver`: what fencing and maintenance ask of one VM API (`nodefence.agent.virt.layer_client`
picks the drivers)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nodefence.agent.maintenance.vm_migration import OpRef, VmRef
from nodefence.agent.virt.names import Virt

if TYPE_CHECKING:
    from nodefence.agent.kube.client import ClusterApi


class VirtDriver(abc.ABC):
    """One VM API, as fencing and `nodefence maintenance` / `migrate` use it."""

    virt: Virt
    op_kind: str  # kubectl's short name of its migration objects: vmop, vmim
    op_what: str  # their kind: VirtualMachineOperation, VirtualMachineInstanceMigration
    launcher_selector: str  # the label selector of its launcher pods

    def __init__(self, api: ClusterApi) -> None:
        self.api = api

    @abc.abstractmethod
    async def list_vms(self) -> list[VmRef]:
        """Every VM of the cluster (none when the API is not served). Raises ClusterError."""

    @abc.abstractmethod
    async def get_vm(self, namespace: str, name: str) -> VmRef | None:
        """One VM, or None when there is none of that name."""

    @abc.abstractmethod
    def launcher_vm(self, pod: Mapping[str, Any]) -> str:
        """The key of the VM a launcher pod carries ("" when `pod` is no launcher of ours)."""

    @abc.abstractmethod
    async def list_ops(self, namespace: str) -> list[OpRef]:
        """The migrations (and other operations) of VMs in `namespace`."""

    @abc.abstractmethod
    async def get_op(self, op: OpRef) -> OpRef | None:
        """A fresh look at an operation (None: it was deleted)."""

    async def refresh(self, op: OpRef) -> OpRef:
        """A fresh look at an operation followed: gone, it Failed (`Deleted`); one never
        created or done with is not read again."""
        if not op.name or op.finished:
            return op
        fresh = await self.get_op(op)
        if fresh is None:
            gone = f"the {self.op_what} was deleted before it finished"
            return replace(op, phase="Failed", reason="Deleted", message=gone)
        return fresh

    @abc.abstractmethod
    async def migrate(
        self, vm: VmRef, unix_time: float, node: str = "", force: bool | None = None
    ) -> OpRef:
        """Create a live migration of `vm` (`node`: the maintenance run's label; `force`:
        Deckhouse's `spec.force`). A refusal raises ClusterError in the server's words."""

    async def move(
        self, vm: VmRef, unix_time: float, node: str, force: bool | None = None
    ) -> OpRef:
        """Move `vm` off `node` for maintenance (by default: migrate it)."""
        return await self.migrate(vm, unix_time, node, force)

    def notes(self) -> list[str]:
        """What an operator should know about this run (a configuration nodefence could not
        read, ...); said once."""
        return []
