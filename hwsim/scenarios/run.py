"""Play one scripted scenario (`nodefence.hwsim.scenarios.catalogue`) on a fresh `SimCluster`, with
its story.

`run_scenario` starts the cluster, lets the leader hear a full window, injects the failure,
waits for the outcome, judges it, and writes the timeline (text and chart), the summary and
`nodefence explain` of each victim beside the cluster's files.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from nodefence.agent.detection.profiles import profile_from_mapping
from nodefence.hwsim.scenarios.catalogue import SCENARIOS
from nodefence.hwsim.scenarios.chart import write_svg
from nodefence.hwsim.scenarios.failures import deleted_in_time, records_of
from nodefence.hwsim.scenarios.story import VmSeen, summary
from nodefence.hwsim.scenarios.watch import Timeline, Watcher
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.simcluster_settings import ClusterSettings
from nodefence.hwsim.virtualization.vm_views import vm_views


def _explain(cluster: SimCluster, victims: list[str]) -> list[Path]:
    """`nodefence explain` (text and -o json) of every fenced victim, as an operator runs it,
    written beside the timeline while the cluster still runs."""
    import os
    import subprocess

    from nodefence.hwsim.simnode import REPO

    written = []
    for v in victims:
        if not records_of(cluster, v):
            continue
        for output, suffix in (("text", "txt"), ("json", "json")):
            command = [sys.executable, "-m", "nodefence.agent.cli.main", "explain", v, "-o", output]
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
        from nodefence.hwsim.liveview import LiveScreen

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
            problems += deleted_in_time(tl, victims, injected, limit)
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
