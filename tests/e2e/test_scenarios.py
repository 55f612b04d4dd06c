"""Every `nodefence-hwsim scenario` plays to a PASS verdict on a short-timing cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from nodefence.hwsim.scenarios.catalogue import SCENARIOS
from nodefence.hwsim.scenarios.run import run_scenario
from nodefence.hwsim.simcluster import SimCluster


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_ends_as_nodefence_promises(name: str, tmp_path: Path) -> None:
    ok, timeline = run_scenario(name, tmp_path / name, nodes=5, vms=10, fast=True, echo=False)
    lines = "\n".join(f"{t:6.2f}s {node} {what}" for t, node, what in timeline.lines)
    assert ok, lines
    if name == "power-loss":
        assert_explain_tells_every_step(tmp_path / name)


def assert_explain_tells_every_step(workdir: Path) -> None:
    """`nodefence explain` of the finished operation, as the scenario ran it (text, -o json):
    the decision and what the leader knew, each power request and read-back per channel with
    its BMC, the Lease before each irreversible step, the phases."""
    [text_file] = workdir.glob("explain-*.txt")
    [json_file] = workdir.glob("explain-*.json")
    status = json.loads(json_file.read_text())["status"]
    evidence = status["evidence"]
    [decision] = evidence["decisions"]
    assert decision["lastHeartbeat"]["seq"] >= 0 and decision["lastHeartbeat"]["boot"]
    assert decision["kubelet"]["leaseAgeSeconds"] is not None
    assert decision["peerReports"] and decision["verdict"]["health"] == "dead"
    steps = evidence["steps"]
    power = {(s["type"], s["request"], s["result"]) for s in steps if s["kind"] == "power"}
    assert {("ipmi", "off", "sent"), ("ipmi", "verify-off", "off")} <= power
    assert ("redfish", "confirm-off", "off") in power  # the other channel of the same power
    assert all(
        s["address"].startswith(("127.0.0.1:", "https://127.0.0.1:"))
        for s in steps
        if s["kind"] == "power"
    )
    before = [s["before"] for s in steps if s["kind"] == "lease-confirmed"]
    # the new record (only the Lease holder writes one), then each irreversible step; the
    # release of pods and VolumeAttachments after the taint
    assert before[0] == "record" and before[1] == "power-off"
    assert before.index("taint") < before.index("delete-node")
    assert all(
        s["leader"] and s["leaseGeneration"] is not None
        for s in steps
        if s["kind"] == "lease-confirmed"
    )
    phases = [s["phase"] for s in steps if s["kind"] == "phase"]
    assert phases == ["Fencing", "PoweredOff", "Recovering", "Recovered"]
    text = text_file.read_text()
    for words in (
        "Decision at",
        "last heartbeat:",
        "kubelet Lease:",
        "Lease confirmed by",
        "verify-off -> off",
        "confirm-off -> off",
        "Node deleted",
        "phase -> Recovered",
    ):
        assert words in text, words


def test_power_loss_with_cleanup_taint_keeps_the_node_reboots_and_untaints_it(
    tmp_path: Path,
) -> None:
    ok, timeline = run_scenario(
        "power-loss", tmp_path / "taint", nodes=5, vms=10, fast=True, echo=False, cleanup="taint"
    )
    lines = "\n".join(f"{t:6.2f}s {node} {what}" for t, node, what in timeline.lines)
    assert ok, lines
    assert "FenceUntainted" in lines and "Node deleted from the cluster" not in lines


async def test_scenario_command_prints_a_timeline_and_verdict(tmp_path: Path) -> None:
    """On upstream KubeVirt VMs (`--virt kubevirt`; the Deckhouse runs are above)."""
    from tests.conftest import run_cli

    r = await run_cli(
        "scenario",
        "power-loss",
        "--fast",
        "--virt",
        "kubevirt",
        "--workdir",
        str(tmp_path / "s"),
        module="nodefence.hwsim.cli",
        timeout=180,
    )
    assert r.code == 0, r.out + r.err
    assert "POWER LOSS" in r.out and "FencePoweredOff" in r.out
    assert "FenceReleasedPods" in r.out and "detached from" in r.out  # the release, visible
    assert "timers: upstream defaults" in r.out
    assert "10 KubeVirt VMs" in r.out and "virt-launcher-kv-" in r.out
    # its launcher pods go only after the proof; its VMs run again elsewhere
    assert r.out.index("FencePoweredOff") < r.out.index("virt-launcher-kv-")
    assert "VMRecoveredAfterFence" in r.out
    assert "verdict: PASS" in r.out
    # Not a terminal: every timeline line, then a summary with the outage from the power loss.
    for line in (tmp_path / "s" / "timeline.txt").read_text().splitlines():
        assert line in r.out, line
    summary = r.out.split("== summary", 1)[1]
    assert "failure at " in summary and "declared dead +" in summary
    assert "(measured from the failure)" in summary and ": down " in summary


def test_a_watcher_that_never_started_stops_quietly_so_the_cluster_is_stopped() -> None:
    from nodefence.hwsim.scenarios.watch import Timeline, Watcher

    Watcher(cast(SimCluster, object()), Timeline(echo=False)).stop()  # no leader: never started
