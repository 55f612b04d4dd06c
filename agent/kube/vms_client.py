"""The Kubernetes calls of Deckhouse Virtualization: VirtualMachines and
VirtualMachineOperations (`virtualization.deckhouse.io`), and `VmPlacement`, where a VM runs
as the leader and the manual fence read it.

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s). Objects come back as the API's JSON (their readers are
`nodefence.agent.virt.deckhouse_client`'s), except the placements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import NotFound

VM_GROUP, VM_VERSION, VM_PLURAL = "virtualization.deckhouse.io", "v1alpha2", "virtualmachines"
VMOP_PLURAL = "virtualmachineoperations"
DEFAULT_RUN_POLICY = "AlwaysOnUnlessStoppedManually"


@dataclass(frozen=True)
class VmPlacement:
    """Where one Deckhouse VirtualMachine is, as its status says."""

    namespace: str
    name: str
    node: str  # status.nodeName ("" when not placed)
    phase: str  # status.phase ("" when not reported)
    run_policy: str  # spec.runPolicy (Deckhouse's default when absent)

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"


def vm_placement(vm: Mapping[str, Any]) -> VmPlacement:
    """The placement of a VirtualMachine object (the API's JSON)."""
    meta, spec, status = vm.get("metadata") or {}, vm.get("spec") or {}, vm.get("status") or {}
    return VmPlacement(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        node=str(status.get("nodeName") or ""),
        phase=str(status.get("phase") or ""),
        run_policy=str(spec.get("runPolicy") or DEFAULT_RUN_POLICY),
    )


class VmCalls(ClientBase):
    """Deckhouse VirtualMachines and VirtualMachineOperations."""

    async def _list_virtualization(self, plural: str, what: str) -> list[dict[str, Any]]:
        """Every object of a virtualization.deckhouse.io resource, cluster-wide (an empty
        list when the CRD is absent)."""
        try:
            result = await self._call_any(
                f"list {what}",
                lambda: self.custom.list_cluster_custom_object(
                    VM_GROUP, VM_VERSION, plural, _request_timeout=self.timeout
                ),
            )
        except NotFound:
            return []
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def list_vms(self) -> list[dict[str, Any]]:
        """Every VirtualMachine in the cluster (an empty list when the CRD is absent)."""
        return await self._list_virtualization(VM_PLURAL, "virtual machines")

    async def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One VirtualMachine, or None when it (or the CRD) does not exist."""
        try:
            obj = await self._call_any(
                f"read virtual machine {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    VM_GROUP, VM_VERSION, namespace, VM_PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except NotFound:
            return None
        found: dict[str, Any] = obj
        return found

    async def list_vm_operations(
        self, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """The VirtualMachineOperations of `namespace` (every one in the cluster when None),
        matching `label_selector`; empty when the CRD is absent."""
        if namespace is None and not label_selector:
            return await self._list_virtualization(VMOP_PLURAL, "virtual machine operations")
        where = f" in {namespace}" if namespace else ""
        try:
            result = await self._call_any(
                f"list virtual machine operations{where}",
                lambda: (
                    self.custom.list_namespaced_custom_object(
                        VM_GROUP,
                        VM_VERSION,
                        namespace,
                        VMOP_PLURAL,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                    if namespace
                    else self.custom.list_cluster_custom_object(
                        VM_GROUP,
                        VM_VERSION,
                        VMOP_PLURAL,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                ),
            )
        except NotFound:
            return []
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def get_vm_operation(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One VirtualMachineOperation, or None when it does not exist."""
        try:
            obj = await self._call_any(
                f"read virtual machine operation {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    VM_GROUP,
                    VM_VERSION,
                    namespace,
                    VMOP_PLURAL,
                    name,
                    _request_timeout=self.timeout,
                ),
            )
        except NotFound:
            return None
        found: dict[str, Any] = obj
        return found

    async def create_vm_operation(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a VirtualMachineOperation; a name already taken raises `Conflict`. A
        refusal carries the server's words (an admission webhook says why, e.g. another
        unfinished operation of the VM)."""
        name = body["metadata"]["name"]
        obj = await self._call_any(
            f"create virtual machine operation {namespace}/{name}",
            lambda: self.custom.create_namespaced_custom_object(
                VM_GROUP, VM_VERSION, namespace, VMOP_PLURAL, body, _request_timeout=self.timeout
            ),
            refusal=True,
        )
        created: dict[str, Any] = obj
        return created

    async def vm_placements(self) -> list[VmPlacement]:
        """Where every VirtualMachine of the cluster is (`list_vms`, typed)."""
        return [vm_placement(vm) for vm in await self.list_vms()]
