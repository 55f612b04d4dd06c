"""The safety defects the review reproduced, end to end on the simulated cluster (real agent
processes, mosquitto, the API emulator, emulated BMCs and watchdogs): each test plays the
reported sequence and checks that no VM runs twice and no live node is powered off."""

from __future__ import annotations

import signal
import time

from nodefence.agent.fencing.operation import Operation
from nodefence.agent.fencing.records import to_record
from tests.support.e2e import Make, node_exists, records, start, victim_of, vms_on
from tests.support.timings import SELF_FENCE, WATCHDOG


def test_a_cleanly_stopped_agent_is_never_taken_as_self_fenced_while_its_machine_is_on(
    make_cluster: Make,
) -> None:
    # The reported split brain: the agent stopped cleanly (SIGTERM: watchdog disarmed), later
    # the node was cut off with its BMC unreachable; it was deleted with proof "watchdog"
    # while its machine was still on, and its ColdStandby VMs ran on two nodes.
    cluster = start(
        make_cluster, links=True, watchdog={**WATCHDOG, "reboot_after": None}, fencing=SELF_FENCE
    )
    victim = victim_of(cluster)
    node = cluster.nodes[victim]
    assert node.watchdog is not None
    cluster.wait_for("the victim's watchdog armed", lambda: node.watchdog.armed, 10)
    before = vms_on(cluster, victim)
    assert before
    node.kill_agent(signal.SIGTERM)  # a clean stop: rolling update, operator, ...
    cluster.wait_for("the agent stopped", lambda: not node.agent_running(), 10)
    cluster.wait_for("the watchdog disarmed", lambda: not node.watchdog.armed, 10)
    time.sleep(2)  # agent lost, node alive (its kubelet answers)
    cluster.fleet[victim].set_faults(unreachable=True)
    node.isolate()  # then cut off, its BMC unreachable too
    cluster.wait_for("a fence record", lambda: records(cluster, victim), 40)
    # Past any watchdog deadline: detection + cut_off + feed + timeout + margin, and more.
    time.sleep(WATCHDOG["cut_off_after"] + WATCHDOG["feed_interval"] + WATCHDOG["timeout"] + 6)
    assert cluster.fleet[victim].power_state() == "on"
    assert node_exists(cluster, victim), "a machine that is on was deleted"
    assert all(not r["status"]["offProven"] for r in records(cluster, victim))
    for vm in before:
        key = (vm["metadata"]["namespace"], vm["metadata"]["name"])
        assert cluster.vm_controller.running_places(*key) == {victim}
    assert cluster.vm_controller.violations() == []


def test_a_new_leader_never_powers_off_a_live_node_whose_pending_record_it_inherits(
    make_cluster: Make,
) -> None:
    # The old leader stored a Pending operation (no power-off sent yet) and died; the node is
    # alive and heartbeating. The new leader used to resume it at once, before hearing any
    # heartbeat, and powered the node off 0.1 s after taking the Lease.
    cluster = start(make_cluster)
    leader = str(cluster.leader())
    victim = victim_of(cluster)
    changes = cluster.fleet[victim].power_changes
    body = to_record(Operation(victim, "inherited"), "nodefence", f"{leader}_dead")
    cluster.kube.store.create("fenceoperations", body, "nodefence")
    cluster.nodes[leader].kill_fencer(signal.SIGKILL)  # the leader is the fencer there
    cluster.wait_for(
        "a new leader", lambda: cluster.leader() not in (None, leader), 30, interval=0.02
    )

    def ended() -> bool:
        final = ("Aborted", "Recovered", "RecoveryIncomplete")
        done = any(r["status"]["phase"] in final for r in records(cluster, victim))
        return done or cluster.fleet[victim].power_changes != changes

    cluster.wait_for("the inherited operation ended", ended, 30)
    assert cluster.fleet[victim].power_changes == changes, "a live node was switched off"
    assert cluster.fleet[victim].power_state() == "on"
    assert node_exists(cluster, victim)
    [rec] = records(cluster, victim)
    assert rec["status"]["phase"] == "Aborted" and "own evidence" in rec["status"]["reason"]
