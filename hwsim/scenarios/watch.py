"""A scenario's timeline, as it happens: `Timeline` (the lines, printed or sent to a live
screen) and `Watcher`, which polls the simulated cluster's API objects, machines and the
leader's view and turns every change into a timeline line and the chart's samples
(`nodefence.hwsim.scenarios.chart`): power and nodefence's verdict per node, the leader, the pause,
each VM.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.scenarios.chart import Samples, vm_state
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views

# Events drawn as labelled milestones on the chart: reason -> words.
MILESTONE_EVENTS = {
    "NodeDeclaredDead": "declared dead",
    "FencePoweredOff": "proven off",
    "FenceFailed": "fence failed",
    "FenceRecovered": "recovered",
    "FenceRecoveryIncomplete": "recovery incomplete",
    "AlertStorm": "storm alert",
    "AlertPaused": "fencing paused",
    "AlertMaintenance": "down in maintenance",
}


@dataclass
class Timeline:
    """What the watcher saw, stamped relative to the scenario's start."""

    start: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    echo: bool = True
    sink: list[str] | None = None  # lines for a live screen, instead of printing
    failed_at: float | None = None  # when the failure of a multi-step injection happened
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failure(self) -> None:
        """Now is the failure (a power cut after some preparation): outages count from here."""
        if self.failed_at is None:
            self.failed_at = time.monotonic() - self.start

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
        self.feed: Any = None  # the leader's view (suspect, dead: the verdict lanes)

    def start(self) -> None:
        """Begin watching (the first look is the baseline, not reported)."""
        from nodefence.hwsim.liveview import LeaderViewFeed

        self.feed = LeaderViewFeed(self.cluster, "watcher")
        self.feed.start()
        self._look(report=False)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread.ident is not None:  # started (a failed start never got there)
            self._thread.join(2)
        if self.feed is not None:
            self.feed.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._look(report=True)
            except Exception as err:  # the watcher must never end a scenario early
                self.timeline.add("-", f"(watcher: {type(err).__name__}: {err})")

    def _look(self, report: bool) -> None:
        store, tl = self.cluster.kube.store, self.timeline
        t = time.monotonic() - tl.start
        leader = self.cluster.leader()
        if report and leader != self._leader:
            tl.add(leader or "-", "holds the leader Lease" if leader else "no leader")
            self.samples.milestone(t, leader or "-", f"{leader} leads" if leader else "no leader")
        self._leader = leader
        self.samples.holder(t, leader)
        self.samples.paused(t, self._pause())
        for ev in self.cluster.events():
            uid = ev["metadata"]["uid"]
            if uid in self._seen_events:
                continue
            self._seen_events.add(uid)
            about = ev["involvedObject"]
            obj = about["name"]
            if report:
                tl.add(obj, f"{ev['reason']}: {ev.get('message', '')}")
                kind = about.get("kind")
                lane = {"Lease": "cluster", "VirtualMachine": f"vm {obj}"}.get(
                    str(kind), f"{obj} nodefence"
                )
                self.samples.marks.append((t, lane, f"{ev['reason']}: {ev.get('message', '')}"))
                said = MILESTONE_EVENTS.get(ev["reason"])
                if said:
                    self.samples.milestone(
                        t, obj, f"{obj if kind == 'Node' else ''} {said}".strip()
                    )
            flag = {
                "NodeDeclaredDead": "dead",
                "AgentLostNodeAlive": "agent-lost",
                "NodeHeartbeatsBack": "healthy",
            }.get(ev["reason"])
            if flag:
                self._flag[obj] = flag
        nodes = {n["metadata"]["name"]: n for n in store.list("nodes")["items"]}
        if report:
            for gone in sorted(self._nodes - set(nodes)):
                tl.add(gone, "Node deleted from the cluster")
                self.samples.milestone(t, gone, f"{gone} Node deleted")
        self._nodes = set(nodes)
        self._look_at_pods_and_volumes(report)
        for sim in self.cluster.nodes.values():
            resets = len(sim.watchdog_resets)
            if report and resets > self._resets.get(sim.name, 0):
                tl.add(sim.name, "WATCHDOG RESET: its agent stopped feeding the watchdog")
            self._resets[sim.name] = resets
        phases = {}
        for rec in store.list("fenceoperations", "nodefence")["items"]:
            phases[rec["spec"]["nodeName"]] = (rec.get("status") or {}).get("phase", "")
        rows = {r.get("node"): r for r in (self.feed.view.get("nodes") or [])} if self.feed else {}
        hosts: dict[str, str] = {}
        for machine in self.cluster.fleet:
            name = machine.name
            power = "on" if machine.power_state() == "on" else "off"
            if power == "on" and self.cluster.nodes[name].partitioned:
                power = "cut off"
            hosts[name] = power
            self.samples.node(t, name, power, self._verdict(name, nodes, phases, rows))
        for vm in vm_views(store):  # Deckhouse and KubeVirt VMs alike
            now = (vm.phase, vm.node or "")
            self.samples.vm(t, vm.name, vm_state(now[0], hosts.get(now[1], "on")), now[1])
            if report and self._vms.get(vm.key) != now:
                where = f" on {now[1]}" if now[1] else ""
                tl.add(now[1] or "-", f"VM {vm.name} ({vm.policy}) {now[0]}{where}")
            self._vms[vm.key] = now

    def _verdict(
        self,
        name: str,
        nodes: dict[str, Any],
        phases: dict[str, str],
        rows: dict[Any, Any],
    ) -> str:
        """nodefence's verdict on a node now: its fence's phase, else the leader's view."""
        if name not in nodes:
            return "deleted"
        phase = phases.get(name)
        if phase in ("Pending", "Fencing"):
            return "fencing"
        if phase == "FenceFailed":
            return "fence failed"
        if phase in ("PoweredOff", "Cleaned", "Recovering", "Returning"):
            return "proven off"
        labels = nodes[name]["metadata"].get("labels") or {}
        if labels.get("nodefence.io/maintenance") == "true":
            return "maintenance"
        row = rows.get(name)
        if row is not None and row.get("state"):
            return str(row["state"])
        return self._flag.get(name, "healthy")

    def _pause(self) -> str | None:
        """The pause on the leader Lease (its reason), or None."""
        from nodefence.agent.fencing.pause import PAUSE_ANNOTATION, Pause
        from nodefence.hwsim.kube.errors import NotFound

        try:
            lease = self.cluster.kube.store.get("leases", "nodefence-leader", "nodefence")
        except NotFound:  # no leader yet
            return None
        pause = Pause.parse((lease["metadata"].get("annotations") or {}).get(PAUSE_ANNOTATION))
        return None if pause is None else pause.reason

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
