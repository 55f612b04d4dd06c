"""Scenario steps and verdicts about what a fence releases (pods, volumes, the taint) and about
nodes that go down on purpose; `nodefence.hwsim.scenarios.catalogue` assembles them into named
scenarios.

- `judge_release`: after a fence, the record shows the node's pods force-deleted and its
  VolumeAttachments removed, the ColdStandby VMs ran elsewhere within `RECOVERY_BOUND` s of the
  Node's deletion (cleanup delete) and, with cleanup taint, the Node was kept (and, with a
  reboot, untainted once back, never fenced a second time).
- `no-release`: the same power loss with nodefence's release off: what an operator would get
  otherwise (PodGC after its quarantine, then "Multi-Attach error" until the attach/detach
  controller's maxWaitForUnmountDuration), with those timers compressed and said so.
- `drain`: `kubectl drain` (cordon + evictions, not nodefence's command), then a power cut: not
  fenced, "down while cordoned" alert; power back on and `kubectl uncordon`: no fence record.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any, Protocol

from nodefence.hwsim.kube.controllers import ControllerTimers
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views

OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
RECOVERY_BOUND = 5.0  # seconds from the Node deletion to its ColdStandby VMs running elsewhere
# The no-release scenario: PodGC's 40 s quarantine and the 6-minute detach timeout, compressed.
NO_RELEASE_TIMERS = ControllerTimers().compressed(45.0)


class Says(Protocol):
    """The scenario's timeline."""

    def add(self, node: str, what: str) -> None:
        """Record one line."""

    def failure(self) -> None:
        """Now is the failure: outages count from here."""


def records(cluster: SimCluster, node: str) -> list[dict[str, Any]]:
    """The node's FenceOperation records, oldest first."""
    items = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    found = [r for r in items if r["spec"]["nodeName"] == node]
    return sorted(found, key=lambda r: int(r["metadata"]["resourceVersion"]))


def _node(cluster: SimCluster, name: str) -> dict[str, Any] | None:
    nodes = cluster.kube.store.list("nodes")["items"]
    return next((n for n in nodes if n["metadata"]["name"] == name), None)


def _ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _tainted(node: dict[str, Any]) -> bool:
    return any(t.get("key") == OUT_OF_SERVICE for t in (node.get("spec") or {}).get("taints") or [])


def _fencing(cluster: SimCluster) -> dict[str, Any]:
    return dict(cluster.settings.fencing)


def judge_release(cluster: SimCluster, victims: list[str]) -> list[str]:
    """What a fence with the cluster's `fencing` settings must have released (see the doc)."""
    fencing = _fencing(cluster)
    cleanup = fencing.get("cleanup", "delete")
    reboot = fencing.get("after_proof") == "reboot"
    problems = []
    for v in victims:
        recs = records(cluster, v)
        if len(recs) != 1:
            problems.append(f"{v}: {len(recs)} fence records, not one")
        if not recs:
            continue
        st = recs[-1].get("status") or {}
        if fencing.get("release", True):
            if not (st.get("podsReleased") and st.get("attachmentsReleased")):
                problems.append(f"{v}: pods or VolumeAttachments not released")
            if cleanup == "delete":
                for vm in st.get("vms") or []:
                    after = vm.get("recoveredAfterSeconds")
                    if vm.get("expectedRestart") and (after is None or after > RECOVERY_BOUND):
                        problems.append(
                            f"VM {vm['name']} ran elsewhere {after} s after {v} was deleted,"
                            f" not within {RECOVERY_BOUND:g} s"
                        )
        node = _node(cluster, v)
        if cleanup == "taint":
            if node is None or node["metadata"]["uid"] != recs[-1]["spec"].get("nodeUID"):
                problems.append(f"{v}: cleanup taint, but its Node was deleted")
            elif reboot and (_tainted(node) or not st.get("untainted") or not _ready(node)):
                problems.append(f"{v}: back after the reboot but not Ready and untainted")
            elif not reboot and not _tainted(node):
                problems.append(f"{v}: kept without the out-of-service taint")
    return problems


def settle_after_the_fence(cluster: SimCluster, tl: Says, victims: list[str]) -> None:
    """cleanup taint: a node kept (or back and untainted) must not be fenced again: look for a
    second fence record for a few detection windows."""
    if _fencing(cluster).get("cleanup", "delete") != "taint":
        return
    tl.add(victims[0], "(watching for a second fence of the same node)")
    time.sleep(6.0)  # one and a half detection windows of the fast profile


# ---- no release --------------------------------------------------------------------------------


def judge_no_release(cluster: SimCluster, victims: list[str]) -> list[str]:
    """Without nodefence's release the VMs run again only after the (compressed) detach
    timeout, and the way there shows Multi-Attach errors."""
    v = victims[0]
    problems = []
    recs = records(cluster, v)
    st = (recs[-1].get("status") or {}) if recs else {}
    if st.get("phase") != "Recovered":
        problems.append(f"{v}: fencing ended {st.get('phase') or 'never started'}")
    if st.get("podsReleased") or st.get("attachmentsReleased"):
        problems.append(f"{v}: released although release is off")
    multi = [e for e in cluster.events("FailedAttachVolume") if "Multi-Attach" in e["message"]]
    if not multi:
        problems.append("no Multi-Attach error: the disks were never held by the dead node")
    wait = NO_RELEASE_TIMERS.max_wait_for_unmount
    for vm in st.get("vms") or []:
        after = vm.get("recoveredAfterSeconds")
        if vm.get("expectedRestart") and after is not None and after < wait:
            problems.append(f"VM {vm['name']} ran elsewhere after {after} s, before the {wait:g} s")
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems


# ---- drain, then power off ----------------------------------------------------------------------


def _kubectl(cluster: SimCluster, *args: str, timeout: float = 60.0) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed")
    done = subprocess.run(
        [kubectl, "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def drain_then_cut(cluster: SimCluster, tl: Says, victim: str) -> list[str]:
    """`kubectl drain` the victim, wait until its volumes are detached, then cut its power."""
    tl.add(victim, "KUBECTL DRAIN (cordon + evict every pod), as the seed's guide says")
    out = _kubectl(
        cluster,
        "drain",
        victim,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=60s",
    )
    for line in out.strip().splitlines()[-3:]:
        tl.add(victim, f"  | {line}")

    def nothing_attached() -> bool:
        vas = cluster.kube.store.list("volumeattachments")["items"]
        return not [a for a in vas if (a.get("spec") or {}).get("nodeName") == victim]

    cluster.wait_for(f"{victim}'s volumes detached", nothing_attached, 30)
    tl.add(victim, "POWER CUT for the planned work (cordoned, drained; no nodefence command)")
    tl.failure()
    cluster.fleet[victim].cut_power()
    return [victim]


def down_while_cordoned_said(cluster: SimCluster, node: str) -> bool:
    """The leader raised its "down while cordoned" alert about `node`."""
    return any(
        e["involvedObject"]["name"] == node for e in cluster.events("AlertDownWhileCordoned")
    )


def power_on_and_uncordon(cluster: SimCluster, tl: Says, victims: list[str]) -> None:
    """The work is done: power on, wait until the leader sees it healthy (its agent
    heartbeats) and its Node Ready, then `kubectl uncordon`."""
    from nodefence.hwsim.liveview import LeaderViewFeed

    v = victims[0]
    tl.add(v, "POWER ON after the work")
    cluster.fleet[v].request_on()
    feed = LeaderViewFeed(cluster, "drain")
    feed.start()
    try:

        def back() -> bool:
            node = _node(cluster, v)
            rows = [r for r in feed.view.get("nodes", []) if r.get("node") == v]
            healthy = bool(rows) and rows[0].get("state") == "healthy"
            return node is not None and _ready(node) and healthy

        cluster.wait_for(f"{v} Ready and heartbeating again", back, 60)
    finally:
        feed.stop()
    tl.add(v, "back (Ready, heartbeating): KUBECTL UNCORDON")
    _kubectl(cluster, "uncordon", v)
    time.sleep(2.0)  # a few judging rounds with the node back


def judge_drain(cluster: SimCluster, victims: list[str]) -> list[str]:
    """Not fenced, alerted, back and schedulable, every ColdStandby VM running, no double run."""
    v = victims[0]
    problems = []
    if records(cluster, v):
        problems.append(f"{v} (cordoned, drained, running nothing) was fenced")
    if not down_while_cordoned_said(cluster, v):
        problems.append(f"the leader never said {v} is down while cordoned")
    node = _node(cluster, v)
    if node is None:
        problems.append(f"{v}: its Node was deleted")
    elif not _ready(node) or (node.get("spec") or {}).get("unschedulable"):
        problems.append(f"{v}: not back Ready and schedulable after uncordon")
    for vm in vm_views(cluster.kube.store):
        if vm.restarts and not vm.running:
            problems.append(f"VM {vm.name} is {vm.phase}, not Running")
    problems += [f"split brain: {x}" for x in cluster.vm_violations()]
    return problems
