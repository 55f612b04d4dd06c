"""The virtualization layer: one driver per VM API, chosen by the agent config's
`virtualization: auto | deckhouse | kubevirt`.

- `VirtDriver` (`nodefence.agent.virt.driver_client`) is what fencing and maintenance ask of a VM
  API: every VM as a
  `nodefence.agent.maintenance.vm_migration.VmRef` (where it runs, whether it comes back after its
  node is lost), one VM, its launcher pods, its migrations, and how to move it off a node.
  `nodefence.agent.virt.deckhouse_client` speaks `virtualization.deckhouse.io` (VirtualMachine
  `spec.runPolicy`, VirtualMachineOperation), `nodefence.agent.virt.kubevirt_client` upstream
  KubeVirt's `kubevirt.io/v1` (VirtualMachine `spec.runStrategy`, VirtualMachineInstance,
  VirtualMachineInstanceMigration).
- `VirtLayer` holds the drivers of one process. With `auto` it asks the API server which groups
  it serves (discovery, open to every authenticated client) and uses every API it finds (a
  cluster may run both), again every `rediscover` seconds so an API installed later is found.
  An API found by discovery whose objects nodefence may not read (403: its RBAC component is
  not deployed) is left out with a warning, so fencing and its cleanup never wait on it; one
  named in the config is not, and its errors are the caller's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from nodefence.agent.kube.client import VM_GROUP, VM_VERSION, ClusterError, Forbidden
from nodefence.agent.maintenance.vm_migration import VmRef
from nodefence.agent.virt.driver_client import VirtDriver
from nodefence.agent.virt.kubevirt_objects import GROUP as KUBEVIRT_GROUP
from nodefence.agent.virt.kubevirt_objects import VERSION as KUBEVIRT_VERSION
from nodefence.agent.virt.names import AUTO, MODES, Virt

if TYPE_CHECKING:
    from nodefence.agent.kube.client import ClusterApi

log = logging.getLogger(__name__)

REDISCOVER = 60.0  # seconds between two discoveries in `auto` mode
SERVED = {Virt.DECKHOUSE: (VM_GROUP, VM_VERSION), Virt.KUBEVIRT: (KUBEVIRT_GROUP, KUBEVIRT_VERSION)}
RBAC_HINT = {
    Virt.DECKHOUSE: "the Deckhouse rules of deploy/base/rbac.yaml",
    Virt.KUBEVIRT: "the component deploy/components/kubevirt",
}


def build_driver(virt: Virt, api: ClusterApi, *, maintenance: bool = False) -> VirtDriver:
    """The driver of `virt` (`maintenance`: it also reads what moving VMs needs, such as
    KubeVirt's cluster-wide evictionStrategy)."""
    if virt is Virt.KUBEVIRT:
        from nodefence.agent.virt.kubevirt_client import KubevirtDriver

        return KubevirtDriver(api, read_eviction=maintenance)
    from nodefence.agent.virt.deckhouse_client import DeckhouseDriver

    return DeckhouseDriver(api)


def chosen(mode: str, groups: Mapping[str, tuple[str, ...]]) -> list[Virt]:
    """The APIs `mode` uses on a server serving `groups` (group -> versions)."""
    if mode != AUTO:
        return [Virt(mode)]
    return [v for v, (group, version) in SERVED.items() if version in groups.get(group, ())]


class VirtLayer:
    """The drivers of one process; see the module doc."""

    def __init__(
        self,
        api: ClusterApi,
        mode: str = Virt.DECKHOUSE.value,
        *,
        clock: Callable[[], float] = time.monotonic,
        rediscover: float = REDISCOVER,
        maintenance: bool = False,
    ) -> None:
        """`maintenance`: for `nodefence maintenance` and `migrate`: the drivers read what
        moving VMs needs, and no API found by discovery is ever left out (a VM not seen would
        be left on a node declared empty)."""
        if mode not in MODES:
            raise ValueError(f"virtualization must be one of {', '.join(MODES)}, got {mode!r}")
        self.api = api
        self.mode = mode
        self.clock = clock
        self.rediscover = rediscover
        self.maintenance = maintenance
        self._drivers = {v: build_driver(v, api, maintenance=maintenance) for v in Virt}
        self._found: list[Virt] | None = None if mode == AUTO else [Virt(mode)]
        self._found_at = 0.0
        self._warned: set[tuple[Virt, int | None]] = set()

    def driver(self, virt: Virt) -> VirtDriver:
        """The driver of `virt` (whether or not the cluster serves it)."""
        return self._drivers[virt]

    async def drivers(self) -> list[VirtDriver]:
        """The drivers in use: the configured one, or those discovery finds (a failed
        discovery keeps the last answer, or raises ClusterError when there is none)."""
        if self.mode != AUTO:
            return [self._drivers[Virt(self.mode)]]
        due = self._found is None or self.clock() - self._found_at >= self.rediscover
        if due:
            try:
                groups = await self.api.served_groups()
            except ClusterError as err:
                if self._found is None:
                    raise
                log.warning("cannot rediscover the VM APIs, keeping %s: %s", self._found, err)
            else:
                found = chosen(AUTO, groups)
                if found != self._found:
                    log.info("VM APIs served: %s", ", ".join(found) or "none")
                self._found, self._found_at = found, self.clock()
        return [self._drivers[v] for v in self._found or ()]

    async def list_vms(self) -> list[VmRef]:
        """Every VM of every API in use. Raises ClusterError, except for an API found by
        discovery that nodefence may not read (403), which is left out with a warning."""
        found: list[VmRef] = []
        for driver in await self.drivers():
            try:
                found += await driver.list_vms()
            except Forbidden as err:
                if self.mode != AUTO or self.maintenance:
                    raise
                self._warn(driver.virt, err)
        return found

    def _warn(self, virt: Virt, err: ClusterError) -> None:
        if (virt, err.status) in self._warned:
            return
        self._warned.add((virt, err.status))
        log.warning(
            "the cluster serves %s VMs but nodefence may not read them (%s): their recovery "
            "is not verified; deploy %s, or set virtualization: to the APIs you use",
            virt.value,
            err,
            RBAC_HINT[virt],
        )
