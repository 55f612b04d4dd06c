"""The simulated cluster the recovery rounds run on: its settings and start, the victim of each
kind, the victim's rejoin after its round, and when the leader's warm standbys are ready."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recovery_observers import HeartbeatListener

from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.simcluster_settings import ClusterSettings

PROFILE = "default"


def settings(args: argparse.Namespace) -> ClusterSettings:
    return ClusterSettings(
        nodes=args.nodes,
        profile=PROFILE,
        bmcs=True,
        vms=args.vms,
        boot_delay=args.boot_delay,
        brokers=2,
        kubelet_lease_interval=args.kubelet_lease_interval,
        power_timeout=3.0,
        fencing={"recovery_timeout": 30, "retry_base": 1, "retry_max": 2},
    )


def start_cluster(args: argparse.Namespace, work: Path, index: int) -> tuple[SimCluster, float]:
    began = time.monotonic()
    cluster = SimCluster(work / f"cluster{index}", settings(args))
    cluster.start()
    return cluster, began


def rejoin(cluster: SimCluster, node: str, heartbeats: HeartbeatListener, timeout: float) -> bool:
    """Power `node` on again and wait until its Node is Ready and its agent heartbeats."""
    on = time.monotonic()
    cluster.fleet[node].request_on()

    def ready() -> bool:
        try:
            obj = cluster.kube.store.get("nodes", node)
        except NotFound:
            return False
        conds = (obj.get("status") or {}).get("conditions") or []
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        return is_ready and heartbeats.heard_since(node, on)

    deadline = on + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.05)
    return False


def pick_victim(cluster: SimCluster, kind: str) -> str | None:
    """The node to cut for a round of `kind` (None: none fits now)."""
    leader = cluster.leader()
    if kind == "leader":
        return leader
    hosts = set(cluster.broker_hosts)
    if kind == "broker":
        return next((h for h in cluster.broker_hosts if h != leader), None)
    workers = sorted(n for n in cluster.nodes if n != leader and n not in hosts)
    return workers[0] if workers else None


class StandbyClock:
    """When the Lease last changed its named standbys (a newly named one needs to learn it and
    hear a full window before it is warm)."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.named: list[str] = []
        self.since = time.monotonic()

    def look(self) -> None:
        named = self.cluster.standbys()
        if named != self.named:
            self.named, self.since = named, time.monotonic()

    def wait_warm(self, profile: DetectionProfile, timeout: float) -> bool:
        s = self.cluster.settings
        # As SimCluster configures the agents: cold candidates read the Lease this often.
        learn = max(s.retry_period, s.lease_duration / 2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.look()
            if self.named and time.monotonic() - self.since >= learn + profile.fence_after + 1:
                return True
            time.sleep(0.1)
        return False
