"""Fencing end to end on the simulated cluster: mosquitto, the Kubernetes API emulator,
emulated IPMI + Redfish BMCs, simulated kubelets, the ColdStandby controller and one real
`nodefence agent` process per node. Short timings throughout."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from hwsim.simcluster import SimCluster

Make = Callable[..., SimCluster]
BASE: dict[str, Any] = {
    "lease_duration": 4.0,
    "renew_deadline": 3.0,
    "retry_period": 0.5,
    "kubelet_lease_interval": 2.0,
    "bmcs": True,
    "vms": 8,
    "boot_delay": 1.0,
    "power_timeout": 3.0,
    "fencing": {"recovery_timeout": 20, "retry_base": 1, "retry_max": 2},
}
RESTARTABLE = ("AlwaysOn", "AlwaysOnUnlessStoppedManually")


def start(make: Make, **overrides: Any) -> SimCluster:
    cluster = make(**{**BASE, **overrides})
    # A deadline, not a wait: six processes (node agents and fencers) start on a busy machine.
    cluster.wait_for("a leader", cluster.leader, 60)
    time.sleep(5)  # past the leader's first judging window
    return cluster


def victim_of(cluster: SimCluster, exclude: tuple[str, ...] = ()) -> str:
    leader = cluster.leader()
    return next(n for n in sorted(cluster.nodes, reverse=True) if n != leader and n not in exclude)


def records(cluster: SimCluster, node: str | None = None) -> list[dict[str, Any]]:
    items = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    return [r for r in items if node is None or r["spec"]["nodeName"] == node]


def final_record(
    cluster: SimCluster, node: str, phases: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for r in records(cluster, node):
            if (r.get("status") or {}).get("phase") in phases:
                return r
        return None

    result: dict[str, Any] = cluster.wait_for(f"{node} record in {phases}", found, timeout)
    return result


def vms_on(cluster: SimCluster, node: str) -> list[dict[str, Any]]:
    return [
        vm
        for vm in cluster.kube.store.list("virtualmachines")["items"]
        if (vm.get("status") or {}).get("nodeName") == node
    ]


def node_exists(cluster: SimCluster, node: str) -> bool:
    return any(n["metadata"]["name"] == node for n in cluster.kube.store.list("nodes")["items"])


def assert_recovered_elsewhere(
    cluster: SimCluster, node: str, before: list[dict[str, Any]], rec: dict[str, Any]
) -> None:
    by_key = {
        f"{v['metadata']['namespace']}/{v['metadata']['name']}": v
        for v in cluster.kube.store.list("virtualmachines")["items"]
    }
    assert before, "the victim ran no VM: the test would prove nothing"
    for vm in before:
        key = f"{vm['metadata']['namespace']}/{vm['metadata']['name']}"
        now = by_key[key]
        status = now.get("status") or {}
        if vm["spec"]["runPolicy"] in RESTARTABLE:
            assert status.get("phase") == "Running" and status.get("nodeName") != node, key
        else:
            assert status.get("phase") != "Running", key
    outcomes = {f"{v['namespace']}/{v['name']}": v for v in rec["status"]["vms"]}
    assert set(outcomes) == {
        f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in before
    }
    for out in outcomes.values():
        if out["expectedRestart"]:
            assert out["runningOn"] not in (None, node) and out["recoveredAfterSeconds"] >= 0
    assert cluster.vm_controller.violations() == []


def test_power_loss_is_fenced_deleted_and_coldstandby_vms_run_elsewhere(make_cluster: Make) -> None:
    cluster = start(make_cluster)
    victim = victim_of(cluster)
    before = vms_on(cluster, victim)
    cluster.fleet[victim].cut_power()
    rec = final_record(cluster, victim, ("Recovered", "RecoveryIncomplete", "FenceFailed"))
    assert rec["status"]["phase"] == "Recovered", rec["status"]
    assert rec["status"]["offProven"] and rec["status"]["powerOffSent"]
    assert rec["status"]["tainted"] and rec["status"]["nodeDeleted"]
    assert not node_exists(cluster, victim)
    assert_recovered_elsewhere(cluster, victim, before, rec)
    cluster.wait_for("FenceRecovered event", lambda: cluster.events("FenceRecovered"), 10)
    reasons = [e["reason"] for e in cluster.events() if e["involvedObject"]["name"] == victim]
    assert reasons.index("NodeDeclaredDead") < reasons.index("FencePoweredOff")
    assert reasons.index("FencePoweredOff") < reasons.index("FenceRecovered")
    restartable = [vm for vm in before if vm["spec"]["runPolicy"] in RESTARTABLE]

    def vm_events() -> list[dict[str, Any]]:
        return [
            e
            for e in cluster.events("VMRecoveredAfterFence")
            if e["involvedObject"]["kind"] == "VirtualMachine"
        ]

    # Events follow the record: wait for all of them, then check there are no more.
    cluster.wait_for("one event per restarted VM", lambda: len(vm_events()) >= len(restartable), 10)
    assert len(vm_events()) == len(restartable)
    text = leader_metrics(cluster)
    assert 'nodefence_fence_operations_total{phase="Recovered"} 1.0' in text
    assert 'nodefence_fence_duration_seconds_count{outcome="proven"} 1.0' in text
    assert "nodefence_detection_seconds_count 1.0" in text
    assert "nodefence_recovery_seconds_count 1.0" in text
    assert "nodefence_is_leader 1.0" in text


def leader_metrics(cluster: SimCluster) -> str:
    import re
    import urllib.request

    # The leader is the fencer on that node: its metrics, not the node agent's.
    log = cluster.nodes[str(cluster.leader())].fencer_log_path.read_text()
    port = re.findall(r"metrics on port (\d+)", log)[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
    return body


def test_partitioned_node_is_powered_off_before_its_vms_run_elsewhere(make_cluster: Make) -> None:
    cluster = start(make_cluster)
    victim = victim_of(cluster)
    before = vms_on(cluster, victim)
    cluster.nodes[victim].partition()  # still powered: its VMs keep running there
    rec = final_record(cluster, victim, ("Recovered", "RecoveryIncomplete", "FenceFailed"))
    assert rec["status"]["phase"] == "Recovered", rec["status"]
    assert cluster.fleet[victim].power_state() == "off"  # fenced for real
    assert_recovered_elsewhere(cluster, victim, before, rec)  # and never ran twice


def test_unreachable_bmc_fails_the_fence_keeps_the_node_and_starts_no_vm(
    make_cluster: Make,
) -> None:
    cluster = start(make_cluster)
    victim = victim_of(cluster)
    before = vms_on(cluster, victim)
    cluster.fleet[victim].set_faults(unreachable=True)
    cluster.nodes[victim].partition()
    rec = final_record(cluster, victim, ("FenceFailed",), timeout=40)
    assert not rec["status"]["offProven"] and "fencing failed" in rec["status"]["reason"]
    assert "nothing received from the BMC" in " ".join(rec["status"]["errors"])
    time.sleep(3)  # retries keep failing: still nothing deleted or restarted
    assert node_exists(cluster, victim)
    assert all(r["status"]["phase"] in ("FenceFailed", "Fencing") for r in records(cluster))
    for vm in before:
        key = (vm["metadata"]["namespace"], vm["metadata"]["name"])
        assert cluster.vm_controller.running_places(*key) == {victim}
    assert cluster.vm_controller.violations() == []


def test_a_dead_first_level_escalates_to_the_second(make_cluster: Make) -> None:
    cluster = start(make_cluster)
    victim = victim_of(cluster)
    assert cluster.bmcs is not None and cluster.loop is not None
    cluster.loop.run(cluster.bmcs.ipmi_bmcs[victim].stop())
    cluster.fleet[victim].cut_power()
    rec = final_record(cluster, victim, ("Recovered", "RecoveryIncomplete", "FenceFailed"))
    assert rec["status"]["phase"] == "Recovered" and rec["status"]["level"] == 2


def test_leader_killed_mid_fence_is_finished_by_the_new_leader(make_cluster: Make) -> None:
    cluster = start(make_cluster, power_timeout=8.0)
    leader = str(cluster.leader())
    victim = victim_of(cluster)
    cluster.fleet[victim].set_faults(off_delay=5.0)  # Off shows 5 s after the request
    cluster.nodes[victim].partition()
    rec = final_record(cluster, victim, ("Fencing",), timeout=30)
    assert rec["status"]["powerOffSent"] and not rec["status"]["offProven"]
    cluster.nodes[leader].kill_fencer(signal.SIGKILL)  # the leader is the fencer there
    rec = final_record(cluster, victim, ("Recovered", "RecoveryIncomplete"), timeout=60)
    assert rec["status"]["phase"] == "Recovered"
    assert rec["status"]["leader"].split("_")[0] != leader
    assert len(records(cluster, victim)) == 1  # resumed, not started over
    assert cluster.vm_controller.violations() == []


def test_two_nodes_lost_at_once_are_both_recovered(make_cluster: Make) -> None:
    cluster = start(make_cluster, nodes=5, vms=10)
    first = victim_of(cluster)
    second = victim_of(cluster, exclude=(first,))
    for v in (first, second):
        cluster.fleet[v].cut_power()
    for v in (first, second):
        rec = final_record(cluster, v, ("Recovered", "RecoveryIncomplete", "FenceFailed"))
        assert rec["status"]["phase"] == "Recovered", rec["status"]
    assert cluster.vm_controller.violations() == []


def test_heartbeats_back_before_the_power_off_request_abort_the_operation(
    make_cluster: Make,
) -> None:
    # One fence at a time; the first victim's slow BMC holds the slot while the second
    # victim's heartbeats come back, so its operation aborts before any request is sent.
    cluster = start(
        make_cluster,
        nodes=5,
        vms=5,
        power_timeout=12.0,
        fencing={**BASE["fencing"], "max_parallel": 1},
    )
    slow = victim_of(cluster)
    back = victim_of(cluster, exclude=(slow,))
    cluster.fleet[slow].set_faults(off_delay=9.0)  # its power walk holds the only slot
    cluster.nodes[slow].partition()
    final_record(cluster, slow, ("Fencing",), timeout=30)
    cluster.nodes[back].partition()
    cluster.wait_for("second op", lambda: records(cluster, back), 30)
    cluster.nodes[back].heal()
    rec = final_record(cluster, back, ("Aborted",), timeout=60)
    assert not rec["status"]["powerOffSent"] and "came back" in rec["status"]["reason"]
    assert node_exists(cluster, back) and cluster.fleet[back].power_state() == "on"
    assert cluster.fleet[back].power_changes == 0
