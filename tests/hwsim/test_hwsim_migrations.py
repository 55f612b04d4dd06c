"""hwsim's live migrations and webhooks behave as Deckhouse Virtualization's (issue 21): queued
under the migration limits, targets chosen by capacity, phases and reasons with progress,
`liveMigrationPolicy` and `spec.force`, no progress from a NotReady source, the admission
webhook's refusals, and evacuation when a launcher pod is evicted. Driven by `tick()` on a fake
clock over the API emulator's store (the rig of `tests.hwsim.test_hwsim_coldstandby`)."""

from __future__ import annotations

from typing import Any

import pytest

from nodefence.hwsim.kube import ObjectStore, SimKubelet
from nodefence.hwsim.kube.builtin import builtin_types
from nodefence.hwsim.kube.errors import Forbidden, TooManyRequests
from nodefence.hwsim.kube.eviction import evict
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.virtualization.evacuation import EVACUATION_ANNOTATION
from nodefence.hwsim.virtualization.migration_state import (
    ABORTED,
    DIRTY_ANNOTATION,
    MIGRATION_PENDING,
    NOT_APPLICABLE_POLICY,
    NOT_CONVERGING,
    SYNCING,
    TARGET_UNSCHEDULABLE,
    MigrationLimits,
)
from nodefence.hwsim.virtualization.vms import VM_LABEL, place_vms
from tests.support.coldstandby_rig import MIGRATION, Rig, condition, make_rig

Obj = dict[str, Any]


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def reason(rig: Rig, op: str) -> str:
    return str(condition(rig.op(op), "Completed")["reason"])


def message(rig: Rig, op: str) -> str:
    return str(condition(rig.op(op), "Completed")["message"])


def set_spec(rig: Rig, vm: str, **spec: Any) -> None:
    rig.store.patch("virtualmachines", vm, {"spec": spec}, "default")


def evict_op(rig: Rig, vm: str, name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "virtualization.deckhouse.io/v1alpha2",
        "kind": "VirtualMachineOperation",
        "metadata": {"name": name},
        "spec": {"type": "Evict", "virtualMachineName": vm, **spec},
    }
    rig.store.create("vmop", body, "default")
    return name


# ---- the queue ---------------------------------------------------------------------------


def test_migrations_beyond_the_limits_wait_pending_with_the_limit_named() -> None:
    rig = make_rig(nodes=5, limits=MigrationLimits(per_cluster=3, outbound_per_node=2))
    place_vms(rig.store, rig.ctl, 3, ["node-1"])
    place_vms(rig.store, rig.ctl, 1, ["node-2"], prefix="b-")
    ops = [rig.evict(f"vm-{i}", f"op-{i}") for i in (1, 2, 3)] + [rig.evict("b-1", "op-b")]
    rig.run()
    phases = [rig.op(o)["phase"] for o in ops]
    assert phases == ["InProgress", "InProgress", "Pending", "InProgress"]
    assert reason(rig, "op-3") == MIGRATION_PENDING
    assert (
        message(rig, "op-3")
        == 'Waiting for a free outbound migration slot on source node "node-1".'
    )
    assert rig.op("op-3")["progress"] == "0%" and rig.where("vm-3") == ("Running", "node-1")
    rig.run(MIGRATION + 0.2)  # the first ones are done: vm-3 goes
    assert rig.op("op-3")["phase"] in ("InProgress", "Completed")


def test_the_cluster_limit_queues_migrations_of_every_node() -> None:
    rig = make_rig(nodes=4, limits=MigrationLimits(per_cluster=1))
    place_vms(rig.store, rig.ctl, 2, ["node-1", "node-2"])
    first, second = rig.evict("vm-1", "first"), rig.evict("vm-2", "second")
    rig.run()
    assert rig.op(first)["phase"] == "InProgress" and rig.op(second)["phase"] == "Pending"
    assert "the cluster live migration limit is reached" in message(rig, second)
    rig.run(2 * MIGRATION + 0.5)
    assert rig.op(second)["phase"] == "Completed"


def test_one_inbound_migration_per_target_node_at_a_time() -> None:
    rig = make_rig(nodes=3)
    place_vms(rig.store, rig.ctl, 2, ["node-1"])
    rig.set_node("node-2", unschedulable=True)  # both must go to node-3
    a, b = rig.evict("vm-1", "a"), rig.evict("vm-2", "b")
    rig.run()
    assert rig.op(a)["phase"] == "InProgress" and rig.op(b)["phase"] == "Pending"
    assert message(rig, b) == 'Waiting for a free inbound migration slot on target node "node-3".'
    rig.run(2 * MIGRATION + 0.5)
    assert rig.where("vm-1") == rig.where("vm-2") == ("Running", "node-3")


# ---- capacity --------------------------------------------------------------------------------


def test_a_full_node_is_no_target_and_the_scheduler_says_why() -> None:
    rig = make_rig(nodes=3)
    place_vms(rig.store, rig.ctl, 1, ["node-1"], ["AlwaysOn"], prefix="big-")
    set_spec(rig, "big-1", memory={"size": "40Gi"})
    place_vms(rig.store, rig.ctl, 2, ["node-2", "node-3"], ["AlwaysOn"], prefix="fill-")
    for vm in ("fill-1", "fill-2"):
        set_spec(rig, vm, memory={"size": "32Gi"})  # of the 64Gi each node offers
    op = rig.evict("big-1")
    rig.run(MIGRATION)
    assert (rig.op(op)["phase"], reason(rig, op)) == ("InProgress", TARGET_UNSCHEDULABLE)
    assert message(rig, op) == (
        "0/3 nodes are available: 2 Insufficient memory, 1 node(s) already run the VM."
    )
    rig.store.delete("virtualmachines", "fill-2", "default")  # room frees up: it goes
    rig.run(MIGRATION + 0.2)
    assert rig.where("big-1") == ("Running", "node-3")


# ---- phases, progress, policy ----------------------------------------------------------------


def test_a_migration_reports_its_reason_and_progress_as_it_goes(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    op = rig.evict("vm-1")
    seen: list[tuple[str, str, str]] = []
    for _ in range(12):
        rig.run(MIGRATION / 10)
        status = rig.op(op)
        now = (status["phase"], reason(rig, op), status.get("progress", ""))
        if not seen or seen[-1] != now:
            seen.append(now)
    assert seen[0] == ("InProgress", "TargetPreparing", "3%")
    syncing = [p for phase, r, p in seen if r == SYNCING]
    assert len(syncing) >= 3 and all(10 <= int(p[:-1]) <= 90 for p in syncing)
    assert [int(p[:-1]) for p in syncing] == sorted(int(p[:-1]) for p in syncing)
    assert seen[-1] == ("Completed", "Completed", "100%")


@pytest.mark.parametrize(
    ("policy", "force", "why"),
    [
        ("AlwaysSafe", True, "force=true is not applicable for VM liveMigrationPolicy AlwaysSafe"),
        (
            "AlwaysForced",
            False,
            "force=false is not applicable for VM liveMigrationPolicy AlwaysForced",
        ),
    ],
)
def test_force_against_an_always_policy_makes_the_operation_invalid(
    rig: Rig, policy: str, force: bool, why: str
) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    set_spec(rig, "vm-1", liveMigrationPolicy=policy)
    op = evict_op(rig, "vm-1", "forced", force=force)
    rig.run()
    assert (rig.op(op)["phase"], reason(rig, op)) == ("Failed", NOT_APPLICABLE_POLICY)
    assert message(rig, op) == f"Operation is invalid: {why}"


@pytest.mark.parametrize(
    ("policy", "force", "converges"),
    [
        ("PreferSafe", None, False),
        ("PreferSafe", True, True),
        ("AlwaysForced", None, True),
        ("PreferForced", False, False),
    ],
)
def test_a_busy_vm_converges_only_with_cpu_throttling(
    policy: str, force: bool | None, converges: bool
) -> None:
    rig = make_rig(progress_timeout=20.0)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.store.patch(
        "virtualmachines",
        "vm-1",
        {"metadata": {"annotations": {DIRTY_ANNOTATION: "high"}}, "spec": {
            "liveMigrationPolicy": policy}},
        "default",
    )  # fmt: skip
    op = evict_op(rig, "vm-1", "move", **({} if force is None else {"force": force}))
    rig.run(3 * MIGRATION)
    if converges:
        assert rig.op(op)["phase"] == "Completed" and rig.where("vm-1")[1] != "node-1"
        return
    assert (rig.op(op)["phase"], reason(rig, op)) == ("InProgress", NOT_CONVERGING)
    rig.run(20.0, step=1.0)
    assert (rig.op(op)["phase"], reason(rig, op)) == ("Failed", NOT_CONVERGING)
    assert rig.where("vm-1") == ("Running", "node-1") and rig.pods("vm-1") == [
        ("node-1", "Running")
    ]


def test_a_migration_from_a_not_ready_source_makes_no_progress_and_is_aborted() -> None:
    rig = make_rig(progress_timeout=10.0)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    op = rig.evict("vm-1")
    rig.run(0.3)  # preparing: then node-1 is cut off and goes NotReady
    ready = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
    rig.store.patch("nodes", "node-1", {"status": {"conditions": [ready]}}, subresource="status")
    rig.run(5.0)
    assert rig.op(op)["phase"] == "InProgress" and rig.where("vm-1")[1] == "node-1"
    stuck = rig.op(op)["progress"]
    rig.run(6.0, step=0.5)
    assert rig.op(op)["progress"] == stuck or rig.op(op)["phase"] == "Failed"
    assert (rig.op(op)["phase"], reason(rig, op)) == ("Failed", ABORTED)
    assert "stuck for 10 sec" in message(rig, op)
    assert rig.ctl.running_places("default", "vm-1") == {"node-1"}


# ---- the admission webhook -------------------------------------------------------------------


def test_a_stop_may_supersede_an_evict_but_no_second_evict_is_admitted(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    evict_op(rig, "vm-1", "first")
    with pytest.raises(Forbidden) as refused:
        evict_op(rig, "vm-1", "second")
    assert refused.value.code == 403
    assert str(refused.value) == (
        'admission webhook "vmop.virtualization-controller.validate.d8-virtualization" denied '
        'the request: VMOP cannot be executed now. Previously created operation "first" should '
        "finish first"
    )
    stop = {"metadata": {"name": "stop"}, "spec": {"type": "Stop", "virtualMachineName": "vm-1"}}
    rig.store.create("vmop", stop, "default")  # admitted: a Stop supersedes an Evict


def local_disk_rig(access: str) -> Rig:
    disks = ResourceType("virtualization.deckhouse.io", "v1alpha2", "VirtualDisk", "virtualdisks")
    store = ObjectStore([*builtin_types(), disks])  # claims are built in
    rig = make_rig(store=store)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    disk = {"metadata": {"name": "vm-1-root"}, "status": {"target": {"persistentVolumeClaim": "c"}}}
    rig.store.create("virtualdisks", disk, "default")
    claim = {"metadata": {"name": "c"}, "spec": {"accessModes": [access]}}
    rig.store.create("persistentvolumeclaims", claim, "default")
    return rig


def test_community_edition_refuses_to_migrate_a_vm_with_a_local_disk() -> None:
    with pytest.raises(Forbidden, match=r"local \(RWO\) virtual disks is available only in the"):
        evict_op(local_disk_rig("ReadWriteOnce"), "vm-1", "move")
    rig = local_disk_rig("ReadWriteMany")
    evict_op(rig, "vm-1", "move")
    rig.run(MIGRATION + 0.1)
    assert rig.op("move")["phase"] == "Completed"


# ---- evicting a launcher pod -----------------------------------------------------------------


def launcher(rig: Rig, vm: str) -> str:
    pods = rig.store.list("pods", "default", label_selector=f"{VM_LABEL}={vm}")["items"]
    return str(pods[0]["metadata"]["name"])


def test_evicting_the_launcher_pod_of_a_vm_evacuates_it_by_live_migration(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    pod = launcher(rig, "vm-1")
    with pytest.raises(
        TooManyRequests, match='Eviction triggered evacuation of VMI "default/vm-1"'
    ):
        evict(rig.store, "default", pod, {})
    assert condition(rig.vm("vm-1")["status"], "EvictionRequired")["status"] == "True"
    assert rig.pods("vm-1") == [("node-1", "Running")]  # the pod was not deleted
    rig.run()
    [op] = rig.store.list("vmop", "default")["items"]
    assert op["metadata"]["name"].startswith("evacuation-")
    assert op["metadata"]["annotations"] == {EVACUATION_ANNOTATION: "true"}
    rig.run(MIGRATION + 0.2)
    assert rig.where("vm-1")[0] == "Running" and rig.where("vm-1")[1] != "node-1"
    assert all(c["type"] != "EvictionRequired" for c in rig.vm("vm-1")["status"]["conditions"])
    assert rig.ctl.violations() == []


def test_a_vm_that_cannot_migrate_refuses_the_eviction_of_its_pod(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    status = rig.vm("vm-1")["status"]
    conditions = [c for c in status["conditions"] if c["type"] != "Migratable"]
    conditions.append({"type": "Migratable", "status": "False", "reason": "NotMigratable"})
    rig.store.patch(
        "vm", "vm-1", {"status": {"conditions": conditions}}, "default", subresource="status"
    )
    with pytest.raises(TooManyRequests, match="not live-migratable"):
        evict(rig.store, "default", launcher(rig, "vm-1"), {})
    rig.run()
    assert rig.store.list("vmop", "default")["items"] == []


def test_a_node_reports_its_allocatable_cpu_and_memory() -> None:
    store = ObjectStore()
    SimKubelet(store, "n1", lambda: True, allocatable={"cpu": "8", "memory": "32Gi"}).tick()
    status = store.get("nodes", "n1")["status"]
    assert status["allocatable"] == {"cpu": "8", "memory": "32Gi"} == status["capacity"]
