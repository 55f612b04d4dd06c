"""Failure detection end to end: real mosquitto, the Kubernetes API emulator over HTTP,
simulated kubelets, one real `nodefence agent` process per node and a `nodefence fencer` beside
it on the first three nodes.

Timings are short (Lease 4 s / 3 s / 0.5 s, kubelet Lease every 1-2 s); the detection
profile is the default one (declared dead 4 s after the last heartbeat when peers agree).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from nodefence.hwsim.simcluster import SimCluster
from tests.support.e2e import judging
from tests.support.timings import FAST_LEASE

Make = Callable[..., SimCluster]


def non_leader(cluster: SimCluster, exclude: tuple[str, ...] = ()) -> str:
    leader = cluster.wait_for("a leader", cluster.leader, 30)
    return next(n for n in sorted(cluster.nodes, reverse=True) if n != leader and n not in exclude)


def settled(cluster: SimCluster) -> str:
    """Wait for a leader whose window is over and who sees every node healthy (its view)."""
    return judging(cluster, 40)


def no_event_for(cluster: SimCluster, reason: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not cluster.events(reason), cluster.events(reason)
        time.sleep(0.1)


def test_powered_off_node_is_declared_dead_with_peers_agreeing(make_cluster: Make) -> None:
    cluster = make_cluster(nodes=4, kubelet_lease_interval=2.0, **FAST_LEASE)
    settled(cluster)
    victim = non_leader(cluster)
    cluster.fleet[victim].cut_power()
    events = cluster.wait_for("NodeDeclaredDead", lambda: cluster.events("NodeDeclaredDead"), 20)
    assert [e["involvedObject"]["name"] for e in events] == [victim]
    assert "cannot reach" in events[0]["message"]
    assert not cluster.events("AgentLostNodeAlive")


def test_agent_stopped_on_a_live_node_is_agent_lost_never_dead(make_cluster: Make) -> None:
    cluster = make_cluster(nodes=4, kubelet_lease_interval=2.0, **FAST_LEASE)
    settled(cluster)
    victim = non_leader(cluster)
    cluster.nodes[victim].kill_agent()  # the node keeps power: kubelet and its port stay up
    events = cluster.wait_for(
        "AgentLostNodeAlive", lambda: cluster.events("AgentLostNodeAlive"), 20
    )
    assert events[0]["involvedObject"]["name"] == victim
    no_event_for(cluster, "NodeDeclaredDead", 6)


def test_fresh_kubelet_lease_vetoes_dead_even_when_peers_cannot_reach(
    make_cluster: Make,
) -> None:
    cluster = make_cluster(nodes=4, kubelet_lease_interval=0.5, **FAST_LEASE)
    settled(cluster)
    victim = non_leader(cluster)
    node = cluster.nodes[victim]
    node.kubelet_port.close()  # peers cannot reach anything on the node...
    node.kill_agent()  # ...and its agent is gone, but its kubelet still renews its Lease
    cluster.wait_for("AgentLostNodeAlive", lambda: cluster.events("AgentLostNodeAlive"), 20)
    no_event_for(cluster, "NodeDeclaredDead", 6)


@pytest.mark.parametrize("standbys", [0, 2], ids=["none-named", "two-named"])
def test_leader_killed_hard_is_replaced_by_a_fencer_that_judges_at_once(
    make_cluster: Make, standbys: int
) -> None:
    # Every fencer listens to every broker, named a standby on the Lease or not: whichever
    # takes over judges at once from the history it kept (no cold successor any more).
    cluster = make_cluster(nodes=3, kubelet_lease_interval=2.0, standbys=standbys, **FAST_LEASE)
    old = settled(cluster)
    time.sleep(2)
    if standbys:
        cluster.wait_for("standbys named on the Lease", cluster.standbys, 20)
    time.sleep(4.5)  # the other fencers hear a full window (fence_after)
    killed_at = time.monotonic()
    # SIGKILL the fencer (the Lease is not released) and the node agent on the leader's node:
    # its machine stays on, so its kubelet keeps renewing.
    cluster.nodes[old].kill_fencer()
    cluster.nodes[old].kill_agent()
    new = cluster.wait_for(
        "a new leader", lambda: (cluster.leader() or old) != old and cluster.leader(), 15
    )
    took = time.monotonic() - killed_at
    assert new != old
    assert took >= 2.5, "taken over before the old Lease could have expired"
    lease = cluster.kube.store.get("leases", "nodefence-leader", "nodefence")
    acquired = dt.datetime.fromisoformat(lease["spec"]["acquireTime"].replace("Z", "+00:00"))
    # The old leader's node is alive (its agent dead): the successor reports it at once, from
    # the heartbeat history it kept.
    events = cluster.wait_for(
        "AgentLostNodeAlive", lambda: cluster.events("AgentLostNodeAlive"), 20
    )
    first = dt.datetime.fromisoformat(events[0]["firstTimestamp"].replace("Z", "+00:00"))
    after = (first - acquired).total_seconds()
    assert after < 3.0, f"the successor waited {after:.1f} s"
    assert not cluster.events("NodeDeclaredDead")


def test_leader_cut_from_the_broker_declares_nobody_dead(make_cluster: Make) -> None:
    cluster = make_cluster(nodes=3, kubelet_lease_interval=2.0, **FAST_LEASE)
    settled(cluster)
    for broker in cluster.brokers:
        broker.stop()  # every heartbeat stops arriving, for longer than fence_after
    time.sleep(6)
    for broker in cluster.brokers:
        broker.start()
    no_event_for(cluster, "NodeDeclaredDead", 7)  # nor in the fence_after after it returns
    assert cluster.events("AlertBrokerDown"), [e["reason"] for e in cluster.events()]


def test_forty_percent_of_nodes_vanishing_trips_the_storm_guard(make_cluster: Make) -> None:
    cluster = make_cluster(nodes=5, max_unhealthy="1", kubelet_lease_interval=2.0, **FAST_LEASE)
    leader = settled(cluster)
    # Not the brokers' machines: losing both brokers is the broker-down freeze, not a storm.
    hosts = set(cluster.broker_hosts)
    victims = [n for n in sorted(cluster.nodes) if n != leader and n not in hosts][:2]
    for v in victims:
        cluster.fleet[v].cut_power()
    storm: list[Any] = cluster.wait_for("AlertStorm", lambda: cluster.events("AlertStorm"), 20)
    assert "2 of 5 nodes unhealthy" in storm[0]["message"]
    no_event_for(cluster, "NodeDeclaredDead", 5)


def test_status_shows_the_leader_and_every_node(make_cluster: Make) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    cluster = make_cluster(nodes=3, kubelet_lease_interval=1.0, **FAST_LEASE)
    leader = settled(cluster)
    cfg = str(cluster.agent_config("node-1"))

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodefence.agent.cli.main", "status", "-c", cfg, *extra],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )

    def all_healthy() -> bool:
        r = status("-o", "json")
        if r.returncode != 0:
            return False
        view = json.loads(r.stdout)
        return [n["state"] for n in view["nodes"]] == ["healthy"] * 3

    cluster.wait_for("every node healthy in the view", all_healthy, 20, interval=0.5)
    r = status()
    assert r.returncode == 0, r.stderr
    assert f"leader: {leader}" in r.stdout
    for name in ("node-1", "node-2", "node-3"):
        assert name in r.stdout
    assert "HEARTBEAT" in r.stdout and "KUBELET" in r.stdout
