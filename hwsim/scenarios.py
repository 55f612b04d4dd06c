"""Scripted failure scenarios on a simulated cluster, with a timeline and a verdict.

Each scenario starts a `SimCluster` (mosquitto, the Kubernetes API emulator, emulated BMCs,
one real agent process per node, the ColdStandby controller and VMs), injects one failure,
prints what happened as a timeline, and checks the outcome against what nodefence promises.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.profiles import profile_from_mapping
from hwsim import scenario_busy
from hwsim.chart import Samples, write_svg
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

RESTARTABLE = ("AlwaysOn", "AlwaysOnUnlessStoppedManually")


@dataclass
class Timeline:
    """What the watcher saw, stamped relative to the scenario's start."""

    start: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    echo: bool = True
    sink: list[str] | None = None  # lines for a live screen, instead of printing
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, node: str, what: str) -> None:
        """Record (and print) one line."""
        t = time.monotonic() - self.start
        with self._lock:
            self.lines.append((t, node, what))
        line = f"{t:7.2f}s  {node:<8} {what}"
        if self.sink is not None:
            self.sink.append(line)
        elif self.echo:
            print(line, flush=True)


class Watcher:
    """Polls the cluster's API objects and turns every change into a timeline line."""

    def __init__(self, cluster: SimCluster, timeline: Timeline, period: float = 0.05) -> None:
        self.cluster = cluster
        self.timeline = timeline
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._seen_events: set[str] = set()
        self._nodes: set[str] = set()
        self._vms: dict[str, tuple[str, str]] = {}
        self._leader: str | None = None
        self.samples = Samples()
        self._flag: dict[str, str] = {}
        self._resets: dict[str, int] = {}
        self._pods: dict[str, tuple[str, str, bool]] = {}  # uid -> (ns/name, node, terminating)
        self._attached: dict[str, tuple[str, str, bool, bool]] = {}  # VA -> (pv, node, ...)

    def start(self) -> None:
        """Begin watching (the first look is the baseline, not reported)."""
        self._look(report=False)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._look(report=True)
            except Exception as err:  # the watcher must never end a scenario early
                self.timeline.add("-", f"(watcher: {type(err).__name__}: {err})")

    def _look(self, report: bool) -> None:
        store, tl = self.cluster.kube.store, self.timeline
        leader = self.cluster.leader()
        if report and leader != self._leader:
            tl.add(leader or "-", "holds the leader Lease" if leader else "no leader")
        self._leader = leader
        for ev in self.cluster.events():
            uid = ev["metadata"]["uid"]
            if uid in self._seen_events:
                continue
            self._seen_events.add(uid)
            obj = ev["involvedObject"]["name"]
            if report:
                tl.add(obj, f"{ev['reason']}: {ev.get('message', '')}")
                self.samples.marks.append((time.monotonic() - tl.start, obj, ev["reason"]))
            flag = {
                "NodeDeclaredDead": "dead",
                "AgentLostNodeAlive": "agent-lost",
                "NodeHeartbeatsBack": "healthy",
            }.get(ev["reason"])
            if flag:
                self._flag[obj] = flag
        nodes = {n["metadata"]["name"] for n in store.list("nodes")["items"]}
        if report:
            for gone in sorted(self._nodes - nodes):
                tl.add(gone, "Node deleted from the cluster")
        self._nodes = nodes
        self._look_at_pods_and_volumes(report)
        for sim in self.cluster.nodes.values():
            resets = len(sim.watchdog_resets)
            if report and resets > self._resets.get(sim.name, 0):
                tl.add(sim.name, "WATCHDOG RESET: its agent stopped feeding the watchdog")
            self._resets[sim.name] = resets
        t = time.monotonic() - tl.start
        phases = {}
        for rec in store.list("fenceoperations", "nodefence")["items"]:
            phases[rec["spec"]["nodeName"]] = (rec.get("status") or {}).get("phase", "")
        for machine in self.cluster.fleet:
            name = machine.name
            power = machine.power_state()
            if name not in nodes:
                state = "deleted"
            elif phases.get(name) in ("Pending", "Fencing", "FenceFailed"):
                state = "fencing"
            elif self._flag.get(name, "healthy") != "healthy":
                state = self._flag[name]
            elif self.cluster.nodes[name].partitioned:
                state = "cut off"
            else:
                state = "healthy" if power == "on" else "powered off"
            self.samples.node(t, name, state, "power off" if power == "off" else "")
        for vm in store.list("virtualmachines")["items"]:
            st0 = vm.get("status") or {}
            self.samples.vm(
                t, vm["metadata"]["name"], st0.get("phase", ""), st0.get("nodeName") or ""
            )
            key = vm["metadata"]["name"]
            st = vm.get("status") or {}
            now = (st.get("phase", ""), st.get("nodeName") or "")
            if report and self._vms.get(key) != now:
                where = f" on {now[1]}" if now[1] else ""
                tl.add(now[1] or "-", f"VM {key} ({vm['spec'].get('runPolicy')}) {now[0]}{where}")
            self._vms[key] = now

    def _look_at_pods_and_volumes(self, report: bool) -> None:
        """Pods going Terminating or away, volumes attached, detached (the release)."""
        store, tl = self.cluster.kube.store, self.timeline
        pods = {
            p["metadata"]["uid"]: (
                f"{p['metadata']['namespace']}/{p['metadata']['name']}",
                str((p.get("spec") or {}).get("nodeName") or "-"),
                bool(p["metadata"].get("deletionTimestamp")),
            )
            for p in store.list("pods")["items"]
        }
        if report:
            for uid, (name, node, terminating) in pods.items():
                if terminating and not self._pods.get(uid, ("", "", False))[2]:
                    tl.add(node, f"pod {name} Terminating (graceful delete)")
            for uid in self._pods.keys() - pods.keys():
                name, node, _ = self._pods[uid]
                tl.add(node, f"pod {name} deleted")
        self._pods = pods
        attached = {
            va["metadata"]["name"]: (
                str(((va.get("spec") or {}).get("source") or {}).get("persistentVolumeName")),
                str((va.get("spec") or {}).get("nodeName")),
                bool((va.get("status") or {}).get("attached")),
                bool(va["metadata"].get("deletionTimestamp")),
            )
            for va in store.list("volumeattachments")["items"]
        }
        if report:
            for name, (pv, node, ok, deleting) in attached.items():
                was = self._attached.get(name)
                if ok and not deleting and (was is None or not was[2]):
                    tl.add(node, f"volume {pv} attached to {node}")
            for name in self._attached.keys() - attached.keys():
                pv, node, _, _ = self._attached[name]
                tl.add(node, f"volume {pv} detached from {node} (VolumeAttachment gone)")
        self._attached = attached


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
    vms = cluster.kube.store.list("virtualmachines")["items"]
    reboot = cluster.settings.fencing.get("after_proof") == "reboot"
    for v in victims:
        if _phase(cluster, v) != "Recovered":
            problems.append(f"{v}: fencing ended {_phase(cluster, v) or 'never started'}")
        if cluster.fleet[v].power_state() != ("on" if reboot else "off"):
            problems.append(f"{v}: {'not powered on again' if reboot else 'still powered'}")
    for vm in vms:
        st = vm.get("status") or {}
        if vm["spec"].get("runPolicy") in RESTARTABLE and st.get("phase") != "Running":
            problems.append(f"VM {vm['metadata']['name']} is {st.get('phase')}, not Running")
        if st.get("nodeName") in victims and st.get("phase") == "Running":
            problems.append(f"VM {vm['metadata']['name']} still on fenced {st.get('nodeName')}")
    problems += [f"split brain: {v}" for v in cluster.vm_controller.violations()]
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
    ctl = cluster.vm_controller
    for key, places in ctl.actual.items():
        if places - {v} and v in places:
            problems.append(f"VM {key[1]} started elsewhere while {v} still runs it")
    problems += [f"split brain: {x}" for x in ctl.violations()]
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
    for vm in store.list("virtualmachines")["items"]:
        st = vm.get("status") or {}
        if st.get("nodeName") == v:
            problems.append(f"VM {vm['metadata']['name']} was still on {v} when it lost power")
        if vm["spec"].get("runPolicy") in RESTARTABLE and st.get("phase") != "Running":
            problems.append(f"VM {vm['metadata']['name']} is {st.get('phase')}, not Running")
    if _records(cluster, v):
        problems.append(f"{v} (in maintenance) was fenced: {_phase(cluster, v)}")
    if any(e["involvedObject"]["name"] == v for e in cluster.events("NodeDeclaredDead")):
        problems.append(f"{v} (in maintenance) was declared dead")
    if cluster.fleet[v].power_state() == "off" and not _maintenance_alert(cluster, v):
        problems.append(f"the leader never reported {v} as in maintenance")
    problems += [f"{rec.name} lost with {v}" for rec in cluster.vm_controller.history]
    problems += [f"split brain: {x}" for x in cluster.vm_controller.violations()]
    return problems


def _bmc_status(cluster: SimCluster, node: str) -> str:
    """`nodefence status` as an operator runs it (with `node`'s agent config)."""
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
    return done.stdout + done.stderr


def _status_row(cluster: SimCluster, asking: str, node: str) -> str:
    lines = _bmc_status(cluster, asking).splitlines()
    return next((line for line in lines if line.split(" ", 1)[0] == node), "")


def _bmc_password(cluster: SimCluster, tl: Timeline) -> list[str]:
    """A worker's BMC password is changed on the BMC; later the operator puts the new one in
    the node's password file (a rotated Secret). Nothing may be fenced meanwhile."""
    import secrets

    import yaml

    victim = _victims(cluster, 1)[0]
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
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    new = secrets.token_urlsafe(12)
    tl.add(victim, "BMC PASSWORD CHANGED on the BMC (the inventory still has the old one)")
    changed = time.monotonic()
    cluster.bmcs.set_password(victim, new)
    report = cluster.workdir / "bmc-password.txt"
    found = []

    def alerted() -> bool:
        return any(e["involvedObject"]["name"] == victim for e in cluster.events(_UNFENCEABLE))

    try:
        cluster.wait_for("the NodeCannotBeFenced alert", alerted, 3 * _CHECK_INTERVAL + 10)
    except TimeoutError:
        found.append(f"no {_UNFENCEABLE} alert for {victim}")
    else:
        found.append(f"alert after {time.monotonic() - changed:.1f} s")
        row = _status_row(cluster, asking, victim)
        tl.add(victim, f"nodefence status: {row}")
        found.append(f"status while broken: {row}")
    tl.add(victim, "PASSWORD FIXED: the new one written to the node's password file")
    own.write_text(new + "\n")
    report.write_text("\n".join(found) + "\n")
    return [victim]


_UNFENCEABLE = "NodeCannotBeFenced"
_CHECK_INTERVAL = 2.0


def _fenceable_again(cluster: SimCluster, node: str) -> bool:
    return any(e["involvedObject"]["name"] == node for e in cluster.events("NodeFenceableAgain"))


def _judge_bmc_password(cluster: SimCluster, victims: list[str]) -> list[str]:
    v = victims[0]
    lines = (cluster.workdir / "bmc-password.txt").read_text().splitlines()
    problems = [line for line in lines if line.startswith("no ")]
    took = [float(line.split()[2]) for line in lines if line.startswith("alert after")]
    if took and took[0] > 2 * _CHECK_INTERVAL + 5:
        problems.append(f"the alert took {took[0]:.1f} s, more than one check interval")
    broken = [line for line in lines if line.startswith("status while broken")]
    if broken and "CANNOT BE FENCED" not in broken[0]:
        problems.append(f"nodefence status did not say {v} cannot be fenced: {broken[0]}")
    if not any(e["involvedObject"]["name"] == v for e in cluster.events("BmcCheckFailed")):
        problems.append(f"no BmcCheckFailed Event about {v}")
    if not _fenceable_again(cluster, v):
        problems.append(f"fixing the password did not clear the alert on {v}")
    else:
        row = _status_row(cluster, str(cluster.leader()), v)
        if "CANNOT BE FENCED" in row or " ok " not in f" {row} ":
            problems.append(f"nodefence status after the fix: {row}")
    problems += [f"{n} was fenced" for n in cluster.nodes if _records(cluster, n)]
    return problems


def _drain(cluster: SimCluster, tl: Timeline) -> list[str]:
    return drain_then_cut(cluster, tl, _victims(cluster, 1)[0])


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
        ),
        Scenario(
            "bmc-unreachable",
            "a cut-off worker whose BMC is dead: never deleted",
            _bmc_unreachable,
            _judge_fence_failed,
            lambda c, v: _phase(c, v[0]) == "FenceFailed",
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
            "a worker's BMC password is changed: alert, 'cannot be fenced'; fixing it clears it",
            _bmc_password,
            _judge_bmc_password,
            lambda c, v: _fenceable_again(c, v[0]),
            settings={
                "fencing": {
                    "recovery_timeout": 60,
                    "bmc_check_interval": _CHECK_INTERVAL,
                    "bmc_check_parallel": 4,
                }
            },
            timeout=3 * _CHECK_INTERVAL + 10,
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
) -> tuple[bool, Timeline]:
    """Play scenario `name`; returns (passed, timeline). `cleanup` / `after_proof` set the
    agents' `fencing.cleanup` and `fencing.after_proof` (cleanup taint: reboot by default)."""
    sc = SCENARIOS[name]
    settings: dict[str, Any] = {
        "nodes": nodes,
        "vms": vms,
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
        print(f"== {nodes} nodes, {vms} VMs, files in {workdir}")
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
        cluster.wait_for("a leader", cluster.leader, 30)
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
    chart = write_svg(watcher.samples, end, f"nodefence scenario {name}", workdir / "timeline.svg")
    (workdir / "timeline.txt").write_text(
        "".join(f"{t:7.2f}s  {node:<8} {what}\n" for t, node, what in tl.lines)
    )
    if echo:
        print(f"== timeline chart: {chart}")
        for path in explained:
            print(f"== nodefence explain: {path}")
        print("== verdict: " + ("PASS, as nodefence promises" if not problems else "FAIL"))
        for p in problems:
            print(f"   - {p}")
    return not problems, tl
