"""The emulated upstream KubeVirt (nodefence.hwsim.kubevirt): runStrategy, node loss, split brain,
migration.

The controller is driven by `tick()` on an injected clock over the API emulator's store (no
socket), with nodes registered by `SimKubelet`s whose power and link the test controls and the
attach/detach controller on the same clock, as tests/hwsim/test_hwsim_coldstandby.py does for the
Deckhouse controller. A node that dies changes nothing by itself: its launcher pods stay, so
its VMs come back only once something releases them (`Rig.release`, what a fencer does after a
proven power-off).
"""

from __future__ import annotations

from typing import Any

import pytest

from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.kube.attachdetach import AttachDetachController
from nodefence.hwsim.kube.errors import BadRequest
from nodefence.hwsim.kubevirt import crds
from nodefence.hwsim.kubevirt.controller import KubevirtController
from nodefence.hwsim.kubevirt.objects import (
    CREATED_BY_LABEL,
    VM,
    VM_NAME_LABEL,
    VMI,
    VMIM,
    VmProfile,
    place_vms,
)
from nodefence.hwsim.virtualization.vm_views import vm_views
from tests.support.clock import FakeClock
from tests.support.controller_rig import ControllerRig, node_switches

Obj = dict[str, Any]
BOOT = 2.0
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


class Rig(ControllerRig[KubevirtController]):
    """KubeVirt's CRDs on a store and its controller (`ControllerRig`)."""

    def release(self, node: str) -> None:
        """What a fencer does once the node is off: out-of-service taint, its pods
        force-deleted, its disks let go, the Node deleted."""
        taint = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
        self.store.patch("nodes", node, {"spec": {"taints": [taint]}})
        for pod in self.store.list("pods", field_selector=f"spec.nodeName={node}")["items"]:
            meta = pod["metadata"]
            self.store.delete("pods", meta["name"], meta["namespace"], grace_period_seconds=0)
        self.attach.tick()
        self.store.delete("nodes", node)

    def view(self, name: str) -> tuple[str, str | None]:
        (found,) = [v for v in vm_views(self.store) if v.name == name]
        return found.phase, found.node

    def launchers(self, name: str) -> list[Obj]:
        selector = f"{VM_NAME_LABEL}={name}"
        return list(self.store.list("pods", "default", label_selector=selector)["items"])


def make_rig(profiles: tuple[VmProfile, ...], nodes: int = 3) -> Rig:
    store = KubeApiServer().store
    crds.install(store)
    clock = FakeClock(1000.0)
    names, power, link = node_switches(nodes)
    ctl = KubevirtController(
        store,
        lambda n: power.get(n, False),
        kubelet_alive=lambda n: power.get(n, False) and link.get(n, False),
        boot_delay=BOOT,
        clock=clock,
    )
    attach = AttachDetachController(store, max_wait_for_unmount=30.0, monotonic=clock)
    rig = Rig(store, clock, ctl, power, link, attach)
    rig.start_kubelets()
    place_vms(store, ctl, len(profiles), names[:1] * len(profiles), profiles)
    rig.run(0.5)
    return rig


EVERY_STRATEGY = (
    VmProfile("Always", None, False),
    VmProfile("RerunOnFailure", None, False),
    VmProfile("Manual", None, False),
    VmProfile("Once", None, False),
    VmProfile("Halted", None, False),
)


def test_place_vms_runs_each_vm_in_an_instance_and_a_labelled_launcher_pod() -> None:
    rig = make_rig(EVERY_STRATEGY)
    assert [rig.view(f"kv-{i}") for i in range(1, 6)] == [("Running", "node-1")] * 4 + [
        ("Stopped", None)
    ]
    vmi = rig.store.get(VMI, "kv-1", "default")
    assert vmi["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"
    (pod,) = rig.launchers("kv-1")
    assert pod["metadata"]["labels"][CREATED_BY_LABEL] == vmi["metadata"]["uid"]
    assert pod["spec"]["nodeName"] == "node-1"
    live = {c["type"]: c for c in vmi["status"]["conditions"]}["LiveMigratable"]
    assert (live["status"], live["reason"]) == ("False", "DisksNotLiveMigratable")
    assert rig.launchers("kv-5") == []  # Halted: no instance, no pod
    assert rig.store.get(VM, "kv-1", "default")["status"]["printableStatus"] == "Running"


def test_a_node_that_loses_power_keeps_its_instances_and_pods_until_released() -> None:
    rig = make_rig(EVERY_STRATEGY[:1])
    rig.power["node-1"] = False
    rig.run(30.0)
    # KubeVirt cannot know the machine is off: nothing moves while the pod is there.
    assert rig.view("kv-1") == ("Running", "node-1")
    assert len(rig.launchers("kv-1")) == 1
    assert rig.ctl.running_places("default", "kv-1") == set()  # the processes died with it


@pytest.mark.parametrize(
    ("strategy", "comes_back"),
    [("Always", True), ("RerunOnFailure", True), ("Manual", False), ("Once", False)],
)
def test_after_the_release_the_run_strategy_decides_whether_the_vm_runs_again(
    strategy: str, comes_back: bool
) -> None:
    rig = make_rig((VmProfile(strategy, None, False),))
    rig.power["node-1"] = False
    rig.release("node-1")
    rig.run(BOOT + 3.0)
    phase, node = rig.view("kv-1")
    if comes_back:
        assert (phase, node) in {("Running", "node-2"), ("Running", "node-3")}
        assert rig.ctl.running_places("default", "kv-1") == {node}
    else:
        assert (phase, node) == ("Failed", None)
    assert rig.ctl.violations() == []


def test_a_launcher_pod_force_deleted_on_a_node_only_cut_off_is_a_split_brain() -> None:
    rig = make_rig(EVERY_STRATEGY[:1])
    rig.link["node-1"] = False  # powered: its guest runs on, unseen
    rig.release("node-1")  # the unsafe path: no proof the machine is off
    rig.run(BOOT + 3.0)
    phase, node = rig.view("kv-1")
    assert phase == "Running" and node != "node-1"
    assert rig.ctl.running_places("default", "kv-1") == {"node-1", node}
    (brain,) = rig.ctl.violations()
    assert "kv-1" in brain


def test_a_migration_of_a_vm_without_a_shared_disk_is_refused_in_kubevirts_words() -> None:
    rig = make_rig(EVERY_STRATEGY[:1])
    migration = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m1", "namespace": "default"},
        "spec": {"vmiName": "kv-1"},
    }
    with pytest.raises(BadRequest, match="Cannot migrate VMI, Reason: DisksNotLiveMigratable"):
        rig.store.create(VMIM, migration, "default")


def test_a_migration_moves_the_processes_of_a_vm_with_a_shared_disk() -> None:
    rig = make_rig((VmProfile("Always", "LiveMigrate", True),))
    migration = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m1", "namespace": "default"},
        "spec": {"vmiName": "kv-1"},
    }
    rig.store.create(VMIM, migration, "default")
    rig.run(10.0)
    assert rig.store.get(VMIM, "m1", "default")["status"]["phase"] == "Succeeded"
    phase, node = rig.view("kv-1")
    assert phase == "Running" and node in {"node-2", "node-3"}
    assert rig.ctl.running_places("default", "kv-1") == {node}
    assert rig.ctl.violations() == []
