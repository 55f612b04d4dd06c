"""`nodefence-hwsim chaos`: a seeded random schedule of faults against a simulated cluster,
with the invariants nodefence promises checked all along.

The schedule (`hwsim.chaos_schedule`) is a pure function of the seed; the checks
(`hwsim.chaos_invariants`) are pure functions of snapshots. This module does the talking:
it starts a `SimCluster` (BMCs, VMs, real agents and broker), performs each step on time,
powers orphaned machines back on, polls the cluster into snapshots every ~50 ms, and writes a
JSON report. Timing outside the schedule (how fast agents react) is not deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsim.chaos_invariants import INVARIANTS, InvariantChecker, Snapshot
from hwsim.chaos_observe import seen_changes, take_snapshot
from hwsim.chaos_report import ChaosResult, print_summary
from hwsim.chaos_schedule import (
    START_KIND,
    Action,
    ChaosSettings,
    FaultKind,
    Step,
    make_schedule,
)
from hwsim.simcluster import ClusterSettings, SimCluster
from hwsim.simnode import REPO

# Short timings, as `scenario --fast` uses: detection ~4 s, a dead leader replaced in ~4 s.
SHORT_TIMINGS: dict[str, Any] = {
    "lease_duration": 4.0,
    "renew_deadline": 3.0,
    "retry_period": 0.5,
    "kubelet_lease_interval": 2.0,
    "boot_delay": 1.0,
    "migration_delay": 0.5,
    "fencing": {"recovery_timeout": 60, "retry_base": 2, "retry_max": 10},
}


# Short self-fencing timings (with --watchdog): a cut-off node resets ~4 s after the cut.
WATCHDOG: dict[str, Any] = {
    "timeout": 2.0,
    "cut_off_after": 2.0,
    "feed_interval": 0.2,
    "api_check_interval": 0.5,
}
SELF_FENCE: dict[str, Any] = {"self_fence": True, "self_fence_margin": 1.0}


@dataclass
class ChaosOptions:
    """One chaos run: what to start, how long, where files go."""

    seed: int
    duration: float
    workdir: Path
    nodes: int = 6
    vms: int = 12
    profile: str = "default"
    report: Path | None = None
    recovery_deadline: float = 30.0
    janitor_after: float = 3.0  # seconds an orphaned machine stays off before it is repaired
    poll: float = 0.05
    echo: bool = True
    schedule: ChaosSettings = field(default_factory=ChaosSettings)
    watchdog: bool = False  # nodes feed emulated watchdogs; the leader may count self-fences


class ChaosRun:
    """Start with `run()`; `stop` (an Event) ends it early (Ctrl-C), cleaning up all the same."""

    def __init__(self, opts: ChaosOptions, stop: threading.Event | None = None) -> None:
        self.opts = opts
        self.stop = stop or threading.Event()
        self.names = [f"node-{i}" for i in range(1, opts.nodes + 1)]
        self.steps = make_schedule(opts.seed, opts.duration, self.names, opts.schedule)
        settings = {**SHORT_TIMINGS, "nodes": opts.nodes, "vms": opts.vms, "bmcs": True}
        settings["profile"] = opts.profile
        settings["links"] = True  # partitions cut each node's link; its agent runs on
        if opts.watchdog:
            settings["watchdog"] = dict(WATCHDOG)
            settings["fencing"] = {**SHORT_TIMINGS["fencing"], **SELF_FENCE}
        self.settings = ClusterSettings(**settings)
        interval = self.settings.kubelet_lease_interval
        self.checker = InvariantChecker(
            recovery_deadline=opts.recovery_deadline, kubelet_alive_window=2 * interval + 0.5
        )
        self.cluster: SimCluster | None = None
        self.t0 = 0.0
        self.kinds: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self.busy: dict[str, int] = {}  # node -> episode holding its power (janitor keeps off)
        self.killed: dict[int, str] = {}  # leader-kill episode -> node
        self.moved: dict[int, str] = {}  # episode -> the node really hit (the leader's machine)
        self.skipped: set[int] = set()  # episodes not started: their node was taken
        self.victims: Counter[str] = Counter()  # power losses of the leader's / a broker's machine
        self._off_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen[str]] = []
        self._watch_stop = threading.Event()

    # ---- output ---------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the chaos began."""
        return time.monotonic() - self.t0

    def say(self, kind: str, node: str | None, detail: str = "", count: bool = False) -> None:
        """Print and log one line; `count` adds it to the faults injected by kind."""
        t = self.now()
        with self._lock:
            if count:
                self.kinds[kind] += 1
            self.log.append({"t": round(t, 3), "kind": kind, "node": node, "detail": detail})
        if self.opts.echo:
            print(f"{t:8.2f}s  {kind:<18} {node or '-':<8} {detail}".rstrip(), flush=True)

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        """Start the cluster, play the schedule, check, stop everything; returns the result."""
        opts = self.opts
        if (opts.workdir / "kubeconfig").exists():  # a previous run of ours: start clean
            shutil.rmtree(opts.workdir)
        cluster = self.cluster = SimCluster(opts.workdir, self.settings)
        controller = None
        if opts.echo:
            print(
                f"== chaos seed {opts.seed}, {opts.duration:g} s, {opts.nodes} nodes, "
                f"{opts.vms} VMs, at most {opts.schedule.max_faulty} faulty; "
                f"{len(self.steps)} steps; files in {opts.workdir}",
                flush=True,
            )
        watcher = threading.Thread(target=self._watch, name="chaos-watcher", daemon=True)
        started = time.monotonic()
        try:
            cluster.start()
            controller = cluster.vm_controller
            cluster.wait_for("a leader", cluster.leader, 30)
            self.t0 = time.monotonic()
            watcher.start()
            self.say("start", cluster.leader(), f"cluster up in {self.t0 - started:.1f} s")
            self._play()
            self._settle()
        finally:
            self._watch_stop.set()
            if watcher.is_alive():
                watcher.join(5)
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()
            for thread in self._threads:
                thread.join(5)
            cluster.stop()
        return self._report(controller.violations() if controller is not None else [])

    def _play(self) -> None:
        for step in self.steps:
            while not self.stop.is_set() and self.now() < step.at:
                self._janitor()
                self.stop.wait(min(0.2, max(0.0, step.at - self.now())))
            if self.stop.is_set():
                self.say("interrupted", None, "stopping early")
                return
            try:
                self._perform(step)
            except Exception as err:  # one failed step must not end the run unchecked
                self.say("step-error", step.node, f"{step.action.value}: {err!r}")

    def _settle(self) -> None:
        """After the last step: orphans repaired, recoveries given their deadline."""
        deadline = time.monotonic() + self.opts.recovery_deadline + 2.0
        quiet_until = time.monotonic() + 3.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._janitor()
            with self._lock:
                waiting = bool(self.checker.pending)
            alive = any(t.is_alive() for t in self._threads)
            if not waiting and not alive and time.monotonic() >= quiet_until:
                break
            self.stop.wait(0.2)
        assert self.cluster is not None
        final = take_snapshot(self.cluster, self.now())  # the final check, watcher or not
        with self._lock:
            found = self.checker.observe(final) + self.checker.finish(final.t)
        for v in found:
            self.say("VIOLATION", v.node, f"{v.invariant}: {v.detail}")

    # ---- steps ----------------------------------------------------------------------------

    def _victim(self, step: Step) -> str | None:
        """The node a step acts on: a power loss aimed at the leader hits the leader's machine
        when it is free; an episode whose node another episode holds is skipped whole."""
        assert self.cluster is not None
        if step.episode in self.skipped:
            return None
        node = self.moved.get(step.episode, step.node)
        if step.action in START_KIND and node is not None:
            if step.params.get("victim") == "leader":
                leader = self.cluster.leader()
                if leader is not None and leader not in self.busy:
                    self.moved[step.episode] = node = leader
            if node in self.busy:
                self.skipped.add(step.episode)
                self.say("skipped", node, f"{step.action.value}: node held by another fault")
                return None
        return node

    def _hosts(self, node: str) -> str:
        assert self.cluster is not None
        held = [f"broker {i}" for i, h in enumerate(self.cluster.broker_hosts) if h == node]
        lead = ["the Lease"] if self.cluster.leader() == node else []
        return f" (it holds {' and '.join(lead + held)})" if lead or held else ""

    def _perform(self, step: Step) -> None:
        cluster = self.cluster
        assert cluster is not None
        node = self._victim(step)
        if node is None and step.node is not None:
            return
        kind = START_KIND.get(step.action)
        a = step.action
        if a is Action.POWER_LOSS and node:
            self.busy[node] = step.episode
            hosts = self._hosts(node)
            if cluster.leader() == node:
                self.victims["leader_machine"] += 1
            if node in cluster.broker_hosts:
                self.victims["broker_machine"] += 1
            cluster.fleet[node].cut_power()
            self.say(a.value, node, f"machine off{hosts}; its BMC still answers", count=True)
        elif a is Action.PARTITION and node:
            self.busy[node] = step.episode
            cluster.nodes[node].isolate()
            self.say(a.value, node, "network cut: agent runs on alone, kubelet silent", count=True)
        elif a in (Action.REPAIR, Action.HEAL) and node:
            self.busy.pop(node, None)
            self._power_on_or_heal(node, a)
        elif a is Action.BMC_FAULT and node:
            cluster.fleet[node].set_faults(**step.params)
            text = " ".join(f"{k}={v}" for k, v in step.params.items())
            self.say(a.value, node, text, count=True)
        elif a is Action.BMC_CLEAR and node:
            cluster.fleet[node].set_faults(
                unreachable=False,
                slow=0.0,
                wrong_credentials=False,
                ignore_off=False,
                off_delay=0.0,
                fail_first=0,
            )
            self.say(a.value, node, "BMC healthy again")
        elif a is Action.BROKER_RESTART:
            cluster.restart_brokers()
            ports = ", ".join(str(b.port) for b in cluster.brokers)
            self.say(a.value, None, f"every mosquitto back (ports {ports})", count=True)
        elif a is Action.LEADER_KILL:
            leader = cluster.leader()
            if leader is None or not cluster.nodes[leader].agent_running():
                self.say("skipped", leader, "leader-kill: no running leader agent")
                return
            self.killed[step.episode] = leader
            cluster.nodes[leader].kill_agent()
            self.say(a.value, leader, "SIGKILL of the Lease holder's agent", count=True)
        elif a is Action.AGENT_RESTART:
            victim = self.killed.pop(step.episode, None)
            sim = cluster.nodes[victim] if victim else None
            if sim is None or sim.agent_running() or sim.partitioned:
                return
            if cluster.fleet[sim.name].power_state() == "on":
                cluster.start_agent(sim.name)
                self.say(a.value, sim.name, "agent started again")
        elif a is Action.MAINTENANCE_ENTER and node:
            self.busy[node] = step.episode
            until = self.t0 + max(s.at for s in self.steps if s.episode == step.episode)
            thread = threading.Thread(
                target=self._maintenance, args=(node, step.episode, until), daemon=True
            )
            self._threads.append(thread)
            thread.start()
        elif a is Action.MAINTENANCE_EXIT:
            pass  # the maintenance thread ends its own episode (power on, then exit)
        elif kind is not None:
            self.say("skipped", node, f"{a.value}: no node")

    def _power_on_or_heal(self, node: str, action: Action) -> None:
        assert self.cluster is not None
        machine, sim = self.cluster.fleet[node], self.cluster.nodes[node]
        if machine.power_state() == "off":
            machine.request_on()
            self.say(FaultKind.REPAIR.value, node, f"powered on ({action.value})", count=True)
        elif sim.partitioned:
            sim.heal()
            self.say(action.value, node, "network back")

    def _janitor(self) -> None:
        """Power on machines left off by no episode (fenced after their episode ended)."""
        assert self.cluster is not None
        now = time.monotonic()
        for machine in self.cluster.fleet:
            if machine.power_state() == "on" or machine.name in self.busy:
                self._off_since.pop(machine.name, None)
                continue
            since = self._off_since.setdefault(machine.name, now)
            if now - since >= self.opts.janitor_after:
                machine.request_on()
                self._off_since.pop(machine.name, None)
                self.say(FaultKind.REPAIR.value, machine.name, "powered on (orphan)", count=True)

    def _maintenance(self, node: str, episode: int, until: float) -> None:
        """Enter maintenance, cut the power for the planned work, power on, exit."""
        assert self.cluster is not None
        machine = self.cluster.fleet[node]
        try:
            self.say(FaultKind.MAINTENANCE.value, node, "maintenance enter --vms-only", count=True)
            timeout = max(5.0, until - time.monotonic() - 4.0)
            code, out = self._nodefence(
                "maintenance", "enter", node, "--vms-only", "--timeout", f"{timeout:.0f}"
            )
            if code == 0 and time.monotonic() < until and not self.stop.is_set():
                machine.cut_power()
                self.say("maintenance-power", node, "power cut for the planned work")
            else:
                self.say("maintenance-failed", node, f"enter exit {code}: {out[-200:]!r}")
            self.stop.wait(max(0.0, until - time.monotonic()))
            if machine.power_state() == "off":
                machine.request_on()
                self.say(FaultKind.REPAIR.value, node, "powered on (maintenance over)", count=True)
            ready = time.monotonic() + 20.0
            while time.monotonic() < ready and not self.stop.is_set():
                if self._node_ready(node):
                    break
                time.sleep(0.2)
            code, out = self._nodefence("maintenance", "exit", node, "--force")
            self.say(
                "maintenance-exit", node, "done" if code == 0 else f"exit {code}: {out[-200:]!r}"
            )
        finally:
            if self.busy.get(node) == episode:
                del self.busy[node]

    def _node_ready(self, node: str) -> bool:
        assert self.cluster is not None
        try:
            obj = self.cluster.kube.store.get("nodes", node)
        except Exception:
            return False
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _nodefence(self, *args: str) -> tuple[int, str]:
        assert self.cluster is not None
        command = [sys.executable, "-m", "agent.cli", *args]
        command += ["--kubeconfig", str(self.cluster.kubeconfig)]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            text=True,
        )
        self._procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return proc.returncode, out

    # ---- watching -------------------------------------------------------------------------

    def _watch(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        prev: Snapshot | None = None
        while not self._watch_stop.wait(self.opts.poll):
            try:
                snap = take_snapshot(cluster, self.now())
                with self._lock:
                    found = self.checker.observe(snap)
            except Exception as err:  # the watcher must never end the run early
                self.say("watcher-error", None, f"{type(err).__name__}: {err}")
                continue
            if prev is not None:
                for node, line in seen_changes(prev, snap):
                    self.say("  seen", node, line)
            prev = snap
            for v in found:
                self.say("VIOLATION", v.node, f"{v.invariant}: {v.detail}")

    # ---- the report -----------------------------------------------------------------------

    def _report(self, brains: list[str]) -> ChaosResult:
        checker = self.checker
        violations: list[dict[str, Any]] = [
            {"t": v.t, "invariant": v.invariant, "node": v.node, "detail": v.detail}
            for v in checker.violations
        ]
        if brains and not any(v["invariant"] == "split-brain" for v in violations):
            violations += [
                {"t": None, "invariant": "split-brain", "node": "-", "detail": b} for b in brains
            ]
        by_invariant = {name: 0 for name in INVARIANTS}
        for v in violations:
            by_invariant[str(v["invariant"])] += 1
        downtimes = [d for _, _, d in checker.recoveries]
        report = {
            "seed": self.opts.seed,
            "duration": self.opts.duration,
            "nodes": self.opts.nodes,
            "vms": self.opts.vms,
            "max_faulty": self.opts.schedule.max_faulty,
            "recovery_deadline": self.opts.recovery_deadline,
            "workdir": str(self.opts.workdir),
            "interrupted": self.stop.is_set(),
            "schedule": [s.to_json() for s in self.steps],
            "timeline": self.log,
            "counts": {
                "faults": dict(sorted(self.kinds.items())),
                "fences": {
                    "records": len(checker.records_seen),
                    "proven_off": len(checker.proven),
                    "nodes_deleted": len(checker.deleted_nodes),
                },
                "power_losses_of": {
                    "leader_machine": self.victims["leader_machine"],
                    "broker_machine": self.victims["broker_machine"],
                },
                "recoveries": len(checker.recoveries),
                "max_recovery_seconds": max(downtimes, default=None),
                "violations": by_invariant,
            },
            "recoveries": [
                {"vm": vm, "lost_node": node, "seconds": d} for vm, node, d in checker.recoveries
            ],
            "violations": violations,
        }
        path = self.opts.report or self.opts.workdir / "chaos-report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        return ChaosResult(report, path)


def run_chaos(opts: ChaosOptions, stop: threading.Event | None = None) -> ChaosResult:
    """Play one chaos run; prints its summary when `opts.echo`."""
    result = ChaosRun(opts, stop).run()
    if opts.echo:
        print_summary(result)
    return result
