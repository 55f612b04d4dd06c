"""The ColdStandby controller emulator (nodefence.hwsim.virtualization.coldstandby): node loss,
split brain, Evict.

Most tests drive `tick()` with an injected clock over the API emulator's store, with nodes
registered by `SimKubelet`s whose power (and network link) the test controls, and the
attach/detach controller (VM disks are ReadWriteOnce claims) on the same clock. A VM restarts
only when its launcher pod is gone: `Rig.release` does what a fencer does after a proven
power-off (taint out-of-service, force-delete the node's pods), PodGC does it on its own only
after its quarantine. Two tests run the controller in its thread behind the real HTTP server
and watch it through the official client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from nodefence.hwsim.kube import KubeApiServer, NodeLifecycleController, SimKubelet
from nodefence.hwsim.kube.attachdetach import AttachDetachController
from nodefence.hwsim.kube.errors import Forbidden
from nodefence.hwsim.kube.podgc import PodGC
from nodefence.hwsim.virtualization.coldstandby import ColdStandbyController
from nodefence.hwsim.virtualization.coldstandby_nodes import OUT_OF_SERVICE
from nodefence.hwsim.virtualization.migration_state import (
    NOT_APPLICABLE_PHASE,
    NOT_FOUND,
    NOT_READY_TO_EXECUTE,
    OPERATION_FAILED,
    TARGET_UNSCHEDULABLE,
)
from nodefence.hwsim.virtualization.vms import VM_LABEL, make_vm, place_vms
from tests.support.clock import FakeClock
from tests.support.coldstandby_rig import (
    ATTACH,
    BOOT,
    MAX_WAIT,
    MIGRATION,
    VIRT,
    Obj,
    Rig,
    condition,
    make_rig,
)
from tests.support.wait import eventually_blocking


@pytest.fixture
def rig() -> Rig:
    return make_rig()


# ---- placement ------------------------------------------------------------------------------


def test_place_vms_spreads_running_vms_round_robin_with_their_launcher_pods(rig: Rig) -> None:
    vms = place_vms(rig.store, rig.ctl, 8, ["node-1", "node-2", "node-3"])
    by_name = {v["metadata"]["name"]: v for v in vms}
    assert list(by_name) == [f"vm-{i}" for i in range(1, 9)]
    vm1 = by_name["vm-1"]
    assert vm1["apiVersion"] == "virtualization.deckhouse.io/v1alpha2"
    assert vm1["spec"] == {
        "virtualMachineClassName": "generic",
        "runPolicy": "AlwaysOn",
        "cpu": {"cores": 1},
        "memory": {"size": "1Gi"},
        "blockDeviceRefs": [{"kind": "VirtualDisk", "name": "vm-1-root"}],
    }
    status = vm1["status"]
    assert (status["phase"], status["nodeName"]) == ("Running", "node-1")
    assert status["ipAddress"].startswith("10.66.")
    assert status["stats"]["lastStartTime"]
    assert condition(status, "AgentReady")["status"] == "True"
    assert condition(status, "Migratable")["status"] == "True"
    [pod] = status["virtualMachinePods"]
    assert pod["active"] is True and pod["name"].startswith("virt-launcher-vm-1-")
    launcher = rig.store.get("pods", pod["name"], "default")
    assert launcher["metadata"]["labels"][VM_LABEL] == "vm-1"
    assert (launcher["spec"]["nodeName"], launcher["status"]["phase"]) == ("node-1", "Running")
    policies = [v["spec"]["runPolicy"] for v in vms]
    assert policies[:4] == ["AlwaysOn", "AlwaysOnUnlessStoppedManually", "Manual", "AlwaysOff"]
    assert [v["status"].get("nodeName") for v in vms] == [
        "node-1", "node-2", "node-3", None, "node-2", "node-3", "node-1", None,
    ]  # fmt: skip
    assert rig.where("vm-4") == ("Stopped", None) and rig.pods("vm-4") == []
    assert len({v["status"]["ipAddress"] for v in vms}) == 8
    assert rig.ctl.running_places("default", "vm-2") == {"node-2"}
    assert rig.ctl.running_places("default", "vm-4") == set()


def test_place_vms_again_takes_fresh_names_and_addresses(rig: Rig) -> None:
    first = place_vms(rig.store, rig.ctl, 3, ["node-1"])
    second = place_vms(rig.store, rig.ctl, 3, ["node-2"])
    names = [v["metadata"]["name"] for v in first + second]
    assert names == [f"vm-{i}" for i in range(1, 7)]
    assert len({v["status"]["ipAddress"] for v in first + second}) == 6


def test_a_vm_placed_by_hand_is_adopted_as_running_where_its_status_says(rig: Rig) -> None:
    rig.store.create("vm", make_vm("hand", run_policy="AlwaysOn"), "default")
    status = make_vm("hand", node="node-2", ip_address="10.66.9.9")["status"]
    rig.store.patch("vm", "hand", {"status": status}, "default", subresource="status")
    rig.run()
    assert rig.ctl.running_places("default", "hand") == {"node-2"}


# ---- node loss --------------------------------------------------------------------------------


def test_vms_restart_elsewhere_once_a_fencer_released_their_pods_after_the_boot_delay(
    rig: Rig,
) -> None:
    place_vms(rig.store, rig.ctl, 4, ["node-1"])  # one VM of each run policy
    rig.run()
    rig.fence("node-1")  # proven off, tainted, pods force-deleted, Node deleted
    rig.run()
    assert rig.where("vm-1") == ("Starting", None)
    assert rig.where("vm-2") == ("Starting", None)
    assert rig.where("vm-3") == ("Stopped", None)  # Manual
    assert rig.where("vm-4") == ("Stopped", None)  # AlwaysOff
    rig.run(BOOT - 0.2)
    assert rig.where("vm-1") == ("Starting", None)
    rig.run(ATTACH + 0.3)
    for name in ("vm-1", "vm-2"):
        phase, node = rig.where(name)
        assert phase == "Running" and node in ("node-2", "node-3")
        assert rig.pods(name) == [(node, "Running")]
        assert rig.ctl.running_places("default", name) == {node}
    assert {rig.where("vm-1")[1], rig.where("vm-2")[1]} == {"node-2", "node-3"}  # spread
    assert rig.where("vm-3") == ("Stopped", None) and rig.where("vm-4") == ("Stopped", None)
    assert rig.ctl.violations() == []
    history = {r.name: r for r in rig.ctl.history}
    assert set(history) == {"vm-1", "vm-2", "vm-3"}  # vm-4 was not running
    assert history["vm-1"].why == "launcher pod deleted" and history["vm-1"].restart_expected
    downtime = history["vm-1"].downtime
    assert downtime is not None and BOOT <= downtime <= BOOT + ATTACH + 0.1
    assert history["vm-3"].running_at is None and not history["vm-3"].restart_expected
    assert not history["vm-1"].lost_node_powered  # fenced first


def test_a_deleted_node_alone_changes_nothing_until_podgc_then_multi_attach_holds_the_disk(
    rig: Rig,
) -> None:
    rig.gc = PodGC(rig.store, quarantine=40.0, period=1.0, monotonic=rig.clock)
    place_vms(rig.store, rig.ctl, 1, ["node-1"], policies=["AlwaysOn"])
    rig.run(0.5)  # the kubelet reports the disk in use; the controller sees it
    rig.cut_power("node-1")
    rig.store.delete("nodes", "node-1")  # deleted without releasing anything
    rig.run(39)
    assert rig.where("vm-1") == ("Running", "node-1")  # the API cannot know
    rig.run(2)  # PodGC's quarantine is over: it force-deletes the pod, the VM restarts
    assert rig.where("vm-1")[0] == "Pending"
    running = condition(rig.vm("vm-1")["status"], "Running")
    assert running["message"].startswith('Multi-Attach error for volume "pvc-default-vm-1-root"')
    rig.run(MAX_WAIT - 2)
    assert rig.where("vm-1")[0] == "Pending"  # node-1's last volumesInUse still hold the disk
    rig.run(2 + ATTACH + BOOT)
    assert rig.where("vm-1")[0] == "Running"
    assert rig.ctl.violations() == []


def test_the_out_of_service_taint_on_a_not_ready_node_frees_its_vms_and_keeps_the_node(
    rig: Rig,
) -> None:
    from nodefence.hwsim.kube.podgc import TaintEvictionController

    manager = TaintEvictionController(rig.store, monotonic=rig.clock)
    rig.gc = PodGC(rig.store, period=0.1, monotonic=rig.clock)
    place_vms(rig.store, rig.ctl, 3, ["node-1"], policies=["AlwaysOn", "Manual", "AlwaysOn"])
    rig.run()
    rig.cut_power("node-1")
    taint = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
    rig.set_node("node-1", taints=[taint])
    manager.tick()  # the taint manager evicts every pod: Terminating, nobody finishes them
    rig.run(1)
    assert rig.where("vm-1") == ("Running", "node-1")  # PodGC waits: the node reads Ready
    ready = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
    rig.store.patch("nodes", "node-1", {"status": {"conditions": [ready]}}, subresource="status")
    rig.run(ATTACH + BOOT + 0.2)
    assert rig.where("vm-1")[0] == "Running" and rig.where("vm-1")[1] != "node-1"
    assert rig.where("vm-3")[0] == "Running" and rig.where("vm-3")[1] != "node-1"
    assert rig.where("vm-2") == ("Stopped", None)
    assert rig.store.get("nodes", "node-1")  # still there
    assert rig.store.list("pods", field_selector="spec.nodeName=node-1")["items"] == []


def test_an_out_of_service_taint_with_another_effect_changes_nothing(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.set_node("node-1", taints=[{"key": OUT_OF_SERVICE, "effect": "NoSchedule"}])
    rig.run(BOOT + 1)
    assert rig.where("vm-1") == ("Running", "node-1")


def test_a_node_that_is_only_not_ready_changes_nothing(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 4, ["node-1"])
    mono = FakeClock(1000.0)
    lifecycle = NodeLifecycleController(rig.store, node_monitor_grace=5, monotonic=mono)
    lifecycle.tick()
    rig.cut_power("node-1")
    mono.now += 6
    lifecycle.tick()
    node = rig.store.get("nodes", "node-1")
    assert condition(node["status"], "Ready")["status"] == "Unknown"
    rig.run(BOOT * 3)
    for i in (1, 2, 3):
        assert rig.where(f"vm-{i}") == ("Running", "node-1")  # the API does not know yet
        assert rig.pods(f"vm-{i}") == [("node-1", "Running")]
    assert rig.ctl.history == []


def test_power_loss_kills_the_processes_at_once_while_the_api_still_says_running(
    rig: Rig,
) -> None:
    place_vms(rig.store, rig.ctl, 2, ["node-1", "node-2"])
    rig.cut_power("node-1")
    assert rig.ctl.running_places("default", "vm-1") == set()  # no tick needed
    assert rig.ctl.running_places("default", "vm-2") == {"node-2"}
    rig.run(1)
    assert rig.where("vm-1") == ("Running", "node-1")
    rig.power["node-1"] = True  # power back: the processes do not come back by themselves
    assert rig.ctl.running_places("default", "vm-1") == set()


def test_a_partitioned_node_released_without_power_off_runs_its_vm_twice(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.partition("node-1")  # powered, but its kubelet and agent are cut off
    rig.kubelets["node-1"].tick()
    rig.release("node-1")  # what skipping fencing looks like
    rig.run(BOOT + ATTACH)
    phase, node = rig.where("vm-1")
    assert phase == "Running" and node != "node-1"
    assert rig.ctl.running_places("default", "vm-1") == {"node-1", node}
    assert rig.ctl.history[0].lost_node_powered
    [violation] = rig.ctl.violations()
    assert "default/vm-1" in violation and "node-1" in violation and str(node) in violation
    brain = rig.ctl.split_brains[0]
    assert brain.nodes == tuple(sorted(("node-1", str(node))))
    assert 1000 + BOOT <= brain.seen_at <= 1000 + BOOT + ATTACH  # when the second copy started


def test_a_transient_double_run_is_still_reported_after_it_ends(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.release("node-1")
    rig.run(BOOT + ATTACH)
    rig.cut_power("node-1")  # fenced too late
    rig.run(0.5)
    assert len(rig.ctl.running_places("default", "vm-1")) == 1
    assert len(rig.ctl.violations()) == 1


def test_a_node_that_rebooted_fails_its_launcher_pods_and_the_vms_restart(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 2, ["node-1"], policies=["AlwaysOn", "Manual"])
    rig.run()
    rig.cut_power("node-1")
    rig.kubelets["node-1"].tick()
    rig.store.delete("nodes", "node-1")
    rig.power["node-1"] = True  # the fencer's "reboot": the kubelet registers a new Node
    rig.kubelets["node-1"].tick()
    rig.run(BOOT + 2 * ATTACH)  # the kubelet fails the old pods first, then all as usual
    assert rig.where("vm-1")[0] == "Running"
    assert rig.where("vm-2") == ("Stopped", None)
    assert [r.why for r in rig.ctl.history] == ["launcher pod Failed", "launcher pod Failed"]
    assert rig.ctl.violations() == []


def test_with_no_eligible_node_the_vm_is_pending_with_the_reason_until_one_appears() -> None:
    rig = make_rig(nodes=2)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.set_node("node-2", unschedulable=True)
    rig.fence("node-1")
    rig.run(BOOT + 0.5)
    assert rig.where("vm-1") == ("Pending", None)
    status = rig.vm("vm-1")["status"]
    cond = condition(status, "Running")
    assert cond["message"] == "0/1 nodes are available: 1 node(s) were unschedulable."
    version = rig.vm("vm-1")["metadata"]["resourceVersion"]
    rig.run(1)
    assert rig.vm("vm-1")["metadata"]["resourceVersion"] == version  # no write per tick
    rig.set_node("node-2", unschedulable=None)
    rig.run(ATTACH + BOOT)  # placed at once, then its disk is attached and it boots
    assert rig.where("vm-1") == ("Running", "node-2")
    assert rig.ctl.running_places("default", "vm-1") == {"node-2"}


def test_cordoned_tainted_and_not_ready_nodes_are_never_chosen() -> None:
    rig = make_rig(nodes=5)
    place_vms(rig.store, rig.ctl, 6, ["node-1"], policies=["AlwaysOn"])
    rig.set_node("node-2", unschedulable=True)
    rig.set_node("node-3", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    ready = {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}
    rig.store.patch("nodes", "node-4", {"status": {"conditions": [ready]}}, subresource="status")
    rig.fence("node-1")
    rig.run(BOOT + ATTACH)
    assert {rig.where(f"vm-{i}") for i in range(1, 7)} == {("Running", "node-5")}


def test_the_least_loaded_node_is_chosen() -> None:
    rig = make_rig(nodes=3)
    place_vms(rig.store, rig.ctl, 3, ["node-2"], policies=["Manual"])
    place_vms(rig.store, rig.ctl, 1, ["node-1"], policies=["AlwaysOn"])
    rig.fence("node-1")
    rig.run(BOOT + ATTACH)
    assert rig.where("vm-4") == ("Running", "node-3")


def test_work_per_tick_is_bounded_and_the_rest_follows_next_ticks() -> None:
    rig = make_rig(nodes=2, max_actions=2)
    place_vms(rig.store, rig.ctl, 6, ["node-1"], policies=["Manual"])
    rig.fence("node-1")
    rig.ctl.tick()
    assert [rig.where(f"vm-{i}")[0] for i in range(1, 7)].count("Stopped") == 2
    rig.run(0.3)
    assert all(rig.where(f"vm-{i}") == ("Stopped", None) for i in range(1, 7))


def test_odd_objects_are_skipped_and_the_rest_is_still_handled(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"], policies=["AlwaysOn"])
    rig.store.create("vm", {"metadata": {"name": "odd"}, "spec": "nonsense"}, "default")
    rig.store.patch("vm", "odd", {"status": "garbage"}, "default", subresource="status")
    rig.store.create("vm", {"metadata": {"name": "odd2"}}, "default")
    bad = {"phase": "Running", "nodeName": 42, "conditions": "x"}
    rig.store.patch("vm", "odd2", {"status": bad}, "default", subresource="status")
    rig.store.create("vmop", {"metadata": {"name": "no-spec"}}, "default")
    rig.fence("node-1")
    rig.run(BOOT + ATTACH)
    assert rig.where("vm-1")[0] == "Running"
    assert rig.op("no-spec")["phase"] == "Failed"


def test_deleting_a_vm_takes_its_pod_and_forgets_where_it_ran(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.store.delete("vm", "vm-1", "default")
    rig.run()
    assert rig.store.list("pods", "default")["items"] == []
    assert rig.ctl.running_places("default", "vm-1") == set()


# ---- Evict ------------------------------------------------------------------------------------


def test_evict_migrates_a_running_vm_to_another_node_and_completes(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"], policies=["AlwaysOn"])
    started = rig.vm("vm-1")["status"]["stats"]["lastStartTime"]
    phases = rig.store.watch("vm", "default", resource_version=rig.store.resource_version)
    op = rig.evict("vm-1")
    rig.run()
    assert rig.op(op)["phase"] == "InProgress"
    status = rig.vm("vm-1")["status"]
    assert (status["phase"], status["nodeName"]) == ("Migrating", "node-1")
    assert [p["active"] for p in status["virtualMachinePods"]] == [True, False]
    target = status["migrationState"]["target"]["node"]
    assert target in ("node-2", "node-3")
    assert sorted(rig.pods("vm-1")) == sorted([("node-1", "Running"), (target, "Running")])
    assert rig.ctl.running_places("default", "vm-1") == {"node-1"}
    rig.run(MIGRATION)
    assert rig.where("vm-1") == ("Running", target)
    assert rig.pods("vm-1") == [(target, "Running")]
    assert rig.ctl.running_places("default", "vm-1") == {target}
    done = rig.op(op)
    assert done["phase"] == "Completed"
    assert condition(done, "Completed")["status"] == "True"
    status = rig.vm("vm-1")["status"]
    assert status["migrationState"]["result"] == "Succeeded"
    assert status["stats"]["lastStartTime"] == started  # live: no restart
    seen = []
    while (event := phases.get(0)) is not None:
        phase = event.object["status"]["phase"]
        if not seen or seen[-1] != phase:
            seen.append(phase)
    assert seen == ["Migrating", "Running"]
    assert rig.ctl.violations() == []


def test_the_deprecated_migrate_type_works_like_evict(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    op = rig.evict("vm-1", op_type="Migrate")
    rig.run(MIGRATION + 0.1)
    assert rig.op(op)["phase"] == "Completed"
    assert rig.where("vm-1")[1] != "node-1"


def test_evict_never_targets_cordoned_or_tainted_nodes() -> None:
    rig = make_rig(nodes=4)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.set_node("node-2", unschedulable=True)
    rig.set_node("node-3", taints=[{"key": "x", "effect": "NoExecute"}])
    op = rig.evict("vm-1")
    rig.run(MIGRATION + 0.1)
    assert rig.op(op)["phase"] == "Completed"
    assert rig.where("vm-1") == ("Running", "node-4")


@pytest.mark.parametrize(
    ("case", "reason", "message"),
    [
        ("stopped", NOT_APPLICABLE_PHASE, "not applicable for VirtualMachine in phase Stopped"),
        ("unknown", NOT_FOUND, "VirtualMachine not found"),
    ],
)
def test_an_evict_that_cannot_run_fails_with_the_reason(
    rig: Rig, case: str, reason: str, message: str
) -> None:
    place_vms(rig.store, rig.ctl, 4, ["node-1"])  # vm-4 is AlwaysOff: Stopped
    vm = {"stopped": "vm-4", "unknown": "no-such-vm"}[case]
    op = rig.evict(vm)
    rig.run(MIGRATION + 0.1)
    status = rig.op(op)
    assert status["phase"] == "Failed"
    completed = condition(status, "Completed")
    assert (completed["status"], completed["reason"]) == ("False", reason)
    assert message in completed["message"]
    assert rig.where("vm-1") == ("Running", "node-1")
    assert rig.pods("vm-1") == [("node-1", "Running")]


def test_no_other_node_names_why_each_node_was_refused() -> None:
    rig = make_rig(nodes=2)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.set_node("node-2", unschedulable=True)
    op = rig.evict("vm-1")
    rig.run()
    message = condition(rig.op(op), "Completed")["message"]
    assert message == (
        "0/2 nodes are available: 1 node(s) already run the VM, 1 node(s) were unschedulable."
    )


def test_an_evict_with_no_target_waits_then_times_out_preparing_the_target() -> None:
    rig = make_rig(prepare_timeout=30.0)
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    rig.set_node("node-2", unschedulable=True)
    rig.set_node("node-3", unschedulable=True)
    op = rig.evict("vm-1")
    rig.run(29.0, step=1.0)
    status = rig.op(op)
    assert (status["phase"], status["progress"]) == ("InProgress", "2%")
    assert condition(status, "Completed")["reason"] == TARGET_UNSCHEDULABLE
    assert "0/3 nodes are available: " in condition(status, "Completed")["message"]
    rig.run(2.0, step=1.0)
    status = rig.op(op)
    assert status["phase"] == "Failed"
    completed = condition(status, "Completed")
    assert (completed["reason"], completed["message"]) == (
        OPERATION_FAILED,
        "Timed out preparing the migration target.",
    )
    assert rig.where("vm-1") == ("Running", "node-1")


def test_a_second_evict_while_one_is_in_progress_is_refused_by_the_webhook(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    first = rig.evict("vm-1", "first")
    rig.run()
    with pytest.raises(Forbidden, match='operation "first" should finish first'):
        rig.evict("vm-1", "second")
    rig.store.admission.clear()  # without the webhook the controller refuses it itself
    second = rig.evict("vm-1", "second")
    rig.run(MIGRATION)
    assert rig.op(first)["phase"] == "Completed"
    assert condition(rig.op(second), "Completed")["reason"] == NOT_READY_TO_EXECUTE


def test_a_migration_whose_target_loses_power_fails_and_the_vm_stays(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    op = rig.evict("vm-1")
    rig.run()
    target = rig.vm("vm-1")["status"]["migrationState"]["target"]["node"]
    rig.cut_power(target)
    rig.run(MIGRATION)
    status = rig.op(op)
    assert (status["phase"], condition(status, "Completed")["reason"]) == (
        "Failed",
        OPERATION_FAILED,
    )
    assert rig.where("vm-1") == ("Running", "node-1")
    assert rig.pods("vm-1") == [("node-1", "Running")]
    assert rig.vm("vm-1")["status"]["migrationState"]["result"] == "Failed"
    assert rig.ctl.running_places("default", "vm-1") == {"node-1"}


def test_losing_the_source_node_mid_migration_fails_it_and_restarts_the_vm(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"], policies=["AlwaysOn"])
    op = rig.evict("vm-1")
    rig.run()
    rig.fence("node-1")
    rig.run()
    assert rig.op(op)["phase"] == "Failed"
    assert rig.where("vm-1") == ("Starting", None)
    rig.run(BOOT + ATTACH)
    assert rig.where("vm-1")[0] == "Running"
    assert len(rig.pods("vm-1")) == 1
    assert rig.ctl.violations() == []


def test_operations_other_than_evict_fail_visibly(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    op = rig.evict("vm-1", op_type="Restart")
    rig.run()
    assert rig.op(op)["phase"] == "Failed"
    assert "Evict" in condition(rig.op(op), "Completed")["message"]


# ---- the controller in its thread, seen through the official client ---------------------------


@dataclass
class Live:
    server: KubeApiServer
    ctl: ColdStandbyController
    power: dict[str, bool]
    crs: client.CustomObjectsApi
    core: client.CoreV1Api


@pytest.fixture
def live() -> Iterator[Live]:
    server = KubeApiServer()
    server.start_in_thread()
    power = {"node-1": True, "node-2": True, "node-3": True}
    ctl = ColdStandbyController(
        server.store, lambda n: power.get(n, False), boot_delay=0.3, migration_delay=0.3, tick=0.05
    )
    attach = AttachDetachController(server.store, loop_period=0.05)
    kubelets = [
        SimKubelet(server.store, n, lambda n=n: power[n], pod_sync_interval=0.05) for n in power
    ]
    cfg = client.Configuration()
    try:
        for kubelet in kubelets:
            kubelet.tick()
            kubelet.start_in_thread()
        attach.start_in_thread()
        ctl.start_in_thread()
        cfg.host = server.url
        with client.ApiClient(cfg) as api:
            yield Live(server, ctl, power, client.CustomObjectsApi(api), client.CoreV1Api(api))
    finally:
        ctl.stop_thread()
        attach.stop_thread()
        for kubelet in kubelets:
            kubelet.stop_thread()
        server.stop_thread()


def test_the_official_client_follows_an_evict_to_completed(live: Live) -> None:
    place_vms(live.server.store, live.ctl, 3, ["node-1", "node-2", "node-3"])
    vms = live.crs.list_namespaced_custom_object(*VIRT, "default", "virtualmachines")["items"]
    assert [(v["status"]["phase"], v["status"].get("nodeName")) for v in vms] == [
        ("Running", "node-1"),
        ("Running", "node-2"),
        ("Running", "node-3"),
    ]
    op = {
        "apiVersion": "/".join(VIRT),
        "kind": "VirtualMachineOperation",
        "metadata": {"name": f"migrate-vm-1-{int(time.time())}"},
        "spec": {"virtualMachineName": "vm-1", "type": "Evict"},
    }
    live.crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachineoperations", op)

    def phase() -> str:
        got = live.crs.get_namespaced_custom_object(
            *VIRT, "default", "virtualmachineoperations", op["metadata"]["name"]
        )
        return str((got.get("status") or {}).get("phase") or "")

    eventually_blocking("the operation done", lambda: phase() in ("Completed", "Failed"))
    assert phase() == "Completed"
    vm = live.crs.get_namespaced_custom_object(*VIRT, "default", "virtualmachines", "vm-1")
    assert vm["status"]["phase"] == "Running" and vm["status"]["nodeName"] != "node-1"

    def nodes_of_pods() -> list[str]:
        selector = f"{VM_LABEL}=vm-1"
        return [
            p.spec.node_name
            for p in live.core.list_namespaced_pod("default", label_selector=selector).items
        ]

    # The source pod is deleted gracefully; its kubelet finishes it.
    eventually_blocking(
        "the pod on the VM's node", lambda: nodes_of_pods() == [vm["status"]["nodeName"]]
    )


def test_the_threaded_controller_restarts_a_released_nodes_vm_elsewhere(live: Live) -> None:
    place_vms(live.server.store, live.ctl, 2, ["node-1"], policies=["AlwaysOn", "Manual"])
    live.power["node-1"] = False
    taint = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
    live.core.patch_node("node-1", {"spec": {"taints": [taint]}})
    for pod in live.core.list_namespaced_pod(
        "default", field_selector="spec.nodeName=node-1"
    ).items:
        live.core.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)

    def vm(name: str) -> Obj:
        got: Obj = live.crs.get_namespaced_custom_object(*VIRT, "default", "virtualmachines", name)
        return got

    status = eventually_blocking(
        "vm-1 elsewhere",
        lambda: (s := vm("vm-1")["status"]).get("nodeName") not in (None, "node-1") and s,
    )
    assert (status["phase"], status["nodeName"]) in {("Running", "node-2"), ("Running", "node-3")}
    assert vm("vm-2")["status"]["phase"] == "Stopped"
    [rec] = [r for r in live.ctl.history if r.name == "vm-1"]
    assert rec.downtime is not None and rec.downtime >= 0.3
    assert live.ctl.violations() == []


def test_timestamps_are_written_as_rfc3339(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    started = rig.vm("vm-1")["status"]["stats"]["lastStartTime"]
    when = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)


def test_an_evict_of_a_vm_that_is_not_migratable_fails(rig: Rig) -> None:
    place_vms(rig.store, rig.ctl, 1, ["node-1"])
    conditions = [c for c in rig.vm("vm-1")["status"]["conditions"] if c["type"] != "Migratable"]
    conditions.append({"type": "Migratable", "status": "False", "reason": "NotMigratable"})
    rig.store.patch(
        "vm", "vm-1", {"status": {"conditions": conditions}}, "default", subresource="status"
    )
    op = rig.evict("vm-1")
    rig.run(MIGRATION + 0.1)
    assert rig.op(op)["phase"] == "Failed"
    assert "not migratable" in condition(rig.op(op), "Completed")["message"]
    assert rig.where("vm-1") == ("Running", "node-1")


def test_an_unknown_node_counts_as_unpowered() -> None:
    store = KubeApiServer().store
    ctl = ColdStandbyController(store, {"node-1": True}.__getitem__)
    ctl.mark_running("default", "vm", "node-9")
    assert ctl.running_places("default", "vm") == set()


def test_a_power_cycle_between_two_looks_still_kills_the_vms(rig: Rig) -> None:
    """`fence -a reboot`: off and on again faster than any controller looks. The machine says
    so as it happens (SimCluster wires these calls to its power listeners)."""
    place_vms(rig.store, rig.ctl, 2, ["node-1"], policies=["AlwaysOn", "Manual"])
    rig.run()
    rig.ctl.power_lost("node-1")
    rig.kubelets["node-1"].power_lost()
    assert rig.ctl.running_places("default", "vm-1") == set()  # power is back already
    rig.kubelets["node-1"].tick()  # the kubelet's next look: a boot
    rig.run(BOOT + 2 * ATTACH)
    assert rig.where("vm-1")[0] == "Running"
    assert rig.where("vm-2") == ("Stopped", None)
    assert [r.why for r in rig.ctl.history] == ["launcher pod Failed", "launcher pod Failed"]
