"""`nodefence-hwsim chaos`: a seeded random schedule of faults against a simulated cluster,
with the invariants nodefence promises checked all along.

The schedule (`nodefence.hwsim.chaos.schedule`) is a pure function of the seed; the checks
(`nodefence.hwsim.chaos.invariants`) are pure functions of snapshots. This module does the talking:
it starts a `SimCluster` (BMCs, VMs, real agents and broker), performs each step on time,
powers orphaned machines back on, polls the cluster into snapshots every ~50 ms, and writes a
JSON report. Timing outside the schedule (how fast agents react) is not deterministic.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodefence.hwsim.chaos.heartbeats import HeartbeatWatch
from nodefence.hwsim.chaos.invariants import INVARIANTS, InvariantChecker, Snapshot
from nodefence.hwsim.chaos.observe import seen_changes, take_snapshot
from nodefence.hwsim.chaos.report import ChaosResult, print_summary
from nodefence.hwsim.chaos.schedule import ChaosSettings, make_schedule
from nodefence.hwsim.chaos.steps import StepRunner
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.simcluster_settings import ClusterSettings

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


VIRT_WORDS = {
    "deckhouse": "Deckhouse",
    "kubevirt": "KubeVirt",
    "both": "Deckhouse and as many KubeVirt",
}


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
    pdus: tuple[str, ...] = ()  # nodes also fed by an emulated PDU outlet (level 3)
    virt: str = "deckhouse"  # whose VMs: deckhouse, kubevirt, both (`vms` of each)


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
        settings["pdus"] = tuple(opts.pdus)
        settings["virt"] = opts.virt
        if opts.watchdog:
            settings["watchdog"] = dict(WATCHDOG)
            settings["fencing"] = {**SHORT_TIMINGS["fencing"], **SELF_FENCE}
        self.settings = ClusterSettings(**settings)
        interval = self.settings.kubelet_lease_interval
        self.checker = InvariantChecker(
            recovery_deadline=opts.recovery_deadline, kubelet_alive_window=2 * interval + 0.5
        )
        self.cluster: SimCluster | None = None
        self.runner: StepRunner | None = None
        self.heartbeats: HeartbeatWatch | None = None
        self.t0 = 0.0
        self.kinds: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []  # every FenceOperation as the run left it
        self._lock = threading.Lock()
        self._watch_stop = threading.Event()

    # ---- output ---------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the chaos began."""
        return time.monotonic() - self.t0

    def say(self, kind: str, node: str | None, detail: str = "", count: bool = False) -> None:
        """Print and log one line; `count` adds it to the faults injected by kind."""
        t = self.now()
        with self._lock:  # one whole line at a time: steps, traps and the watcher all say
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
        self.checker.broker_hosts = tuple(cluster.broker_hosts)
        controller = None
        if opts.echo:
            print(
                f"== chaos seed {opts.seed}, {opts.duration:g} s, {opts.nodes} nodes, "
                f"{opts.vms} {VIRT_WORDS.get(opts.virt, opts.virt)} VMs, "
                f"at most {opts.schedule.max_faulty} faulty; "
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
            self.runner = StepRunner(
                cluster, self.say, self.now, self.stop, self.steps, self.t0, opts.janitor_after
            )
            self.heartbeats = HeartbeatWatch(cluster, self.now)
            self.heartbeats.start()
            watcher.start()
            self.say("start", cluster.leader(), f"cluster up in {self.t0 - started:.1f} s")
            if opts.pdus:
                groups = "with" if cluster.channel_groups else "WITHOUT (the agent refuses them)"
                detail = f"BMC+PDU: {', '.join(opts.pdus)}; inventory {groups} channel groups"
                self.say("topology", None, detail)
            self._play()
            self._settle()
        finally:
            self._watch_stop.set()
            if watcher.is_alive():
                watcher.join(5)
            if self.heartbeats is not None:
                self.heartbeats.stop()
            runner = self.runner
            if runner is not None:
                cluster.kube.write_hook = None
                for proc in runner.procs:
                    if proc.poll() is None:
                        proc.kill()
                for thread in runner.threads:
                    thread.join(5)
            cluster.stop()
        return self._report(cluster.vm_violations() if controller is not None else [])

    def _play(self) -> None:
        runner = self.runner
        assert runner is not None
        for step in self.steps:
            while not self.stop.is_set() and self.now() < step.at:
                runner.janitor()
                self.stop.wait(min(0.2, max(0.0, step.at - self.now())))
            if self.stop.is_set():
                self.say("interrupted", None, "stopping early")
                return
            try:
                runner.perform(step)
            except Exception as err:  # one failed step must not end the run unchecked
                self.say("step-error", step.node, f"{step.action.value}: {err!r}")

    def _settle(self) -> None:
        """After the last step: orphans repaired, recoveries given their deadline."""
        runner = self.runner
        assert runner is not None and self.cluster is not None
        deadline = time.monotonic() + self.opts.recovery_deadline + 2.0
        quiet_until = time.monotonic() + 3.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            runner.janitor()
            with self._lock:
                waiting = bool(self.checker.pending)
            alive = any(t.is_alive() for t in runner.threads)
            if not waiting and not alive and time.monotonic() >= quiet_until:
                break
            self.stop.wait(0.2)
        # the final check, watcher or not
        final = take_snapshot(self.cluster, self.now(), self._heartbeats())
        self.records = final_records(self.cluster)
        with self._lock:
            found = self.checker.observe(final) + self.checker.finish(final.t)
        for v in found:
            self.say("VIOLATION", v.node, f"{v.invariant}: {v.detail}")

    # ---- watching -------------------------------------------------------------------------

    def _watch(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        prev: Snapshot | None = None
        while not self._watch_stop.wait(self.opts.poll):
            try:
                snap = take_snapshot(cluster, self.now(), self._heartbeats())
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

    def _heartbeats(self) -> dict[str, float]:
        return self.heartbeats.last() if self.heartbeats is not None else {}

    # ---- the report -----------------------------------------------------------------------

    def _report(self, brains: list[str]) -> ChaosResult:
        checker = self.checker
        victims = self.runner.victims if self.runner is not None else Counter()
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
            "virt": self.opts.virt,
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
                    "leader_machine": victims["leader_machine"],
                    "broker_machine": victims["broker_machine"],
                },
                "recoveries": len(checker.recoveries),
                "max_recovery_seconds": max(downtimes, default=None),
                "violations": by_invariant,
            },
            "recoveries": [
                {"vm": vm, "lost_node": node, "seconds": d} for vm, node, d in checker.recoveries
            ],
            "records": self.records,
            "phase_kills": self.runner.kills if self.runner else [],
            "missed": self.runner.missed if self.runner else [],
            "pdus": list(self.opts.pdus),
            "channel_groups": bool(self.cluster and self.cluster.channel_groups),
            "violations": violations,
        }
        path = self.opts.report or self.opts.workdir / "chaos-report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        return ChaosResult(report, path)


def final_records(cluster: SimCluster) -> list[dict[str, Any]]:
    """Every FenceOperation record, briefly: what each fence did, for the report."""
    out = []
    for rec in cluster.kube.store.list("fenceoperations", "nodefence")["items"]:
        st = rec.get("status") or {}
        out.append(
            {
                "name": rec["metadata"]["name"],
                "node": rec["spec"]["nodeName"],
                "leader": st.get("leader"),
                "phase": st.get("phase"),
                "level": st.get("level"),
                "proof": st.get("proof"),
                "attempts": st.get("attempts"),
                "errors": list(st.get("errors") or [])[-3:],
            }
        )
    return out


def run_chaos(opts: ChaosOptions, stop: threading.Event | None = None) -> ChaosResult:
    """Play one chaos run; prints its summary when `opts.echo`."""
    result = ChaosRun(opts, stop).run()
    if opts.echo:
        print_summary(result)
    return result
