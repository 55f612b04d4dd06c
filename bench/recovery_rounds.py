"""One round: the victim's ColdStandby VMs topped up, its power cut, and the marks of its
recovery (dead, offProven, tainted, deleted, VMs Running elsewhere) folded from the store's
changes."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from recovery_observers import HeartbeatListener, Recorder

from nodefence.hwsim.kube.watch import WatchEvent
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vms import RESTARTED_POLICIES, place_vms

KINDS = ("worker", "leader", "broker")
FINAL_PHASES = ("Recovered", "RecoveryIncomplete", "Aborted")
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


@dataclass
class Round:
    cluster: int
    kind: str  # worker | leader | broker
    victim: str
    vms: set[str]  # ns/name of its ColdStandby VMs at the power loss
    cut: float
    last_heartbeat: float | None = None
    dead: float | None = None
    off: float | None = None
    tainted: float | None = None
    deleted: float | None = None
    running: dict[str, float] = field(default_factory=dict)  # VM -> Running elsewhere
    final: float | None = None
    final_phase: str = ""
    vetoed: bool = False  # the leader first said "agent lost, node alive"
    controller_lost: float | None = None  # the ColdStandby controller saw the node lost
    controller_running: float | None = None

    @property
    def vms_running(self) -> float | None:
        return max(self.running.values()) if len(self.running) == len(self.vms) else None

    @property
    def to_deleted(self) -> float | None:
        return None if self.deleted is None else self.deleted - self.cut

    @property
    def to_running(self) -> float | None:
        running = self.vms_running
        return None if running is None else running - self.cut

    @property
    def complete(self) -> bool:
        return None not in (self.dead, self.off, self.deleted, self.vms_running)

    def phases(self) -> dict[str, float]:
        assert self.complete
        dead, off, deleted, running = self.dead, self.off, self.deleted, self.vms_running
        assert dead is not None and off is not None and deleted is not None and running is not None
        return {
            "detection": dead - self.cut,
            "fence": off - dead,
            "cleanup": deleted - off,
            "vm_start": running - deleted,
            "total": running - self.cut,
        }


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def observe(r: Round, changes: list[tuple[float, str, WatchEvent]]) -> None:
    """Fold store changes (in arrival order) into the round's first-time marks."""
    for t, resource, ev in changes:
        obj = ev.object
        status = obj.get("status") or {}
        if resource == "events":
            if (obj.get("involvedObject") or {}).get("name") != r.victim:
                continue
            reason = obj.get("reason")
            if reason == "NodeDeclaredDead" and r.dead is None:
                r.dead = t
            elif reason == "AgentLostNodeAlive" and r.dead is None:
                r.vetoed = True
            elif reason == "FencePoweredOff" and r.off is None:
                r.off = t
        elif resource == "fenceoperations":
            if (obj.get("spec") or {}).get("nodeName") != r.victim:
                continue
            if status.get("offProven") and r.off is None:
                r.off = t
            if status.get("phase") in FINAL_PHASES and r.final is None:
                r.final, r.final_phase = t, str(status["phase"])
        elif resource == "nodes":
            if (obj.get("metadata") or {}).get("name") != r.victim:
                continue
            if ev.type == "DELETED" and r.deleted is None:
                r.deleted = t
            taints = (obj.get("spec") or {}).get("taints") or []
            if r.tainted is None and any(x.get("key") == OUT_OF_SERVICE for x in taints):
                r.tainted = t
        elif resource == "virtualmachines":
            key = _key(obj)
            node = status.get("nodeName")
            if (
                key in r.vms
                and key not in r.running
                and ev.type != "DELETED"
                and status.get("phase") == "Running"
                and node
                and node != r.victim
            ):
                r.running[key] = t


def coldstandby_vms(cluster: SimCluster, node: str) -> set[str]:
    return {
        _key(vm)
        for vm in cluster.kube.store.list("virtualmachines")["items"]
        if (vm.get("status") or {}).get("nodeName") == node
        and (vm.get("status") or {}).get("phase") == "Running"
        and (vm.get("spec") or {}).get("runPolicy") in RESTARTED_POLICIES
    }


def top_up(cluster: SimCluster, node: str, wanted: int) -> set[str]:
    """Make `node` run at least `wanted` ColdStandby VMs; returns them."""
    have = coldstandby_vms(cluster, node)
    if len(have) < wanted:
        place_vms(
            cluster.kube.store,
            cluster.vm_controller,
            wanted - len(have),
            [node],
            ("AlwaysOn", "AlwaysOnUnlessStoppedManually"),
            prefix="bench-vm-",
        )
        have = coldstandby_vms(cluster, node)
    return have


def run_round(
    cluster: SimCluster,
    index: int,
    kind: str,
    victim: str,
    recorder: Recorder,
    heartbeats: HeartbeatListener,
    args: argparse.Namespace,
    timeout: float,
) -> Round:
    vms = top_up(cluster, victim, args.per_victim)
    start = recorder.mark()
    r = Round(index, kind, victim, vms, time.monotonic())
    cluster.fleet[victim].cut_power()
    deadline = r.cut + timeout
    seen = start
    while time.monotonic() < deadline:
        changes = recorder.since(seen)
        seen += len(changes)
        observe(r, changes)
        if r.complete and r.final is not None:
            break
        time.sleep(0.01)
    else:
        observe(r, recorder.since(seen))
    if r.dead is not None:
        r.last_heartbeat = heartbeats.last_before(victim, r.dead)
    lost = [
        h for h in cluster.vm_controller.history if h.lost_node == victim and h.down_at >= r.cut
    ]
    wanted = [h for h in lost if h.restart_expected]
    if lost:
        r.controller_lost = min(h.down_at for h in lost)
    if wanted and all(h.running_at is not None for h in wanted):
        r.controller_running = max(h.running_at for h in wanted if h.running_at is not None)
    return r
