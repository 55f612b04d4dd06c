"""Probe results the leader believes: signed by the answering peer, answering a request the
leader sent, for that suspect, from a peer it asked, in time, once. A real leader behind a real
mosquitto and the Kubernetes API emulator; a raw MQTT client plays the peers and the forger."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest_asyncio

from agent.cluster import HEALTH_ANNOTATION, ClusterApi, load_api_client
from agent.config import AgentConfig, parse_config
from agent.detector import NodeVerdict
from agent.heartbeat_auth import node_key, sign
from agent.heartbeat_codec import Heartbeat, encode_heartbeat, heartbeat_topic
from agent.leader import LeaderSide
from agent.peers import (
    ProbeRequest,
    ProbeResult,
    decode_request,
    encode_result,
    probe_topic,
    result_topic,
)
from agent.profiles import DEFAULT
from hwsim.broker import MosquittoBroker
from hwsim.kube import KubeApiServer
from tests.test_leader_ingest import broker, cancel_and_wait, eventually, kube

__all__ = ["broker", "kube"]  # fixtures used below

CLUSTER = "probe-test"
CLUSTER_KEY = b"p" * 16 + b"0123456789abcdef0123"
SUSPECT = "suspect"
PEERS = ("peer-1", "peer-2", "peer-3", "peer-4")  # the leader asks three of the four


@pytest_asyncio.fixture
async def cluster(
    kube: KubeApiServer, broker: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[tuple[LeaderSide, aiomqtt.Client]]:
    """A leader (signatures required) over five Nodes: four peers that heartbeat, and a
    suspect that heartbeated once and fell silent; and an MQTT client for the test."""
    for name in (SUSPECT, *PEERS):
        # Port 9 on loopback: nothing answers, as for a dead node.
        meta = {"name": name, "annotations": {HEALTH_ANNOTATION: "127.0.0.1:9"}}
        kube.store.create("nodes", {"metadata": meta})
    kubeconfig = tmp_path / "kubeconfig"
    kube.write_kubeconfig(kubeconfig)
    keyfile = tmp_path / "heartbeat.key"
    keyfile.write_bytes(CLUSTER_KEY)
    doc = {
        "cluster": CLUSTER,
        "broker": {"port": broker.port, "reconnect_min": 0.05, "reconnect_max": 0.5},
        "kubernetes": {"kubeconfig": str(kubeconfig)},
        "auth": {"heartbeat_key_file": str(keyfile), "max_skew": 5},
    }
    cfg: AgentConfig = parse_config(doc, path=tmp_path / "agent.yaml", env=dict(os.environ))
    assert cfg.auth.mode == "required" and cfg.kube.kubeconfig is not None
    side = LeaderSide(cfg, DEFAULT, ClusterApi(load_api_client(cfg.kube.kubeconfig)), "leader")
    task = asyncio.create_task(side.run())
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="peers") as client:

        async def heartbeats() -> None:
            seq = 0
            await client.publish(heartbeat_topic(CLUSTER, SUSPECT), signed_beat(SUSPECT, 0))
            while True:
                for peer in PEERS:
                    await client.publish(heartbeat_topic(CLUSTER, peer), signed_beat(peer, seq))
                seq += 1
                await asyncio.sleep(0.3)  # the peers' heartbeat period, not a synchronisation

        beating: asyncio.Task[None] | None = None
        try:
            await eventually("the leader subscribed", lambda: side.broker_up_since is not None)
            beating = asyncio.create_task(heartbeats())
            yield side, client
        finally:
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            await cancel_and_wait(side, task)


def signed_beat(node: str, seq: int) -> bytes:
    hb = Heartbeat(node, seq, "b1", 0.3, "t", ts=int(time.time() * 1000))
    return encode_heartbeat(sign(hb, node_key(CLUSTER_KEY, node)))


async def next_request(client: aiomqtt.Client) -> ProbeRequest:
    """The leader's next request to probe the suspect."""
    await client.subscribe(probe_topic(CLUSTER, SUSPECT), qos=1)
    async with asyncio.timeout(15):
        async for message in client.messages:
            if message.topic.matches(probe_topic(CLUSTER, SUSPECT)):
                assert isinstance(message.payload, bytes)
                req = decode_request(message.payload)
                assert req is not None
                return req
    raise AssertionError("no probe request")


def suspect_verdict(side: LeaderSide) -> NodeVerdict:
    return next(v for v in side.detector.evaluate(side.clock()) if v.node == SUSPECT)


async def test_a_forged_unsigned_unreachable_from_a_peer_never_asked_is_not_evidence(
    cluster: tuple[LeaderSide, aiomqtt.Client],
) -> None:
    side, client = cluster
    req = await next_request(client)
    outsider = next(p for p in PEERS if p not in req.peers)
    forged = ProbeResult(req.id, outsider, SUSPECT, reachable=False)

    await client.publish(result_topic(CLUSTER, outsider), encode_result(forged), qos=1)
    await eventually(
        "the forged result handled",
        lambda: side.stats.probe_results + sum(side.stats.rejected.values()) >= 1,
    )

    assert suspect_verdict(side).peers.unreachable == 0, "a forged result counted as evidence"
    assert side.stats.probe_results == 0
