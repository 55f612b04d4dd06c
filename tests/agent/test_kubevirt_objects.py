"""How nodefence reads upstream KubeVirt's objects (nodefence.agent.virt.kubevirt_objects,
nodefence.agent.virt.layer_client): pure.

Which VMs must come back (runStrategy, the legacy `running`), where a VM runs (its instance),
how `maintenance enter` moves it (evictionStrategy), a migration's phase and KubeVirt's reasons,
and which APIs `virtualization: auto` uses.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.agent.maintenance.vm_migration import VmRef
from nodefence.agent.virt.kubevirt_objects import (
    DrainWay,
    cluster_eviction,
    drain_way,
    launcher_vmi,
    migration_body,
    migration_ref,
    restarts,
    run_strategy,
    vm_ref,
    vm_refs,
)
from nodefence.agent.virt.layer_client import VirtLayer, chosen
from nodefence.agent.virt.names import Virt, split_key, vm_key

Obj = dict[str, Any]


def vm(name: str = "db", **spec: Any) -> Obj:
    return {"metadata": {"namespace": "prod", "name": name}, "spec": spec}


def vmi(name: str = "db", phase: str = "Running", node: str = "node-1", **status: Any) -> Obj:
    return {
        "metadata": {"namespace": "prod", "name": name, "uid": "u-" + name},
        "spec": {"domain": {"cpu": {"cores": 2}, "memory": {"guest": "2Gi"}}},
        "status": {"phase": phase, "nodeName": node, **status},
    }


@pytest.mark.parametrize(
    ("spec", "strategy"),
    [
        ({"runStrategy": "RerunOnFailure"}, "RerunOnFailure"),
        ({"runStrategy": "Manual", "running": True}, "Manual"),  # runStrategy wins
        ({"running": True}, "Always"),
        ({"running": False}, "Halted"),
        ({}, "Halted"),
    ],
)
def test_the_run_strategy_comes_from_run_strategy_else_the_legacy_running(
    spec: Obj, strategy: str
) -> None:
    assert run_strategy(vm(**spec)) == strategy


@pytest.mark.parametrize(
    ("strategy", "instance_phase", "comes_back"),
    [
        ("Always", "Running", True),
        ("Always", "Succeeded", True),
        ("RerunOnFailure", "Running", True),  # lost with its node: it fails
        ("RerunOnFailure", "Failed", True),
        ("RerunOnFailure", "Succeeded", False),  # shut down from inside: stays down
        ("Manual", "Running", False),
        ("Once", "Running", False),
        ("Halted", "", False),
        ("", "Running", False),  # an instance without a VirtualMachine
    ],
)
def test_which_vms_kubevirt_starts_again_after_their_node_is_lost(
    strategy: str, instance_phase: str, comes_back: bool
) -> None:
    assert restarts(strategy, instance_phase) is comes_back


@pytest.mark.parametrize(
    ("instance", "phase", "node", "target"),
    [
        (None, "Stopped", "", ""),
        (vmi(), "Running", "node-1", ""),
        (vmi(phase="Scheduled"), "Starting", "node-1", ""),
        (vmi(phase="Pending", node=""), "Pending", "", ""),
        (vmi(phase="Failed"), "Stopped", "", ""),  # runs nowhere though its status names node-1
        (vmi(migrationState={"targetNode": "node-2"}), "Migrating", "node-1", "node-2"),
        (vmi(migrationState={"targetNode": "node-2", "completed": True}), "Running", "node-1", ""),
    ],
)
def test_where_a_kubevirt_vm_runs_is_its_instances_node_and_phase(
    instance: Obj | None, phase: str, node: str, target: str
) -> None:
    ref = vm_ref(vm(runStrategy="Always"), instance)
    assert (ref.phase, ref.node, ref.target) == (phase, node, target)
    assert ref.virt is Virt.KUBEVIRT and ref.key == "kubevirt:prod/db"


def test_a_failed_instance_still_names_its_last_node_for_the_fence_snapshot() -> None:
    ref = vm_ref(vm(runStrategy="RerunOnFailure"), vmi(phase="Failed"))
    assert (ref.node, ref.last_node, ref.restart) == ("", "node-1", True)


def test_vms_join_their_instances_and_an_orphan_instance_never_comes_back() -> None:
    refs = vm_refs([vm("a", runStrategy="Always"), vm("b", running=False)], [vmi("a"), vmi("c")])
    found = {r.name: (r.phase, r.policy, r.restart) for r in refs}
    assert found == {
        "a": ("Running", "Always", True),
        "b": ("Stopped", "Halted", False),
        "c": ("Running", "", False),
    }
    assert next(r for r in refs if r.name == "a").need is not None


def test_the_instances_own_eviction_strategy_beats_the_clusters() -> None:
    own = vmi()
    own["spec"]["evictionStrategy"] = "None"
    assert vm_ref(vm(runStrategy="Always"), own, "LiveMigrate").eviction == "None"
    assert vm_ref(vm(runStrategy="Always"), vmi(), "LiveMigrate").eviction == "LiveMigrate"
    assert cluster_eviction([{"spec": {"configuration": {}}}]) == "None"
    assert cluster_eviction([]) == ""  # unknown: no KubeVirt resource readable


def ref(eviction: str, not_migratable: str = "") -> VmRef:
    return VmRef(
        "prod", "db", "Running", "node-1", virt=Virt.KUBEVIRT, eviction=eviction,
        not_migratable=not_migratable,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("vm_", "way"),
    [
        (ref("LiveMigrate"), DrainWay.MIGRATE),
        (ref("LiveMigrate", "DisksNotLiveMigratable"), DrainWay.MIGRATE),  # KubeVirt refuses
        (ref("LiveMigrateIfPossible"), DrainWay.MIGRATE),
        (ref("LiveMigrateIfPossible", "DisksNotLiveMigratable"), DrainWay.EVICT),
        (ref("None"), DrainWay.EVICT),
        (ref("External"), DrainWay.EVICT),
        (ref(""), DrainWay.MIGRATE),  # unknown: as LiveMigrateIfPossible
        (ref("", "DisksNotLiveMigratable"), DrainWay.EVICT),
    ],
)
def test_maintenance_moves_a_kubevirt_vm_as_its_eviction_strategy_says(
    vm_: VmRef, way: DrainWay
) -> None:
    assert drain_way(vm_) is way


def test_a_failed_migration_carries_kubevirts_failure_reason() -> None:
    vmim = {
        "metadata": {"namespace": "prod", "name": "m1", "uid": "mu"},
        "spec": {"vmiName": "db"},
        "status": {"phase": "Failed"},
    }
    instance = vmi(migrationState={"migrationUid": "mu", "failureReason": "target pod died"})
    op = migration_ref(vmim, instance)
    assert (op.phase, op.reason, op.message, op.kind) == (
        "Failed",
        "MigrationFailed",
        "target pod died",
        "vmim",
    )
    assert op.finished


def test_a_migration_waiting_for_a_target_node_says_why_in_the_schedulers_words() -> None:
    vmim = {"metadata": {"namespace": "prod", "name": "m1"}, "spec": {"vmiName": "db"}}
    vmim["status"] = {"phase": "Scheduling"}
    words = "0/3 nodes are available: 3 Insufficient memory."
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": words},
            ],
        }
    }  # fmt: skip
    op = migration_ref(vmim, None, pod)
    assert (op.reason, op.message) == ("TargetPodUnschedulable", words)


def test_a_maintenance_migration_is_labelled_with_its_node() -> None:
    body = migration_body("prod", "db", "migrate-db-1", "node-1")
    assert body["spec"] == {"vmiName": "db"}
    assert body["apiVersion"] == "kubevirt.io/v1"
    assert body["metadata"]["labels"]


def test_a_launcher_pod_names_its_instance_by_its_controlling_owner() -> None:
    pod = {
        "metadata": {
            "labels": {"kubevirt.io": "virt-launcher"},
            "ownerReferences": [
                {"kind": "VirtualMachineInstance", "name": "db", "controller": True}
            ],
            "annotations": {"kubevirt.io/domain": "other"},
        }
    }
    assert launcher_vmi(pod) == "db"
    assert launcher_vmi({"metadata": {"labels": {"app": "web"}}}) == ""


@pytest.mark.parametrize(
    ("mode", "groups", "apis"),
    [
        ("auto", {"kubevirt.io": ("v1", "v1alpha3")}, [Virt.KUBEVIRT]),
        (
            "auto",
            {"kubevirt.io": ("v1",), "virtualization.deckhouse.io": ("v1alpha2",)},
            [Virt.DECKHOUSE, Virt.KUBEVIRT],
        ),
        ("auto", {"kubevirt.io": ("v1alpha3",)}, []),  # only a version nodefence does not speak
        ("auto", {}, []),
        ("kubevirt", {}, [Virt.KUBEVIRT]),  # named: used whatever discovery says
    ],
)
def test_auto_uses_every_vm_api_the_server_serves(
    mode: str, groups: dict[str, tuple[str, ...]], apis: list[Virt]
) -> None:
    assert chosen(mode, groups) == apis


def test_vm_keys_of_both_apis_never_collide_and_split_back() -> None:
    assert vm_key(Virt.DECKHOUSE, "prod", "db") != vm_key(Virt.KUBEVIRT, "prod", "db")
    assert split_key(vm_key(Virt.KUBEVIRT, "prod", "db")) == (Virt.KUBEVIRT, "prod", "db")
    assert split_key("prod/db") == (Virt.DECKHOUSE, "prod", "db")


class FakeApi:
    """The ClusterApi calls of VirtLayer: discovery, Deckhouse's VMs, KubeVirt's lists."""

    def __init__(self, groups: dict[str, tuple[str, ...]], kubevirt_status: int | None) -> None:
        self.groups = groups
        self.kubevirt_status = kubevirt_status  # None: readable; else the error's status
        self.discoveries = 0

    async def served_groups(self) -> dict[str, tuple[str, ...]]:
        self.discoveries += 1
        return self.groups

    async def list_vms(self) -> list[Obj]:
        meta = {"namespace": "prod", "name": "db"}
        return [{"metadata": meta, "spec": {"runPolicy": "AlwaysOn"}, "status": {}}]

    async def list_kubevirt(self, plural: str, namespace: str | None = None) -> list[Obj]:
        if self.kubevirt_status is not None:
            raise ClusterError(f"list {plural}: forbidden", self.kubevirt_status)
        return [vm(runStrategy="Always")] if plural == "virtualmachines" else []


BOTH = {"kubevirt.io": ("v1",), "virtualization.deckhouse.io": ("v1alpha2",)}


async def test_auto_leaves_out_an_api_it_may_not_read_and_fences_on_with_the_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = VirtLayer(cast(ClusterApi, FakeApi(BOTH, 403)), "auto")
    assert [v.key for v in await layer.list_vms()] == ["prod/db"]
    assert "deploy the component deploy/components/kubevirt" in caplog.text
    readable = VirtLayer(cast(ClusterApi, FakeApi(BOTH, None)), "auto")
    assert sorted(v.key for v in await readable.list_vms()) == ["kubevirt:prod/db", "prod/db"]


@pytest.mark.parametrize(("mode", "maintenance"), [("kubevirt", False), ("auto", True)])
async def test_a_named_api_or_maintenance_never_leaves_out_vms_it_cannot_read(
    mode: str, maintenance: bool
) -> None:
    # maintenance: a VM not seen would be left on a node declared empty
    layer = VirtLayer(cast(ClusterApi, FakeApi(BOTH, 403)), mode, maintenance=maintenance)
    with pytest.raises(ClusterError):
        await layer.list_vms()


async def test_auto_discovers_again_only_after_rediscover_seconds() -> None:
    api = FakeApi({"kubevirt.io": ("v1",)}, None)
    now = [0.0]
    layer = VirtLayer(cast(ClusterApi, api), "auto", clock=lambda: now[0], rediscover=60.0)
    for t in (0.0, 30.0, 59.0):
        now[0] = t
        assert [d.virt for d in await layer.drivers()] == [Virt.KUBEVIRT]
    assert api.discoveries == 1
    api.groups = BOTH  # Deckhouse installed later
    now[0] = 61.0
    assert [d.virt for d in await layer.drivers()] == [Virt.DECKHOUSE, Virt.KUBEVIRT]
