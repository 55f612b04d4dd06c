"""The ColdStandby controller on a hand-ticked rig (`ControllerRig`): the Deckhouse VM
operations a test drives (evict, migrate, restart), the VMs' phases and nodes, a fencer's
release of a powered-off node."""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kube import KubeApiServer, ObjectStore
from nodefence.hwsim.kube.attachdetach import AttachDetachController
from nodefence.hwsim.virtualization.coldstandby import ColdStandbyController
from nodefence.hwsim.virtualization.coldstandby_nodes import OUT_OF_SERVICE
from nodefence.hwsim.virtualization.vms import VM_LABEL
from tests.support.clock import FakeClock
from tests.support.controller_rig import ControllerRig, node_switches

Obj = dict[str, Any]


VIRT = ("virtualization.deckhouse.io", "v1alpha2")


BOOT = 2.0


MIGRATION = 1.0


MAX_WAIT = 30.0  # maxWaitForUnmountDuration, compressed from 6 minutes


ATTACH = 0.4  # a few looks: the pod placed, its VolumeAttachment made, then marked attached


class Rig(ControllerRig[ColdStandbyController]):
    """The ColdStandby controller's rig (`ControllerRig`)."""

    def release(self, node: str, delete: bool = True) -> None:
        """What a fencer does once the node is off: out-of-service taint, its pods
        force-deleted, the attach/detach controller lets go of its disks, the Node deleted."""
        taint = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
        self.set_node(node, taints=[taint])
        for pod in self.store.list("pods", field_selector=f"spec.nodeName={node}")["items"]:
            meta = pod["metadata"]
            self.store.delete("pods", meta["name"], meta["namespace"], grace_period_seconds=0)
        self.attach.tick()
        if delete:
            self.store.delete("nodes", node)

    def fence(self, node: str) -> None:
        """Power off, then `release`."""
        self.cut_power(node)
        self.release(node)

    def vm(self, name: str) -> Obj:
        return self.store.get("virtualmachines", name, "default")

    def where(self, name: str) -> tuple[str, str | None]:
        status = self.vm(name).get("status") or {}
        return status.get("phase", ""), status.get("nodeName")

    def pods(self, vm: str) -> list[tuple[str, str]]:
        """(node, phase) of the VM's launcher pods, Terminating ones left out."""
        items = self.store.list("pods", "default", label_selector=f"{VM_LABEL}={vm}")["items"]
        return sorted(
            (p["spec"]["nodeName"], p["status"]["phase"])
            for p in items
            if not p["metadata"].get("deletionTimestamp")
        )

    def cut_power(self, node: str) -> None:
        self.power[node] = False

    def partition(self, node: str) -> None:
        self.link[node] = False

    def set_node(self, node: str, **spec: Any) -> None:
        self.store.patch("nodes", node, {"spec": spec})

    def evict(self, vm: str, name: str = "", op_type: str = "Evict") -> str:
        name = name or f"migrate-{vm}-{int(self.clock.now * 1000)}"
        op = {
            "apiVersion": "/".join(VIRT),
            "kind": "VirtualMachineOperation",
            "metadata": {"name": name},
            "spec": {"virtualMachineName": vm, "type": op_type},
        }
        self.store.create("vmop", op, "default")
        return name

    def op(self, name: str) -> Obj:
        return self.store.get("vmop", name, "default").get("status") or {}


def make_rig(nodes: int = 3, store: ObjectStore | None = None, **options: Any) -> Rig:
    store = store or KubeApiServer().store  # in-process: the server's store, no socket here
    clock = FakeClock(1000.0)
    _, power, link = node_switches(nodes)
    ctl = ColdStandbyController(
        store,
        lambda n: power.get(n, False),
        boot_delay=BOOT,
        migration_delay=MIGRATION,
        clock=clock,
        **options,
    )
    attach = AttachDetachController(store, max_wait_for_unmount=MAX_WAIT, monotonic=clock)
    rig = Rig(store, clock, ctl, power, link, attach)
    rig.start_kubelets()
    return rig


def condition(status: Obj, type_: str) -> Obj:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)
