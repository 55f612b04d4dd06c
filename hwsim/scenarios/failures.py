"""The failures the scripted scenarios inject, and how each outcome is judged.

Each `inject` function (`power_loss`, `partition`, ...) breaks something on a running
`SimCluster`, says so on the timeline and returns the victims; each `judge_*` returns the
problems found once the scenario's wait is over ([] = as nodefence promises).
`nodefence.hwsim.scenarios.catalogue` pairs them into named scenarios.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.scenarios.release import drain_then_cut, judge_release
from nodefence.hwsim.scenarios.watch import Timeline
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views


def pick_victims(cluster: SimCluster, count: int) -> list[str]:
    leader = cluster.leader()
    return [n for n in sorted(cluster.nodes, reverse=True) if n != leader][:count]


def records_of(cluster: SimCluster, node: str) -> list[dict[str, Any]]:
    items = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    return [r for r in items if r["spec"]["nodeName"] == node]


def phase_of(cluster: SimCluster, node: str) -> str:
    recs = records_of(cluster, node)
    return str((recs[-1].get("status") or {}).get("phase", "")) if recs else ""


def judge_recovered(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = judge_release(cluster, victims)
    reboot = cluster.settings.fencing.get("after_proof") == "reboot"
    for v in victims:
        if phase_of(cluster, v) != "Recovered":
            problems.append(f"{v}: fencing ended {phase_of(cluster, v) or 'never started'}")
        if cluster.fleet[v].power_state() != ("on" if reboot else "off"):
            problems.append(f"{v}: {'not powered on again' if reboot else 'still powered'}")
    for vm in vm_views(cluster.kube.store):
        if vm.restarts and not vm.running:
            problems.append(f"VM {vm.name} is {vm.phase}, not Running")
        if vm.node in victims and vm.running:
            problems.append(f"VM {vm.name} still on fenced {vm.node}")
    problems += [f"split brain: {v}" for v in cluster.vm_violations()]
    return problems


def power_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = pick_victims(cluster, 1)
    tl.add(victim[0], "POWER LOSS (machine off; BMC on standby power)")
    cluster.fleet[victim[0]].cut_power()
    return victim


def partition(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = pick_victims(cluster, 1)
    tl.add(victim[0], "NETWORK PARTITION (still powered, VMs still running there)")
    cluster.nodes[victim[0]].partition()
    return victim


def bmc_unreachable(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = pick_victims(cluster, 1)
    tl.add(victim[0], "BMC UNREACHABLE, then NETWORK PARTITION")
    cluster.fleet[victim[0]].set_faults(unreachable=True)
    cluster.nodes[victim[0]].partition()
    return victim


def self_fence(cluster: SimCluster, tl: Timeline) -> list[str]:
    victim = pick_victims(cluster, 1)
    tl.add(victim[0], "BMC UNREACHABLE, then NETWORK CUT (its agent runs on, alone)")
    cluster.fleet[victim[0]].set_faults(unreachable=True)
    cluster.nodes[victim[0]].isolate()
    return victim


def judge_self_fence(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    problems = judge_recovered(cluster, victims)
    resets = cluster.nodes[v].watchdog_resets
    if not resets:
        problems.append(f"{v}: its watchdog never reset it")
    recs = records_of(cluster, v)
    proof = (recs[-1].get("status") or {}).get("proof") if recs else None
    if proof != "watchdog":
        problems.append(f"{v}: off proven by {proof or 'nothing'}, not by its watchdog deadline")
    return problems


def judge_fence_failed(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    problems = [] if phase_of(cluster, v) == "FenceFailed" else [f"{v}: {phase_of(cluster, v)}"]
    if not any(n["metadata"]["name"] == v for n in cluster.kube.store.list("nodes")["items"]):
        problems.append(f"{v}: Node deleted without a proven Off")
    for ctl in cluster.vm_controllers:
        for key, places in ctl.actual.items():
            if places - {v} and v in places:
                problems.append(f"VM {key[1]} started elsewhere while {v} still runs it")
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems


def leader_power_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = str(cluster.leader())
    hosts = [f"broker {i}" for i, h in enumerate(cluster.broker_hosts) if h == leader]
    also = f", with {' and '.join(hosts)}" if hosts else ""
    tl.add(leader, f"POWER LOSS OF THE LEADER'S MACHINE (its fencer and agent{also})")
    cluster.fleet[leader].cut_power()
    return [leader]


def broker_node_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = cluster.leader()
    index, host = next((i, h) for i, h in enumerate(cluster.broker_hosts) if h != leader)
    tl.add(host, f"POWER LOSS OF BROKER {index}'S MACHINE (the broker dies with it)")
    cluster.fleet[host].cut_power()
    return [host]


def judge_recovered_alone(cluster: SimCluster, victims: list[str]) -> list[str]:
    """Recovered as a worker is, and nobody else fenced, declared dead or frozen for it."""
    problems = judge_recovered(cluster, victims)
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


def deleted_in_time(tl: Timeline, victims: list[str], start: float, limit: float) -> list[str]:
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


def leader_crash(cluster: SimCluster, tl: Timeline) -> list[str]:
    leader = str(cluster.leader())
    tl.add(leader, "LEADER FENCER AND THE NODE'S AGENT KILLED (SIGKILL; node stays up)")
    cluster.nodes[leader].kill_fencer()
    cluster.nodes[leader].kill_agent()
    return [leader]


def judge_leader_crash(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = []
    new = cluster.leader()
    if new in (None, victims[0]):
        problems.append("no new leader")
    if records_of(cluster, victims[0]):
        problems.append(f"{victims[0]} (alive, agent dead) was fenced")
    if not cluster.events("AgentLostNodeAlive"):
        problems.append("the old leader's node was not reported as 'agent lost, node alive'")
    return problems


def rack_loss(cluster: SimCluster, tl: Timeline) -> list[str]:
    victims = pick_victims(cluster, 3)
    for v in victims:
        tl.add(v, "POWER LOSS (rack)")
        cluster.fleet[v].cut_power()
    return victims


def judge_rack_loss(cluster: SimCluster, victims: list[str]) -> list[str]:
    problems = [] if cluster.events("AlertStorm") else ["no storm alert"]
    problems += [f"{v} was fenced during a storm" for v in victims if records_of(cluster, v)]
    return problems


def maintenance(cluster: SimCluster, tl: Timeline) -> list[str]:
    """`nodefence maintenance enter` as an operator runs it, then the planned power cut."""
    victim = pick_victims(cluster, 1)[0]
    tl.add(victim, "MAINTENANCE ENTER (nodefence maintenance enter --vms-only)")
    proc = cluster.nodefence("maintenance", "enter", victim, "--vms-only", "--timeout", "60")
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


def maintenance_alert(cluster: SimCluster, node: str) -> bool:
    return any(e["involvedObject"]["name"] == node for e in cluster.events("AlertMaintenance"))


def judge_maintenance(cluster: SimCluster, victims: list[str]) -> list[str]:
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
    if records_of(cluster, v):
        problems.append(f"{v} (in maintenance) was fenced: {phase_of(cluster, v)}")
    if any(e["involvedObject"]["name"] == v for e in cluster.events("NodeDeclaredDead")):
        problems.append(f"{v} (in maintenance) was declared dead")
    if cluster.fleet[v].power_state() == "off" and not maintenance_alert(cluster, v):
        problems.append(f"the leader never reported {v} as in maintenance")
    for ctl in cluster.vm_controllers:
        # A KubeVirt VM whose evictionStrategy stops it on a drain was shut down on purpose
        # (and started elsewhere by its runStrategy), before the power cut: not lost with it.
        lost = [r for r in ctl.history if not r.why.startswith("shut down")]
        problems += [f"{rec.name} lost with {v}" for rec in lost]
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems


def drain(cluster: SimCluster, tl: Timeline) -> list[str]:
    return drain_then_cut(cluster, tl, pick_victims(cluster, 1)[0])
