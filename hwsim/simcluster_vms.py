"""The VM side of a simulated cluster: the Deckhouse ColdStandby and KubeVirt controllers, their
VMs placed over the nodes, and the split brains they saw (`VmControllers`, a mixin of
`nodefence.hwsim.simcluster.SimCluster`).
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.simcluster_settings import DECKHOUSE_GROUP, ClusterSettings
from nodefence.hwsim.simnode import SimNode


class VmControllers:
    """Starts and observes the VM controllers of a `SimCluster` (whose fields these are)."""

    settings: ClusterSettings
    kube: KubeApiServer
    nodes: dict[str, SimNode]
    fleet: Fleet
    vm_controller: Any
    kubevirt_controller: Any

    def _serve_kubevirt(self) -> None:
        """Install KubeVirt's API; a KubeVirt-only cluster serves no Deckhouse VMs at all."""
        from nodefence.hwsim.kubevirt import crds

        store = self.kube.store
        if self.settings.virt == "kubevirt":
            for plural in ("virtualmachines", "virtualmachineoperations"):
                try:
                    store.delete("customresourcedefinitions", f"{plural}.{DECKHOUSE_GROUP}")
                except NotFound:
                    pass
        crds.install(store, self.settings.kubevirt_eviction)

    def _powered(self, node: str) -> bool:
        return node in self.nodes and self.fleet[node].power_state() == "on"

    def _start_vms(self) -> None:
        from nodefence.hwsim.virtualization.coldstandby import ColdStandbyController
        from nodefence.hwsim.virtualization.vms import place_vms

        s = self.settings
        if s.virt != "kubevirt":
            self.vm_controller = ColdStandbyController(
                self.kube.store,
                self._powered,
                boot_delay=s.boot_delay,
                migration_delay=s.migration_delay,
            )
            place_vms(self.kube.store, self.vm_controller, s.vms, list(self.nodes))
            controller = self.vm_controller
            for machine in self.fleet:
                # A power cycle can be over before the controller's next look: told at once.
                machine.on_power_change(
                    lambda m, state: controller.power_lost(m.name) if state == "off" else None
                )
            self.vm_controller.start_in_thread()
        if s.virt != "deckhouse":
            self._start_kubevirt()

    def _start_kubevirt(self) -> None:
        from nodefence.hwsim.kubevirt.controller import KubevirtController
        from nodefence.hwsim.kubevirt.objects import place_vms

        s = self.settings
        self.kubevirt_controller = KubevirtController(
            self.kube.store,
            self._powered,
            # A graceful pod deletion completes (the guest shut down) where a kubelet runs.
            kubelet_alive=lambda n: self._powered(n) and not self.nodes[n].partitioned,
            boot_delay=s.boot_delay,
            migration_delay=s.migration_delay,
        )
        place_vms(self.kube.store, self.kubevirt_controller, s.vms, list(self.nodes))
        self.kubevirt_controller.start_in_thread()
        if self.vm_controller is None:
            self.vm_controller = self.kubevirt_controller

    @property
    def vm_controllers(self) -> list[Any]:
        """Every VM controller running (one per API)."""
        found = [self.vm_controller, self.kubevirt_controller]
        return [c for i, c in enumerate(found) if c is not None and c not in found[:i]]

    def vm_violations(self) -> list[str]:
        """Every split brain any VM controller saw."""
        return [v for c in self.vm_controllers for v in c.violations()]
