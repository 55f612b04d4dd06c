"""Scripted failure scenarios on a simulated cluster, with a timeline and a verdict.

Each scenario starts a `SimCluster` (mosquitto, the Kubernetes API emulator, emulated BMCs,
one real agent process per node, the ColdStandby controller and VMs), injects one failure,
prints what happened as a timeline, and checks the outcome against what nodefence promises.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.profiles import profile_from_mapping
from hwsim import scenario_busy, scenario_pause
from hwsim.chart import write_svg
from hwsim.scenario_story import VmSeen, summary
from hwsim.scenario_watch import Timeline, Watcher
from hwsim.scenarios_release import (
    NO_RELEASE_TIMERS,
    down_while_cordoned_said,
    drain_then_cut,
    judge_drain,
    judge_no_release,
    judge_release,
    power_on_and_uncordon,
    settle_after_the_fence,
)
from hwsim.simcluster import ClusterSettings, SimCluster
from hwsim.vm_views import vm_views


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


def _victims(cluster: SimCluster, count: int) -> list[str]:
    leader = cluster.leader()
    return [n for n in sorted(cluster.nodes, reverse=True) if n != leader][:count]


def _records(cluster: SimCluster, node: str) -> list[dict[str, Any]]:
    items = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    return [r for r in items if r["spec"]["nodeName"] == node]


def _phase(cluster: SimCluster, node: str) -> str:
    recs = _records(cluster, node)
    return str((recs[-1].get("status") or {}).get("phase", "")) if recs else ""


def _judge_recovered(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = judge_release(cluster, victims)
    reboot = cluster.settings.fencing.get("after_proof") == "reboot"
    for v in victims:
        if _phase(cluster, v) != "Recovered":
            problems.append(f"{v}: fencing ended {_phase(cluster, v) or 'never started'}")
        if cluster.fleet[v].power_state() != ("on" if reboot else "off"):
            problems.append(f"{v}: {'not powered on again' if reboot else 'still powered'}")
    for vm in vm_views(cluster.kube.store):
        if vm.restarts and not vm.running:
            problems.append(f"VM {vm.name} is {vm.phase}, not Running")
        if vm.node in victims and vm.running:
            problems.append(f"VM {vm.name} still on fenced {vm.node}")
    problems += [f"split brain: {v}" for v in cluster.vm_violations()]
    return problems


def _power_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = _victims(cluster, 1)
    tl.add(victim[0], "POWER LOSS (machine off; BMC on standby power)")
    cluster.fleet[victim[0]].cut_power()
    return victim


def _partition(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = _victims(cluster, 1)
    tl.add(victim[0], "NETWORK PARTITION (still powered, VMs still running there)")
    cluster.nodes[victim[0]].partition()
    return victim


def _bmc_unreachable(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = _victims(cluster, 1)
    tl.add(victim[0], "BMC UNREACHABLE, then NETWORK PARTITION")
    cluster.fleet[victim[0]].set_faults(unreachable=True)
    cluster.nodes[victim[0]].partition()
    return victim


def _self_fence(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = _victims(cluster, 1)
    tl.add(victim[0], "BMC UNREACHABLE, then NETWORK CUT (its agent runs on, alone)")
    cluster.fleet[victim[0]].set_faults(unreachable=True)
    cluster.nodes[victim[0]].isolate()
    return victim


def _judge_self_fence(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    problems = _judge_recovered(cluster, victims)
    resets = cluster.nodes[v].watchdog_resets
    if not resets:
        problems.append(f"{v}: its watchdog never reset it")
    recs = _records(cluster, v)
    proof = (recs[-1].get("status") or {}).get("proof") if recs else None
    if proof != "watchdog":
        problems.append(f"{v}: off proven by {proof or 'nothing'}, not by its watchdog deadline")
    return problems


def _judge_fence_failed(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    problems = [] if _phase(cluster, v) == "FenceFailed" else [f"{v}: {_phase(cluster, v)}"]
    if not any(n["metadata"]["name"] == v for n in cluster.kube.store.list("nodes")["items"]):
        problems.append(f"{v}: Node deleted without a proven Off")
    for ctl in cluster.vm_controllers:
        for key, places in ctl.actual.items():
            if places - {v} and v in places:
                problems.append(f"VM {key[1]} started elsewhere while {v} still runs it")
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems


def _leader_power_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = str(cluster.leader())
    hosts = [f"broker {i}" for i, h in enumerate(cluster.broker_hosts) if h == leader]
    also = f", with {' and '.join(hosts)}" if hosts else ""
    tl.add(leader, f"POWER LOSS OF THE LEADER'S MACHINE (its fencer and agent{also})")
    cluster.fleet[leader].cut_power()
    return [leader]


def _broker_node_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = cluster.leader()
    index, host = next((i, h) for i, h in enumerate(cluster.broker_hosts) if h != leader)
    tl.add(host, f"POWER LOSS OF BROKER {index}'S MACHINE (the broker dies with it)")
    cluster.fleet[host].cut_power()
    return [host]


def _judge_recovered_alone(cluster: SimCluster, victims: list[str]) -> list[str]:
    """Recovered as a worker is, and nobody else fenced, declared dead or frozen for it."""
    problems = _judge_recovered(cluster, victims)
    new = cluster.leader()
    if new is None or new in victims:
        problems.append(f"no leader besides {', '.join(victims)}")
    records = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    fenced = {r["spec"]["nodeName"] for r in records}
    problems += [f"{n} was fenced too (false fence)" for n in sorted(fenced - set(victims))]
    dead = {e["involvedObject"]["name"] for e in cluster.events("NodeDeclaredDead")}
    problems += [f"{n} was declared dead too" for n in sorted(dead - set(victims))]
    if cluster.events("AlertBrokerDown"):
        problems.append("the leader froze for a broker outage (one broker was left)")
    return problems


def _deleted_in_time(tl: Timeline, victims: list[str], start: float, limit: float) -> list[str]:
    """The victims' Nodes deleted within `limit` seconds of `start` (the failure)."""
    problems = []
    for v in victims:
        gone = next(
            (t for t, n, w in tl.lines if t >= start and n == v and w.startswith("Node deleted")),
            None,
        )
        if gone is None:
            continue  # judged already (not recovered)
        if gone - start > limit:
            problems.append(
                f"{v}: Node deleted {gone - start:.1f} s after the failure, more than {limit:.1f} s"
            )
    return problems


def _leader_crash(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = str(cluster.leader())
    tl.add(leader, "LEADER FENCER AND THE NODE'S AGENT KILLED (SIGKILL; node stays up)")
    cluster.nodes[leader].kill_fencer()
    cluster.nodes[leader].kill_agent()
    return [leader]


def _judge_leader_crash(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = []
    new = cluster.leader()
    if new in (None, victims[0]):
        problems.append("no new leader")
    if _records(cluster, victims[0]):
        problems.append(f"{victims[0]} (alive, agent dead) was fenced")
    if not cluster.events("AgentLostNodeAlive"):
        problems.append("the old leader's node was not reported as 'agent lost, node alive'")
    return problems


def _rack_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    victims = _victims(cluster, 3)
    for v in victims:
        tl.add(v, "POWER LOSS (rack)")
        cluster.fleet[v].cut_power()
    return victims


def _judge_rack_loss(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = [] if cluster.events("AlertStorm") else ["no storm alert"]
    problems += [f"{v} was fenced during a storm" for v in victims if _records(cluster, v)]
    return problems


def _maintenance(cluster: SimCluster, tl: Timeline) -> list[str]:
    """`nodefence maintenance enter` as an operator runs it, then the planned power cut."""
    import os
    import subprocess

    from hwsim.simnode import REPO

    victim = _victims(cluster, 1)[0]
    tl.add(victim, "MAINTENANCE ENTER (nodefence maintenance enter --vms-only)")
    command = [sys.executable, "-m", "agent.cli", "maintenance", "enter", victim, "--vms-only"]
    command += ["--timeout", "60", "--kubeconfig", str(cluster.kubeconfig)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            tl.add(victim, f"  | {line.rstrip()}")
    if proc.returncode != 0:
        tl.add(victim, f"maintenance enter FAILED (exit {proc.returncode}): power left on")
        return [victim]
    tl.add(victim, "POWER CUT for the planned work (the node is in maintenance)")
    cluster.fleet[victim].cut_power()
    return [victim]


def _maintenance_alert(cluster: SimCluster, node: str) -> bool:
    return any(e["involvedObject"]["name"] == node for e in cluster.events("AlertMaintenance"))


def _judge_maintenance(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    store = cluster.kube.store
    problems = []
    if cluster.fleet[v].power_state() != "off":
        problems.append(f"{v}: maintenance enter failed, the power was never cut")
    node = next((n for n in store.list("nodes")["items"] if n["metadata"]["name"] == v), None)
    if node is None:
        problems.append(f"{v}: Node deleted while in maintenance")
    elif (node["metadata"].get("labels") or {}).get("nodefence.io/maintenance") != "true":
        problems.append(f"{v}: not marked nodefence.io/maintenance=true")
    elif not (node.get("spec") or {}).get("unschedulable"):
        problems.append(f"{v}: not cordoned")
    for vm in vm_views(store):
        if vm.node == v:
            problems.append(f"VM {vm.name} was still on {v} when it lost power")
        if vm.restarts and not vm.running:
            problems.append(f"VM {vm.name} is {vm.phase}, not Running")
    if _records(cluster, v):
        problems.append(f"{v} (in maintenance) was fenced: {_phase(cluster, v)}")
    if any(e["involvedObject"]["name"] == v for e in cluster.events("NodeDeclaredDead")):
        problems.append(f"{v} (in maintenance) was declared dead")
    if cluster.fleet[v].power_state() == "off" and not _maintenance_alert(cluster, v):
        problems.append(f"the leader never reported {v} as in maintenance")
    for ctl in cluster.vm_controllers:
        # A KubeVirt VM whose evictionStrategy stops it on a drain was shut down on purpose
        # (and started elsewhere by its runStrategy), before the power cut: not lost with it.
        lost = [r for r in ctl.history if not r.why.startswith("shut down")]
        problems += [f"{rec.name} lost with {v}" for rec in lost]
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems


def _bmc_status(cluster: SimCluster, node: str) -> tuple[int, str]:
    """`nodefence status` as an operator runs it (with `node`'s agent config): exit code, text."""
    import os
    import subprocess

    from hwsim.simnode import REPO

    config = cluster.workdir / "agents" / f"{node}.yaml"
    command = [sys.executable, "-m", "agent.cli", "status", "--config", str(config)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return done.returncode, done.stdout + done.stderr


def _status_row(cluster: SimCluster, asking: str, node: str) -> str:
    lines = _bmc_status(cluster, asking)[1].splitlines()
    return next((line for line in lines if line.split(" ", 1)[0] == node), "")


def _vms_on(cluster: SimCluster, node: str) -> list[str]:
    return sorted(vm.name for vm in vm_views(cluster.kube.store) if vm.node == node and vm.restarts)


def _bmc_password(cluster: SimCluster, tl: Timeline) -> list[str]:
    """A worker's BMC password is changed on the BMC: alert, "cannot be fenced". Then the
    worker loses power: its fence fails (the BMC refuses the credentials) and `nodefence
    status` must say so, with the VMs down, and exit 1. The operator puts the new password in
    the node's password file (a rotated Secret): the next attempt fences it, status is clear."""
    import secrets

    import yaml

    victim = next(n for n in _victims(cluster, 4) if _vms_on(cluster, n))
    asking = str(cluster.leader())
    assert cluster.bmcs is not None and cluster.settings.inventory is not None
    inventory = Path(cluster.settings.inventory)
    # The victim gets its own password file (same password): the inventory reloads.
    own = inventory.parent / f"bmc-password-{victim}"
    own.write_text((inventory.parent / "bmc-password").read_text())
    doc = yaml.safe_load(inventory.read_text())
    for level in doc["nodes"][victim]["levels"]:
        for dev in level["devices"]:
            dev["password_file"] = own.name
    staged = inventory.with_name(inventory.name + ".new")  # whole, as a Secret update lands
    staged.write_text(yaml.safe_dump(doc, sort_keys=False))
    staged.replace(inventory)
    new = secrets.token_urlsafe(12)
    tl.add(victim, "BMC PASSWORD CHANGED on the BMC (the inventory still has the old one)")
    changed = time.monotonic()
    cluster.bmcs.set_password(victim, new)
    found = []

    def alerted() -> bool:
        return any(e["involvedObject"]["name"] == victim for e in cluster.events(_UNFENCEABLE))

    try:
        cluster.wait_for("the NodeCannotBeFenced alert", alerted, 3 * _CHECK_INTERVAL + 10)
    except TimeoutError:
        found.append(f"no {_UNFENCEABLE} alert for {victim}")
    else:
        found.append(f"alert after {time.monotonic() - changed:.1f} s")
        # `status` prints the leader's view, published once a second: the Event can be first.
        shown_by = time.monotonic() + 5.0
        while True:
            row = _status_row(cluster, asking, victim)
            if "CANNOT BE FENCED" in row or time.monotonic() >= shown_by:
                break
            time.sleep(0.3)
        tl.add(victim, f"nodefence status: {row}")
        found.append(f"status while broken: {row}")
    down = _vms_on(cluster, victim)
    tl.add(victim, "POWER LOSS (machine off; BMC on standby power, wrong password)")
    tl.failure()
    cluster.fleet[victim].cut_power()
    from hwsim.liveview import LeaderViewFeed

    feed = LeaderViewFeed(cluster, "bmc-password")
    feed.start()

    def failing_in_the_view() -> bool:  # what `status` prints: the leader's view, not the record
        ops = feed.view.get("operations") or []
        return any(o.get("node") == victim and o.get("phase") == "FenceFailed" for o in ops)

    try:
        cluster.wait_for("the failing fence in the leader's view", failing_in_the_view, 30)
    except TimeoutError:
        found.append(f"no FenceFailed for {victim} (phase {_phase(cluster, victim)!r})")
    else:
        code, said, missing = _status_failing(cluster, asking, victim, down)
        tl.add(victim, f"nodefence status exit {code} while the fence fails:")
        for line in said:
            tl.add(victim, f"  {line.strip()}")
        found.append(f"failing status exit {code}")
        found += [f"no {what} in status while the fence fails" for what in missing]
    finally:
        feed.stop()
    tl.add(victim, "PASSWORD FIXED: the new one written to the node's password file")
    own.write_text(new + "\n")
    (cluster.workdir / "bmc-password.txt").write_text("\n".join(found) + "\n")
    return [victim]


def _status_failing(
    cluster: SimCluster, asking: str, node: str, down: list[str]
) -> tuple[int, list[str], list[str]]:
    """`nodefence status` while `node`'s fence fails: its exit code, its NEEDS ATTENTION
    lines, and what it failed to say (the failing operation, its error, each VM down)."""
    code, text = _bmc_status(cluster, asking)
    lines = text.splitlines()
    said = lines[next((i for i, x in enumerate(lines) if x.startswith("NEEDS")), len(lines)) :]
    missing = []
    if f"{node}: fencing failed" not in text:
        missing.append(f"'{node}: fencing failed'")
    if "credentials" not in text and "auth" not in text:
        missing.append("BMC error")
    missing += [vm for vm in down if vm not in text]
    return code, said, missing


_UNFENCEABLE = "NodeCannotBeFenced"
_CHECK_INTERVAL = 2.0


def _judge_bmc_password(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    lines = (cluster.workdir / "bmc-password.txt").read_text().splitlines()
    problems = [line for line in lines if line.startswith("no ")]
    took = [float(line.split()[2]) for line in lines if line.startswith("alert after")]
    if took and took[0] > 3 * _CHECK_INTERVAL + 10:  # the wait's own bound (a loaded machine)
        problems.append(f"the alert took {took[0]:.1f} s, more than one check interval")
    broken = [line for line in lines if line.startswith("status while broken")]
    if broken and "CANNOT BE FENCED" not in broken[0]:
        problems.append(f"nodefence status did not say {v} cannot be fenced: {broken[0]}")
    if "failing status exit 1" not in lines:
        problems.append(f"nodefence status did not exit 1 while the fence failed: {lines}")
    if not any(e["involvedObject"]["name"] == v for e in cluster.events("BmcCheckFailed")):
        problems.append(f"no BmcCheckFailed Event about {v}")
    if _phase(cluster, v) not in ("Recovered", "RecoveryIncomplete"):
        problems.append(f"fixing the password did not fence {v}: {_phase(cluster, v)}")
    else:
        # The BMC checks pass again within a check interval of the fix (the fence may be
        # over before): status is asked until it is clear, at most a few intervals.
        deadline = time.monotonic() + 3 * _CHECK_INTERVAL + 10
        while True:
            code, text = _bmc_status(cluster, str(cluster.leader()))
            needs = [line for line in text.splitlines() if line.startswith("  - ")]
            still = "fencing failed" in text or "CANNOT BE FENCED" in text
            exits = code != 0 and not all("left stopped" in line for line in needs)
            if not (still or exits) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if still:
            problems.append(f"nodefence status after the fix still says it: {text}")
        if exits:
            problems.append(f"nodefence status after the fix exits {code}: {text}")
    problems += [f"{n} was fenced" for n in cluster.nodes if n != v and _records(cluster, n)]
    return problems


def _drain(cluster: SimCluster, tl: Timeline) -> list[str]:
    return drain_then_cut(cluster, tl, _victims(cluster, 1)[0])


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
            _power_loss,
            _judge_recovered,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            epilogue=settle_after_the_fence,
            checks=_RECOVERED_CHECKS,
        ),
        Scenario(
            "no-release",
            "power-loss with nodefence's release off: PodGC, then Multi-Attach until the"
            " detach timeout (timers compressed)",
            _power_loss,
            judge_no_release,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
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
            _drain,
            judge_drain,
            lambda c, v: down_while_cordoned_said(c, v[0]),
            epilogue=power_on_and_uncordon,
            timeout=40,
        ),
        Scenario(
            "network-partition",
            "a worker is cut off but powered: fenced through its BMC first",
            _partition,
            _judge_recovered,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            checks=_RECOVERED_CHECKS,
        ),
        Scenario(
            "bmc-unreachable",
            "a cut-off worker whose BMC is dead: never deleted",
            _bmc_unreachable,
            _judge_fence_failed,
            lambda c, v: _phase(c, v[0]) == "FenceFailed",
            checks=("fencing ended FenceFailed", *_HELD_CHECKS),
            expect_down="its VMs stay down: its Off cannot be proven (BMC dead, no watchdog);"
            " a person must act",
        ),
        Scenario(
            "self-fence",
            "a cut-off worker whose BMC is dead resets itself by watchdog, then is replaced",
            _self_fence,
            _judge_self_fence,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
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
            _leader_crash,
            _judge_leader_crash,
            lambda c, v: bool(c.events("AgentLostNodeAlive")),
        ),
        Scenario(
            "leader-power-loss",
            "the leader's machine loses power: a warm standby takes over and fences it",
            _leader_power_loss,
            _judge_recovered_alone,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            delete_within=2.0,
            warm_standbys=True,
        ),
        Scenario(
            "broker-node-loss",
            "the machine hosting a broker loses power: the other broker carries on, it is fenced",
            _broker_node_loss,
            _judge_recovered_alone,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            delete_within=2.0,
        ),
        Scenario(
            "rack-loss",
            "3 of 5 nodes lose power at once: storm guard, no fencing",
            _rack_loss,
            _judge_rack_loss,
            lambda c, v: bool(c.events("AlertStorm")),
            timeout=40,
            checks=("a storm alert", "nobody fenced during the storm"),
            expect_down="the VMs of the 3 nodes stay down: the storm guard fences nobody;"
            " a person must act",
        ),
        Scenario(
            "maintenance",
            "a worker enters maintenance (VMs live-migrated off), then loses power: no fence",
            _maintenance,
            _judge_maintenance,
            lambda c, v: c.fleet[v[0]].power_state() == "on" or _maintenance_alert(c, v[0]),
            settings={"migration_delay": 0.5},
            timeout=40,
        ),
        Scenario(
            "bmc-password",
            "a worker's BMC password is changed: alert, 'cannot be fenced'; it loses power: the"
            " fence fails, status says so (exit 1, the VMs down); fixing the password: fenced",
            _bmc_password,
            _judge_bmc_password,
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
            settings={
                "fencing": {
                    "recovery_timeout": 60,
                    "bmc_check_interval": _CHECK_INTERVAL,
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
            lambda c, v: scenario_pause.judge(c, v) + _judge_recovered(c, v),
            lambda c, v: _phase(c, v[0]) in ("Recovered", "RecoveryIncomplete"),
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


def _explain(cluster: SimCluster, victims: list[str]) -> list[Path]:
    """`nodefence explain` (text and -o json) of every fenced victim, as an operator runs it,
    written beside the timeline while the cluster still runs."""
    import os
    import subprocess

    from hwsim.simnode import REPO

    written = []
    for v in victims:
        if not _records(cluster, v):
            continue
        for output, suffix in (("text", "txt"), ("json", "json")):
            command = [sys.executable, "-m", "agent.cli", "explain", v, "-o", output]
            command += ["--kubeconfig", str(cluster.kubeconfig)]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            path = cluster.workdir / f"explain-{v}.{suffix}"
            path.write_text(done.stdout + done.stderr)
            written.append(path)
    return written


def run_scenario(
    name: str,
    workdir: Path,
    nodes: int = 5,
    vms: int = 10,
    fast: bool = False,
    echo: bool = True,
    live: bool = True,
    cleanup: str = "",
    after_proof: str = "",
    virt: str = "deckhouse",
) -> tuple[bool, Timeline]:
    """Play scenario `name`; returns (passed, timeline). `cleanup` / `after_proof` set the
    agents' `fencing.cleanup` and `fencing.after_proof` (cleanup taint: reboot by default);
    `virt`: whose VMs the cluster runs (deckhouse, kubevirt, both)."""
    sc = SCENARIOS[name]
    if virt not in sc.virts:
        raise ValueError(f"scenario {name} runs with --virt {' or '.join(sc.virts)}, not {virt}")
    settings: dict[str, Any] = {
        "nodes": nodes,
        "vms": vms,
        "virt": virt,
        "bmcs": True,
        "boot_delay": 2.0,
        "fencing": {"recovery_timeout": 60, "retry_base": 2, "retry_max": 10},
    }
    if fast:
        settings.update(
            lease_duration=4.0,
            renew_deadline=3.0,
            retry_period=0.5,
            kubelet_lease_interval=2.0,
            boot_delay=1.0,
        )
    settings.update(sc.settings)
    fencing = dict(settings["fencing"])
    if cleanup:
        fencing["cleanup"] = cleanup
        fencing["after_proof"] = after_proof or ("reboot" if cleanup == "taint" else "off")
    elif after_proof:
        fencing["after_proof"] = after_proof
    settings["fencing"] = fencing
    if (workdir / "kubeconfig").exists():  # a previous run of ours: start clean
        shutil.rmtree(workdir)
    cluster = SimCluster(workdir, ClusterSettings(**settings))
    tl = Timeline(echo=echo)
    if echo:
        print(f"== scenario {name}: {sc.summary}")
        apis = {
            "deckhouse": f"{vms} Deckhouse VMs",
            "kubevirt": f"{vms} KubeVirt VMs",
            "both": f"{vms} Deckhouse and {vms} KubeVirt VMs",
        }
        print(f"== {nodes} nodes, {apis[virt]}, files in {workdir}")
        mode = ", ".join(
            f"{k} {fencing[k]}" for k in ("cleanup", "after_proof", "release") if k in fencing
        )
        print(f"== fencing: {mode or 'cleanup delete, after_proof off, release true'}")
        print(f"== kube-controller-manager timers: {cluster.settings.timers.describe()}")
    cluster.start()
    watcher = Watcher(cluster, tl)
    screen = None
    if echo and live and sys.stdout.isatty():
        from hwsim.liveview import LiveScreen

        tl.sink = []
        screen = LiveScreen(cluster, tl.sink)
    try:
        cluster.wait_for("a leader", cluster.leader, 60)  # 5 agents starting on a busy machine
        tl.start = time.monotonic()  # the timeline starts with a running cluster
        watcher.start()
        if screen is not None:
            screen.start()
        tl.add(str(cluster.leader()), "holds the leader Lease")
        # Let the leader hear everyone for its first full window (fence_after) first.
        settled = time.monotonic() + 4.5
        if sc.warm_standbys:
            # ... and its standbys: named, learnt (a cold read), and a full window heard.
            cluster.wait_for("warm standbys named on the Lease", cluster.standbys, 30)
            s = cluster.settings
            learnt = max(s.retry_period, s.lease_duration / 2)
            settled = max(settled, time.monotonic() + learnt + 4.5)
        time.sleep(max(0.0, settled - time.monotonic()))
        if sc.warm_standbys:
            tl.add("-", f"warm standbys: {', '.join(cluster.standbys())}")
        injected = time.monotonic() - tl.start
        hosted = _hosted(cluster)
        victims = sc.inject(cluster, tl)
        deadline = time.monotonic() + sc.timeout
        while time.monotonic() < deadline and not sc.wait(cluster, victims):
            time.sleep(0.1)
        if sc.epilogue is not None and sc.wait(cluster, victims):
            sc.epilogue(cluster, tl, victims)
        time.sleep(1.0)  # let the last changes show up in the timeline
        problems = sc.judge(cluster, victims)
        explained = _explain(cluster, victims)
        if sc.delete_within is not None:
            s = cluster.settings
            fence_after = profile_from_mapping({"profile": s.profile, **s.overrides}).fence_after
            limit = sc.delete_within * (fence_after + 1.0)
            problems += _deleted_in_time(tl, victims, injected, limit)
    finally:
        watcher.stop()
        if screen is not None:
            screen.stop()
        cluster.stop()
    end = time.monotonic() - tl.start
    failed_at = tl.failed_at if tl.failed_at is not None else injected
    watcher.samples.milestone(failed_at, "-", victims_said(victims))
    chart = write_svg(watcher.samples, end, f"nodefence scenario {name}", workdir / "timeline.svg")
    timeline = [f"{t:7.2f}s  {node:<8} {what}" for t, node, what in tl.lines]
    (workdir / "timeline.txt").write_text("".join(f"{line}\n" for line in timeline))
    story = summary(tl.lines, failed_at, victims, hosted, sc.expect_down)
    (workdir / "summary.txt").write_text("".join(f"{line}\n" for line in story))
    if echo:
        if screen is not None:  # the live screen showed only the last lines: the whole story
            print(f"== timeline ({len(timeline)} lines)")
            print("\n".join(timeline))
        print("== summary")
        print("\n".join(f"   {line}" for line in story))
        print(f"== timeline chart: {chart}")
        for path in explained:
            print(f"== nodefence explain: {path}")
        if sc.checks:
            print("== checked: " + "; ".join(sc.checks))
        verdict = "PASS, as nodefence promises" if not problems else "FAIL"
        if not problems and sc.expect_down:
            verdict += " (and as expected, the VMs above stay down: someone must act)"
        print(f"== verdict: {verdict}")
        for p in problems:
            print(f"   - {p}")
    return not problems, tl


def victims_said(victims: list[str]) -> str:
    """The failure's label on the chart."""
    return f"failure: {', '.join(victims)}"


def _hosted(cluster: SimCluster) -> dict[str, VmSeen]:
    """Every VM's state now, as the timeline's VM lines say it."""
    return {
        vm.name: VmSeen(vm.name, vm.policy, vm.phase, vm.node or "")
        for vm in vm_views(cluster.kube.store)  # Deckhouse and KubeVirt VMs alike
    }
