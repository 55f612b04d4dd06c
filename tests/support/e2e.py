"""End-to-end runs on a simulated cluster (`nodefence.hwsim.simcluster.SimCluster`): start one and
wait until its leader judges, pick a victim, read the fencing records and the VMs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodefence.hwsim.liveview import LeaderViewFeed
from nodefence.hwsim.simcluster import SimCluster
from tests.support.timings import FENCING_RUN

Make = Callable[..., SimCluster]
RESTARTABLE = ("AlwaysOn", "AlwaysOnUnlessStoppedManually")


def judging(cluster: SimCluster, timeout: float = 60) -> str:
    """Wait until the leader judges every node: its own view (the retained status topic the
    leader publishes, as `nodefence status` reads it) comes from the node holding the Lease,
    its decisions are no longer frozen (its first window is over) and it has heard every node
    healthy. Returns the leader's node."""
    feed = LeaderViewFeed(cluster, name="tests-judging")
    feed.start()

    def leader_judging_all() -> str | None:
        view, leader = feed.view, cluster.leader()
        if leader is None or cluster.node_of(str(view.get("leader", ""))) != leader:
            return None
        healthy = {r.get("node") for r in view.get("nodes") or [] if r.get("state") == "healthy"}
        return leader if view.get("frozen") is False and healthy >= set(cluster.nodes) else None

    try:
        found: str = cluster.wait_for(
            "the leader judging, every node healthy", leader_judging_all, timeout
        )
        return found
    finally:
        feed.stop()


def start(make: Make, **overrides: Any) -> SimCluster:
    """A cluster with the fencing run's timings (`FENCING_RUN`, then `overrides`), its leader
    judging every node."""
    cluster = make(**{**FENCING_RUN, **overrides})
    # A deadline, not a wait: six processes (node agents and fencers) start on a busy machine.
    judging(cluster, 60)
    return cluster


def victim_of(cluster: SimCluster, exclude: tuple[str, ...] = ()) -> str:
    """The last node by name that is not the leader's (nor in `exclude`)."""
    leader = cluster.leader()
    return next(n for n in sorted(cluster.nodes, reverse=True) if n != leader and n not in exclude)


def records(cluster: SimCluster, node: str | None = None) -> list[dict[str, Any]]:
    """The FenceOperation records (of `node`)."""
    items = cluster.kube.store.list("fenceoperations", "nodefence")["items"]
    return [r for r in items if node is None or r["spec"]["nodeName"] == node]


def final_record(
    cluster: SimCluster, node: str, phases: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    """The first record of `node` in one of `phases`, waited for up to `timeout`."""

    def found() -> dict[str, Any] | None:
        for r in records(cluster, node):
            if (r.get("status") or {}).get("phase") in phases:
                return r
        return None

    result: dict[str, Any] = cluster.wait_for(f"{node} record in {phases}", found, timeout)
    return result


def one_fence_slot_held(cluster: SimCluster, off_delay: float) -> tuple[str, str]:
    """On a cluster fencing one node at a time (max_parallel 1): a first victim whose BMC
    takes `off_delay` s to power off holds the only slot (its record Fencing), then a second
    victim is cut off. Returns (the first, the second)."""
    slow = victim_of(cluster)
    second = victim_of(cluster, exclude=(slow,))
    cluster.fleet[slow].set_faults(off_delay=off_delay)  # its power walk holds the only slot
    cluster.nodes[slow].partition()
    final_record(cluster, slow, ("Fencing",), timeout=30)
    cluster.nodes[second].partition()
    return slow, second


def vms_on(cluster: SimCluster, node: str) -> list[dict[str, Any]]:
    """The VirtualMachines whose status puts them on `node`."""
    return [
        vm
        for vm in cluster.kube.store.list("virtualmachines")["items"]
        if (vm.get("status") or {}).get("nodeName") == node
    ]


def node_exists(cluster: SimCluster, node: str) -> bool:
    return any(n["metadata"]["name"] == node for n in cluster.kube.store.list("nodes")["items"])


def assert_recovered_elsewhere(
    cluster: SimCluster, node: str, before: list[dict[str, Any]], rec: dict[str, Any]
) -> None:
    """Every VM that ran on the fenced `node` (`before`) runs elsewhere when its policy restarts
    it and does not run otherwise, the record `rec` says so VM by VM, and no VM ran twice."""
    by_key = {
        f"{v['metadata']['namespace']}/{v['metadata']['name']}": v
        for v in cluster.kube.store.list("virtualmachines")["items"]
    }
    assert before, "the victim ran no VM: the test would prove nothing"
    for vm in before:
        key = f"{vm['metadata']['namespace']}/{vm['metadata']['name']}"
        now = by_key[key]
        status = now.get("status") or {}
        if vm["spec"]["runPolicy"] in RESTARTABLE:
            assert status.get("phase") == "Running" and status.get("nodeName") != node, key
        else:
            assert status.get("phase") != "Running", key
    outcomes = {f"{v['namespace']}/{v['name']}": v for v in rec["status"]["vms"]}
    assert set(outcomes) == {
        f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in before
    }
    for out in outcomes.values():
        if out["expectedRestart"]:
            assert out["runningOn"] not in (None, node) and out["recoveredAfterSeconds"] >= 0
    assert cluster.vm_controller.violations() == []
