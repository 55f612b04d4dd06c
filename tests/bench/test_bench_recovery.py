"""bench/recovery.py hears the heartbeats of the simulated cluster it measures (which runs its
brokers as shipped: passwords and the ACL)."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import aiomqtt
import pytest

from nodefence.agent.heartbeat.codec import Heartbeat, encode_heartbeat, heartbeat_topic
from nodefence.hwsim.loop_thread import LoopThread
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.simcluster_settings import ClusterSettings
from tests.support.wait import eventually_blocking

BENCH = Path(__file__).resolve().parents[2] / "bench" / "recovery.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_recovery", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    """Brokers (secure, as shipped) and the API emulator; no agents: the test plays a node."""
    sim = SimCluster(tmp_path / "sim", ClusterSettings(nodes=2))
    sim.start(agents=False)
    try:
        yield sim
    finally:
        sim.stop()


async def beat_as(cluster: SimCluster, node: str, port: int, seq: int) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=node, password=cluster.passwords[node], identifier=node
    ) as client:
        hb = Heartbeat(node, seq, "boot", 1.0, "test")
        await client.publish(heartbeat_topic(cluster.settings.cluster, node), encode_heartbeat(hb))


def test_the_recovery_bench_hears_heartbeats_on_every_broker_of_a_secure_cluster(
    cluster: SimCluster,
) -> None:
    bench = load_bench()
    listener = bench.HeartbeatListener(cluster)  # failed: "cannot subscribe to the heartbeats"
    loop = LoopThread("test-node")
    try:
        for seq, broker in enumerate(cluster.brokers):
            before = time.monotonic()
            loop.run(beat_as(cluster, "node-1", broker.port, seq))
            eventually_blocking(
                f"node-1 heard via {broker.port}",
                lambda: listener.heard_since("node-1", before),  # noqa: B023 (called at once)
            )
    finally:
        loop.close()
        listener.stop()
