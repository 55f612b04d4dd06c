"""Scripted failure scenarios on a simulated cluster, with a timeline and a verdict.

Each scenario starts a `SimCluster` (mosquitto, the Kubernetes API emulator, emulated BMCs,
one real agent process per node, the ColdStandby controller and VMs), injects one failure,
prints what happened as a timeline, and checks the outcome against what nodefence promises.

This module names the scenarios (`SCENARIOS`); the failures and their judges are in
`nodefence.hwsim.scenarios.failures` (and `scenario_bmc_password`, `scenario_pause`,
`scenario_busy`),
`nodefence.hwsim.scenarios.run.run_scenario` plays one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.scenarios import bmc_password as scenario_bmc_password
from nodefence.hwsim.scenarios import busy as scenario_busy
from nodefence.hwsim.scenarios import pause as scenario_pause
from nodefence.hwsim.scenarios.failures import (
    bmc_unreachable,
    broker_node_loss,
    drain,
    judge_fence_failed,
    judge_leader_crash,
    judge_maintenance,
    judge_rack_loss,
    judge_recovered,
    judge_recovered_alone,
    judge_self_fence,
    leader_crash,
    leader_power_loss,
    maintenance,
    maintenance_alert,
    partition,
    phase_of,
    power_loss,
    rack_loss,
    self_fence,
)
from nodefence.hwsim.scenarios.release import (
    NO_RELEASE_TIMERS,
    down_while_cordoned_said,
    judge_drain,
    judge_no_release,
    power_on_and_uncordon,
    settle_after_the_fence,
)
from nodefence.hwsim.scenarios.watch import Timeline
from nodefence.hwsim.simcluster import SimCluster


@dataclass
class Scenario:
    """A named failure: how to inject it and how to judge the outcome."""

    name: str
    summary: str
    inject: Callable[[SimCluster, Timeline], list[str]]
    judge: Callable[[SimCluster, list[str]], list[str]]  # -> problems ("" list = pass)
    wait: Callable[[SimCluster, list[str]], bool]
    settings: dict[str, Any] = field(default_factory=dict)
    timeout: float = 60.0
    # The victim's Node must be deleted within this many worker detections (fence_after + 1 s)
    # of the failure: nobody's machine may slow detection and fencing down (None: no limit).
    delete_within: float | None = None
    # Inject only once the leader has named warm standbys and they have heard a full window.
    warm_standbys: bool = False
    # after `wait` held: more steps (power back on, uncordon, look for a second fence)
    epilogue: Callable[[SimCluster, Timeline, list[str]], None] | None = None
    # the VM APIs it runs with (`--virt`)
    virts: tuple[str, ...] = ("deckhouse", "kubevirt", "both")
    # What the verdict checked, for the end of the story.
    checks: tuple[str, ...] = ()
    # What nodefence leaves down on purpose here (said as expected, not as a failure).
    expect_down: str = ""


_RECOVERED_CHECKS = (
    "fencing ended Recovered",
    "the victim is off (or, after_proof reboot, on again)",
    "its pods and VolumeAttachments released",
    "every AlwaysOn VM Running, none on the victim",
    "no VM ran twice",
)
_HELD_CHECKS = ("the Node never deleted", "no VM started elsewhere while it may still run")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "power-loss",
            "a worker loses power: fenced, its pods and volumes released, deleted (or kept"
            " tainted: --cleanup taint), its VMs restarted",
            power_loss,
            judge_recovered,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            epilogue=settle_after_the_fence,
            checks=_RECOVERED_CHECKS,
        ),
        Scenario(
            "no-release",
            "power-loss with nodefence's release off: PodGC, then Multi-Attach until the"
            " detach timeout (timers compressed)",
            power_loss,
            judge_no_release,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            settings={
                "timers": NO_RELEASE_TIMERS,
                "fencing": {
                    "recovery_timeout": 60,
                    "retry_base": 2,
                    "retry_max": 10,
                    "release": False,
                },
            },
        ),
        Scenario(
            "drain",
            "a worker is drained with kubectl (cordon + evict), then powered off: not fenced,"
            " alerted; powered on and uncordoned: back",
            drain,
            judge_drain,
            lambda c, v: down_while_cordoned_said(c, v[0]),
            epilogue=power_on_and_uncordon,
            timeout=40,
        ),
        Scenario(
            "network-partition",
            "a worker is cut off but powered: fenced through its BMC first",
            partition,
            judge_recovered,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            checks=_RECOVERED_CHECKS,
        ),
        Scenario(
            "bmc-unreachable",
            "a cut-off worker whose BMC is dead: never deleted",
            bmc_unreachable,
            judge_fence_failed,
            lambda c, v: phase_of(c, v[0]) == "FenceFailed",
            checks=("fencing ended FenceFailed", *_HELD_CHECKS),
            expect_down="its VMs stay down: its Off cannot be proven (BMC dead, no watchdog);"
            " a person must act",
        ),
        Scenario(
            "self-fence",
            "a cut-off worker whose BMC is dead resets itself by watchdog, then is replaced",
            self_fence,
            judge_self_fence,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            settings={
                "links": True,
                "watchdog": {
                    "timeout": 2.0,
                    "cut_off_after": 2.0,
                    "feed_interval": 0.2,
                    "api_check_interval": 0.5,
                    "reboot_after": None,  # a slow bare-metal boot: down for the whole run
                },
                "fencing": {
                    "recovery_timeout": 60,
                    "retry_base": 2,
                    "retry_max": 10,
                    "self_fence": True,
                    "self_fence_margin": 1.0,
                },
            },
        ),
        Scenario(
            "leader-crash",
            "the leader's fencer (and its node's agent) dies: another fencer takes over, no fence",
            leader_crash,
            judge_leader_crash,
            lambda c, v: bool(c.events("AgentLostNodeAlive")),
        ),
        Scenario(
            "leader-power-loss",
            "the leader's machine loses power: a warm standby takes over and fences it",
            leader_power_loss,
            judge_recovered_alone,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            delete_within=2.0,
            warm_standbys=True,
        ),
        Scenario(
            "broker-node-loss",
            "the machine hosting a broker loses power: the other broker carries on, it is fenced",
            broker_node_loss,
            judge_recovered_alone,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            delete_within=2.0,
        ),
        Scenario(
            "rack-loss",
            "3 of 5 nodes lose power at once: storm guard, no fencing",
            rack_loss,
            judge_rack_loss,
            lambda c, v: bool(c.events("AlertStorm")),
            timeout=40,
            checks=("a storm alert", "nobody fenced during the storm"),
            expect_down="the VMs of the 3 nodes stay down: the storm guard fences nobody;"
            " a person must act",
        ),
        Scenario(
            "maintenance",
            "a worker enters maintenance (VMs live-migrated off), then loses power: no fence",
            maintenance,
            judge_maintenance,
            lambda c, v: c.fleet[v[0]].power_state() == "on" or maintenance_alert(c, v[0]),
            settings={"migration_delay": 0.5},
            timeout=40,
        ),
        Scenario(
            "bmc-password",
            "a worker's BMC password is changed: alert, 'cannot be fenced'; it loses power: the"
            " fence fails, status says so (exit 1, the VMs down); fixing the password: fenced",
            scenario_bmc_password.inject,
            scenario_bmc_password.judge,
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            settings={
                "fencing": {
                    "recovery_timeout": 60,
                    "bmc_check_interval": scenario_bmc_password.CHECK_INTERVAL,
                    "bmc_check_parallel": 4,
                    # the next attempt after status had time to run (a busy machine: seconds)
                    "retry_base": 8,
                    "retry_max": 8,
                }
            },
            timeout=30,
            checks=(
                "NodeCannotBeFenced within a check interval",
                "status exit 1 with the failing operation, its error, the VMs down",
                "fenced once the password is fixed",
                "status clear after",
            ),
        ),
        Scenario(
            "pause",
            "fencing is paused (`nodefence pause`), a worker loses power: judged dead, not"
            " fenced, status says PAUSED; `nodefence resume`: fenced at once, VMs restarted",
            scenario_pause.inject,
            lambda c, v: scenario_pause.judge(c, v) + judge_recovered(c, v),
            lambda c, v: phase_of(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            timeout=30,
            checks=(
                "no power-off while paused",
                "status PAUSED, exit 1",
                "fenced within 5 s of resume",
                *_RECOVERED_CHECKS,
            ),
        ),
        Scenario(
            "maintenance-busy",
            "a busy worker enters maintenance: a VM arriving, an Evict queued, a VM that cannot "
            "move: never done, the stuck VM named, the node stays guarded",
            scenario_busy.inject,
            scenario_busy.judge,
            scenario_busy.finished,
            settings={"migration_delay": 1.5},
            timeout=5,
            virts=("deckhouse",),  # it writes Deckhouse's VirtualMachineOperations itself
        ),
    ]
}
