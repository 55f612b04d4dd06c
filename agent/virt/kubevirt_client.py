"""Upstream KubeVirt (`kubevirt.io/v1`) behind `nodefence.agent.virt.layer_client`.

Every VM is read from two lists (VirtualMachines and VirtualMachineInstances), joined by
`nodefence.agent.virt.kubevirt_objects.vm_refs`. Moving a VM off a node for maintenance honours its
evictionStrategy (`nodefence.agent.virt.kubevirt_objects.drain_way`): a
VirtualMachineInstanceMigration, or an eviction of its launcher pod through the Eviction API, after
which KubeVirt stops the VM (None; its runStrategy may start it elsewhere) or hands it to its
external controller (External). `nodefence migrate` always creates a migration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nodefence.agent.kube.errors import ClusterError, Conflict, NotFound
from nodefence.agent.maintenance.pod_drain import pod_running
from nodefence.agent.maintenance.vm_migration import SHUTDOWN, OpRef, VmRef, vmop_name
from nodefence.agent.maintenance.vmops_client import VmopsError
from nodefence.agent.virt.driver_client import VirtDriver
from nodefence.agent.virt.kubevirt_objects import (
    LAUNCHER_SELECTOR,
    MIGRATION_JOB_LABEL,
    VM_PLURAL,
    VMI_PLURAL,
    VMIM_PLURAL,
    DrainWay,
    cluster_eviction,
    drain_way,
    eviction_note,
    launcher_vmi,
    migration_body,
    migration_ref,
    vm_ref,
    vm_refs,
)
from nodefence.agent.virt.names import Virt, vm_key

if TYPE_CHECKING:
    from nodefence.agent.kube.client import ClusterApi

EVACUATION = "Eviction triggered evacuation"  # KubeVirt's 429: it took the VM over


class KubevirtDriver(VirtDriver):
    """VirtualMachines, VirtualMachineInstances and their migrations of upstream KubeVirt."""

    virt = Virt.KUBEVIRT
    op_kind = "vmim"
    op_what = "VirtualMachineInstanceMigration"
    launcher_selector = LAUNCHER_SELECTOR

    def __init__(self, api: ClusterApi, *, read_eviction: bool = False) -> None:
        super().__init__(api)
        self.read_eviction = read_eviction
        self._cluster_strategy: str | None = None  # read once per run
        self._notes: list[str] = []

    async def _strategy(self) -> str:
        """The cluster-wide evictionStrategy ("" when unknown or not asked for)."""
        if not self.read_eviction:
            return ""
        if self._cluster_strategy is None:
            try:
                self._cluster_strategy = cluster_eviction(await self.api.kubevirt_config())
            except ClusterError as err:
                self._cluster_strategy = ""
                self._notes.append(
                    f"cannot read KubeVirt's configuration ({err}): a VM without its own "
                    "evictionStrategy is migrated when it can be, else its launcher pod "
                    "is evicted (as LiveMigrateIfPossible)"
                )
        return self._cluster_strategy

    def notes(self) -> list[str]:
        """See `VirtDriver.notes`."""
        said, self._notes = self._notes, []
        return said

    async def list_vms(self) -> list[VmRef]:
        """See `VirtDriver.list_vms`."""
        vms = await self.api.list_kubevirt(VM_PLURAL)
        vmis = await self.api.list_kubevirt(VMI_PLURAL)
        return vm_refs(vms, vmis, await self._strategy())

    async def get_vm(self, namespace: str, name: str) -> VmRef | None:
        """See `VirtDriver.get_vm`: the VirtualMachine or, without one, its instance."""
        vm = await self.api.get_kubevirt(VM_PLURAL, namespace, name)
        vmi = await self.api.get_kubevirt(VMI_PLURAL, namespace, name)
        if vm is None and vmi is None:
            return None
        return vm_ref(vm, vmi, await self._strategy())

    def launcher_vm(self, pod: Mapping[str, Any]) -> str:
        """See `VirtDriver.launcher_vm` (a pod still running only)."""
        meta = pod.get("metadata")
        vmi = launcher_vmi(pod)
        if not isinstance(meta, dict) or not vmi or not pod_running(pod):
            return ""
        return vm_key(self.virt, str(meta.get("namespace") or ""), vmi)

    async def list_ops(self, namespace: str) -> list[OpRef]:
        """See `VirtDriver.list_ops`: the VirtualMachineInstanceMigrations of `namespace`."""
        return [migration_ref(o) for o in await self.api.list_kubevirt(VMIM_PLURAL, namespace)]

    async def get_op(self, op: OpRef) -> OpRef | None:
        """See `VirtDriver.get_op`; a failed migration, or one whose target pod waits for a
        node, is explained in KubeVirt's words (its instance, its target pod)."""
        if op.type == SHUTDOWN:
            return op  # nothing to read: the VM tells how it goes
        obj = await self.api.get_kubevirt(VMIM_PLURAL, op.namespace, op.name)
        if obj is None:
            return None
        phase = str((obj.get("status") or {}).get("phase") or "")
        vmi = pod = None
        if phase == "Failed":
            vmi = await self.api.get_kubevirt(VMI_PLURAL, op.namespace, op.vm)
        elif phase in ("", "Pending", "Scheduling") and obj["metadata"].get("uid"):
            selector = f"{MIGRATION_JOB_LABEL}={obj['metadata']['uid']}"
            pods = await self.api.list_pods(op.namespace, selector)
            pod = pods[0] if pods else None
        return migration_ref(obj, vmi, pod)

    async def migrate(
        self, vm: VmRef, unix_time: float, node: str = "", force: bool | None = None
    ) -> OpRef:
        """See `VirtDriver.migrate`: a VirtualMachineInstanceMigration (KubeVirt has no
        `force`: a MigrationPolicy with allowAutoConverge does that)."""
        if force is not None:
            raise VmopsError(
                f"{vm.key}: KubeVirt's migrations have no force; a MigrationPolicy with "
                "allowAutoConverge makes a busy VM converge. Nothing was created."
            )
        for attempt in range(5):
            name = vmop_name(vm.name, unix_time, attempt)
            try:
                created = await self.api.create_kubevirt_migration(
                    vm.namespace, migration_body(vm.namespace, vm.name, name, node)
                )
            except Conflict:
                continue  # the name is taken: the next attempt's
            return migration_ref(created)
        raise VmopsError(
            f"cannot name a migration for {vm.key}: migrate-{vm.name}-* kept conflicting"
        )

    async def move(
        self, vm: VmRef, unix_time: float, node: str, force: bool | None = None
    ) -> OpRef:
        """See `VirtDriver.move`: as the VM's evictionStrategy says."""
        if drain_way(vm) is DrainWay.MIGRATE:
            return await self.migrate(vm, unix_time, node, force)
        pods = await self.api.list_node_pods(node, label_selector=LAUNCHER_SELECTOR)
        mine = [
            p
            for p in pods
            if self.launcher_vm(p) == vm.key and p["metadata"].get("namespace") == vm.namespace
        ]
        if not mine:
            why = f"no running launcher pod of it on {node}"
            return OpRef(vm.namespace, "", vm.name, "Failed", "NoLauncherPod", why, SHUTDOWN)
        pod = str(mine[0]["metadata"]["name"])
        try:
            why = await self.api.evict_pod(vm.namespace, pod)
        except NotFound:
            why = ""  # gone already: as good as evicted
        except ClusterError as err:
            why = str(err)
        handed_over = EVACUATION in why
        if why and not handed_over:
            return OpRef(
                vm.namespace, pod, vm.name, "Failed", "EvictionRefused", why, SHUTDOWN, kind="pod"
            )
        return OpRef(
            vm.namespace,
            pod,
            vm.name,
            "Evicted",
            "Evicted",
            eviction_note(vm, handed_over),
            SHUTDOWN,
            kind="pod",
        )
