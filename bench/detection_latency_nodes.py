"""The simulated nodes the detection bench drives: power, heartbeats, peer probes, kubelets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from detection_latency_leader import CLUSTER

from nodefence.agent import __version__
from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.agent.heartbeat.codec import Heartbeat, encode_heartbeat, heartbeat_topic
from nodefence.agent.probes.peer_client import run_probe
from nodefence.agent.probes.peers import (
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
)
from nodefence.hwsim.kube import KubeApiServer, SimKubelet
from nodefence.hwsim.simnode import KubeletPort

KUBELET_LEASE_INTERVAL = 10.0


@dataclass
class SimulatedNode:
    """One node as the bench drives it: power, heartbeat stream, kubelet and its port."""

    name: str
    port: KubeletPort
    kubelet: SimKubelet | None = None
    powered: bool = True
    boot: str = field(default_factory=lambda: uuid.uuid4().hex)
    seq: int = 0
    last_sent: float | None = None
    power_log: list[tuple[float, float | None]] = field(default_factory=list)  # (off, on)

    def power_off(self) -> None:
        """Cut power: no more heartbeats, no kubelet, the port refuses connections."""
        self.powered = False
        self.port.close()
        self.power_log.append((time.monotonic(), None))

    def power_on(self) -> None:
        """Boot again: a new heartbeat stream (new boot id), the port opens, the kubelet runs."""
        self.boot, self.seq = uuid.uuid4().hex, 0
        self.port.open()
        self.powered = True
        off, _ = self.power_log[-1]
        self.power_log[-1] = (off, time.monotonic())

    def was_off_between(self, start: float, end: float) -> bool:
        return any(off <= end and (on is None or on >= start) for off, on in self.power_log)

    def rebooting_at(self, t: float, within: float) -> bool:
        """Powered on less than `within` seconds before `t` (its agent may not have sent yet)."""
        return any(on is not None and on <= t <= on + within for _, on in self.power_log)


class LoadGenerator:
    """Publishes every node's heartbeats on one aiomqtt client and acts as their peer agents."""

    def __init__(self, nodes: dict[str, SimulatedNode], port: int, profile: DetectionProfile):
        self.nodes = nodes
        self.port = port
        self.profile = profile
        self.probes_answered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, ready: asyncio.Event) -> None:
        quiet = logging.getLogger("bench.load")  # stopping mid-publish is how this run ends
        quiet.setLevel(logging.ERROR)
        client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier="bench-load", keepalive=10, logger=quiet
        )
        async with client:
            await client.subscribe(probe_filter(CLUSTER), qos=0)
            async with asyncio.TaskGroup() as tg:
                start = asyncio.get_running_loop().time() + 0.1
                interval = self.profile.interval
                for i, node in enumerate(self.nodes.values()):
                    phase = interval * i / len(self.nodes)
                    tg.create_task(self._heartbeats(client, node, start + phase))
                ready.set()
                async for message in client.messages:
                    if isinstance(message.payload, bytes):
                        self._on_probe_request(client, message.payload)

    async def _heartbeats(self, client: aiomqtt.Client, node: SimulatedNode, at: float) -> None:
        loop = asyncio.get_running_loop()
        topic = heartbeat_topic(CLUSTER, node.name)
        while True:
            await asyncio.sleep(max(0.0, at - loop.time()))
            at += self.profile.interval
            if not node.powered:
                continue
            hb = Heartbeat(node.name, node.seq, node.boot, self.profile.interval, __version__)
            node.seq += 1
            node.last_sent = time.monotonic()  # the heartbeat leaves in this same step
            await client.publish(topic, encode_heartbeat(hb), qos=0)

    def _on_probe_request(self, client: aiomqtt.Client, payload: bytes) -> None:
        req = decode_request(payload)
        if req is None:
            return
        for peer in req.peers:
            node = self.nodes.get(peer)
            if node is None or not node.powered or peer == req.suspect:
                continue
            task = asyncio.create_task(self._probe(client, req, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, client: aiomqtt.Client, req: Any, peer: str) -> None:
        reachable = await run_probe(req, self.profile.peer_probe_timeout)
        if self.nodes[peer].powered:  # a peer that lost power meanwhile says nothing
            res = ProbeResult(req.id, peer, req.suspect, reachable)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(result_topic(CLUSTER, peer), encode_result(res))
                self.probes_answered += 1


def open_port() -> KubeletPort:
    """A kubelet port, listening (a port picked free a moment ago may have been taken since)."""
    for _ in range(20):
        port = KubeletPort()
        try:
            port.open()
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port for a kubelet")


class Kubelets:
    """Every node's SimKubelet: all Nodes registered at once, then the kubelets started spread
    over one lease interval, as a real cluster's are (not all renewing in the same instant)."""

    def __init__(self, server: KubeApiServer, nodes: dict[str, SimulatedNode]) -> None:
        self.nodes = nodes
        for node in nodes.values():
            node.kubelet = SimKubelet(
                server.store,
                node.name,
                lambda n=node: n.powered,  # type: ignore[misc]
                lease_interval=KUBELET_LEASE_INTERVAL,
                internal_ip="127.0.0.1",
                kubelet_port=node.port.port,
            )
            node.kubelet.tick()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stagger, name="kubelets", daemon=True)
        self._thread.start()

    def _stagger(self) -> None:
        step = KUBELET_LEASE_INTERVAL / len(self.nodes)
        for node in self.nodes.values():
            if self._stop.wait(step):
                return
            assert node.kubelet is not None
            node.kubelet.start_in_thread()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for node in self.nodes.values():
            if node.kubelet is not None:
                node.kubelet.stop_thread()
