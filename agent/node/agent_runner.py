"""`nodefence agent`: what every node runs, and nothing more (the DaemonSet).

Heartbeats to every broker, signed with this node's own key; the announcement of that key and
of the health endpoint; the health endpoint peers probe; answers to the fencers' signed probe
requests; and, with `watchdog:`, the self-fencing watchdog. It holds no BMC credential, no
fencer key and no cluster key, and asks the API server for nothing unless the watchdog is on
(then it watches its own FenceOperations and its own Node's maintenance mark). Judging and
fencing are the fencers' (`nodefence.agent.leader.fencer_runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.config.key_files import legacy_key, node_signer
from nodefence.agent.heartbeat.codec import WatchdogClaim
from nodefence.agent.heartbeat.node_identity import encode_identity
from nodefence.agent.heartbeat.sender_loop import HeartbeatPublisher
from nodefence.agent.kube.client import ClusterApi, load_api_client
from nodefence.agent.leader.candidate_runner import (
    advertised_host,
    detection_profile,
    unfinished_marks,
)
from nodefence.agent.node.health_server import HealthServer
from nodefence.agent.node.marks_watch import watch_marks
from nodefence.agent.node.self_watch import NodeWatch
from nodefence.agent.node.watchdog_loop import WatchdogFeeder
from nodefence.agent.node.watchdog_rules import FeedPolicy
from nodefence.agent.observe import metrics
from nodefence.agent.probes.responder_loop import Answering, answer_probes

log = logging.getLogger("nodefence.agent")


async def run_agent(cfg: AgentConfig, node: str, stop: asyncio.Event) -> None:
    """Run the node side until `stop` is set (raises `ConfigError` for an unusable key)."""
    profile = detection_profile(cfg)
    signer = node_signer(cfg, node)
    legacy = legacy_key(cfg, node)
    publisher = HeartbeatPublisher(
        cfg.brokers,
        cfg.cluster,
        node,
        interval=profile.interval,
        key=legacy,
        own_key=signer.key if signer is not None else None,
    )
    health = HealthServer(
        cfg.health_host,
        cfg.health_port,
        info=lambda: {
            "node": node,
            "boot": publisher.boot,
            "broker": publisher.stats.connected,
            "brokers": publisher.connected_brokers(),
        },
        ready=lambda: publisher.stats.connected,
    )
    await health.start()
    endpoint = cfg.health_advertise or f"{advertised_host(cfg)}:{health.port}"
    if signer is not None:
        publisher.identity = encode_identity(signer.identity(endpoint))
    metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port)
    feeder: WatchdogFeeder | None = None
    w = cfg.watchdog
    if w.enabled:
        api = ClusterApi(load_api_client(cfg.kube.kubeconfig))

        async def announce_stop() -> bool:
            # The publisher's clean stop publishes "stopped" (QoS 1) for this boot on every
            # broker; one acknowledgement is enough (see nodefence.agent.heartbeat.sender_loop).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(publisher.stop_announced.wait(), 5.0)
            return publisher.stop_announced.is_set()

        policy = FeedPolicy(w.cut_off_after)
        feeder = WatchdogFeeder(
            w.device,
            policy,
            WatchdogClaim(w.timeout, w.cut_off_after, w.feed_interval),
            read_timeout=w.timeout_from == "device",
            announce=announce_stop,
        )
        publisher.claim = feeder.armed_claim
        publisher.on_echo = policy.echo

        # Its own Node (the maintenance mark) and its own fencing records, watched: the API is
        # read only while no heartbeat echo gave contact
        # (nodefence.agent.node.marks_watch.watch_marks).
        own = NodeWatch(api, cfg.kube.namespace, node, records=True, clock=time.monotonic)

        async def my_marks() -> list[str]:
            return await unfinished_marks(api, cfg.kube.namespace, node)

    answering = Answering.from_config(cfg, node, signer, legacy, profile.peer_probe_timeout)
    log.info(
        "agent for node %s: cluster %s, brokers %s, health endpoint %s, metrics on port %d",
        node,
        cfg.cluster,
        ", ".join(b.address for b in cfg.brokers),
        endpoint,
        metrics_port,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(publisher.run(stop))
            tg.create_task(answer_probes(cfg, answering, stop))
            if feeder is not None:
                tg.create_task(feeder.run(stop))
                watching = tg.create_task(own.run())
                tg.create_task(
                    watch_marks(my_marks, feeder.policy, w.api_check_interval, stop, seen=own)
                )
                await stop.wait()
                watching.cancel()  # the watches run until the agent stops
    finally:
        await health.stop()
