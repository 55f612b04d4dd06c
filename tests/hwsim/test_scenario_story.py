"""The end of a scenario for people (hwsim/scenarios/story.py): milestones after the failure
and each VM's outage measured from the failure, not from anything nodefence says."""

from __future__ import annotations

from nodefence.hwsim.scenarios.story import VmSeen, summary, vm_line

LINES = [
    (0.0, "node-1", "holds the leader Lease"),
    (5.0, "node-5", "POWER LOSS"),
    (9.1, "node-5", "NodeDeclaredDead: no heartbeat for 4.1 s"),
    (9.4, "node-5", "FenceStarted: operation abc"),
    (10.2, "node-5", "FencePoweredOff: Off proven by read-back"),
    (10.9, "node-5", "Node deleted from the cluster"),
    (11.0, "node-5", "VM vm-3 (AlwaysOn) Pending"),
    (12.8, "node-2", "VM vm-3 (AlwaysOn) Running on node-2"),
    (13.0, "node-5", "VM vm-7 (Manual) Stopped"),
    (13.5, "node-5", "FenceRecovered: 1 restarted on other nodes"),
]
HOSTED = {
    "vm-3": VmSeen("vm-3", "AlwaysOn", "Running", "node-5"),
    "vm-7": VmSeen("vm-7", "Manual", "Running", "node-5"),
    "vm-1": VmSeen("vm-1", "AlwaysOn", "Running", "node-1"),
}


def test_a_timeline_vm_line_is_read_back_as_name_policy_phase_and_node() -> None:
    assert vm_line("VM vm-3 (AlwaysOn) Running on node-2") == VmSeen(
        "vm-3", "AlwaysOn", "Running", "node-2"
    )
    assert vm_line("VM vm-7 (Manual) Stopped") == VmSeen("vm-7", "Manual", "Stopped", "")
    assert vm_line("POWER LOSS") is None


def test_the_summary_counts_each_outage_from_the_failure_and_names_vms_left_stopped() -> None:
    text = "\n".join(summary(LINES, 5.0, ["node-5"], HOSTED))
    assert "failure at 5.00 s on node-5" in text
    assert "node-5: declared dead +4.1 s, fence started +4.4 s, proven off +5.2 s" in text
    assert "Node deleted +5.9 s" in text and "recovered +8.5 s" in text
    assert "vm-3 (AlwaysOn): down 7.8 s, Running on node-2" in text  # 12.8 - 5.0
    assert "vm-7 (Manual): Stopped, not restarted by its runPolicy" in text
    assert "vm-1" not in text  # it ran elsewhere: no outage
    assert "longest VM outage: 7.8 s (measured from the failure)" in text


def test_what_is_expected_to_stay_down_is_said_as_expected() -> None:
    cut = [(5.0, "node-5", "POWER LOSS"), (9.0, "node-5", "FenceFailed: BMC unreachable")]
    text = "\n".join(summary(cut, 5.0, ["node-5"], HOSTED, "these VMs stay down"))
    assert "vm-3 (AlwaysOn): still Running on node-5 (cut off or off)" in text
    assert "node-5: fence FAILED +4.0 s" in text
    assert text.endswith("expected: these VMs stay down")
