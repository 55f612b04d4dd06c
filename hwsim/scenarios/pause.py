"""Scenario `pause`: fencing is paused cluster-wide, a worker loses power, then it is resumed.

The operator runs `nodefence pause --reason ...` (as for BMC firmware work), then a worker loses
power. The promise: the leader still judges it dead and says why it is not fenced (`nodefence
status` shows PAUSED, names the node and exits 1), and no power-off request reaches any BMC
while the pause holds; `nodefence resume` and the node is fenced at once, its VMs restarted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Protocol

from nodefence.hwsim.liveview import LeaderViewFeed
from nodefence.hwsim.simcluster import SimCluster

HELD = 3.0  # seconds the dead node is watched while paused (a fence takes < 1 s here)
RESUMED_WITHIN = 5.0  # seconds from `nodefence resume` to the fence's start
_RESULTS: dict[int, list[str]] = {}  # id(cluster) -> findings of the injection


class Says(Protocol):
    """The scenario's timeline."""

    def add(self, node: str, what: str) -> None:
        """Record one line."""

    def failure(self) -> None:
        """Now is the failure."""


def nodefence(cluster: SimCluster, *args: str) -> tuple[int, str]:
    """A `nodefence` command as an operator runs it: exit code and output."""
    from nodefence.hwsim.simnode import REPO

    done = subprocess.run(
        [sys.executable, "-m", "nodefence.agent.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "KUBECONFIG": str(cluster.kubeconfig)},
    )
    return done.returncode, done.stdout + done.stderr


def _events(cluster: SimCluster, reason: str, node: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(reason) if e["involvedObject"]["name"] == node]


def _held(view: dict[str, Any], node: str) -> bool:
    rows: list[dict[str, Any]] = view.get("nodes") or []
    row = next((r for r in rows if r.get("node") == node), {})
    return row.get("state") == "dead" and "paused" in str(row.get("held") or "")


def _victim(cluster: SimCluster) -> str:
    leader = cluster.leader()
    hosts = {
        (vm.get("status") or {}).get("nodeName")
        for vm in cluster.kube.store.list("virtualmachines")["items"]
    }
    return next(n for n in sorted(cluster.nodes, reverse=True) if n != leader and n in hosts)


def inject(cluster: SimCluster, tl: Says) -> list[str]:
    """Pause, cut a worker's power, watch it held, check status, resume (see the doc)."""
    found: list[str] = []
    _RESULTS[id(cluster)] = found
    victim = _victim(cluster)
    tl.add("-", "$ nodefence pause --reason 'BMC firmware update'")
    code, said = nodefence(cluster, "pause", "--reason", "BMC firmware update")
    tl.add("-", f"  exit {code}: {said.strip().splitlines()[0]}")
    if code != 0:
        found.append(f"nodefence pause failed: {said}")
        return [victim]
    tl.add(victim, "POWER LOSS while fencing is paused")
    tl.failure()
    cluster.fleet[victim].cut_power()
    # Judged dead and held: the leader's view says so (a NodeDeclaredDead Event means "and it
    # will be fenced", so none is expected while paused).
    feed = LeaderViewFeed(cluster, "pause")
    feed.start()
    try:
        cluster.wait_for(f"{victim} dead and held", lambda: _held(feed.view, victim), 30)
    except TimeoutError:
        found.append(f"the leader's view never showed {victim} dead and held while paused")
    finally:
        feed.stop()
    watched = time.monotonic() + HELD
    tl.add("-", "$ nodefence status")
    code, said = nodefence(cluster, "status", "--config", str(_config(cluster)))
    tl.add("-", f"  exit {code} while paused:")
    for line in said.splitlines():
        if line.startswith(("PAUSED", "  - ")):
            tl.add("-", f"  {line.strip()}")
    if code != 1 or "PAUSED" not in said or f"paused and {victim}" not in said:
        found.append(f"nodefence status while paused (exit {code}) did not say it: {said}")
    time.sleep(max(0.0, watched - time.monotonic()))  # a span of time with nothing in it
    if cluster.fleet[victim].off_requests or _events(cluster, "FenceStarted", victim):
        found.append(f"{victim} was fenced while fencing was paused")
    resumed = time.monotonic()
    tl.add("-", "$ nodefence resume")
    code, said = nodefence(cluster, "resume")
    tl.add("-", f"  exit {code}: {said.strip().splitlines()[0]}")
    try:
        cluster.wait_for(
            f"{victim}'s fence after the resume",
            lambda: bool(_events(cluster, "FenceStarted", victim)),
            RESUMED_WITHIN + (time.monotonic() - resumed),  # the command's own time too
        )
    except TimeoutError:
        found.append(f"{victim} not fenced within {RESUMED_WITHIN} s of `nodefence resume`")
    return [victim]


def _config(cluster: SimCluster) -> Any:
    return cluster.workdir / "agents" / f"{cluster.leader()}.yaml"


def judge(cluster: SimCluster, victims: list[str]) -> list[str]:
    """What went wrong (the fence itself is judged as power-loss's is)."""
    return _RESULTS.pop(id(cluster), [])
