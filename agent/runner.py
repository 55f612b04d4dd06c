"""`nodefence agent`: everything one node runs: heartbeats, the health endpoint, answers to
peer probes, and the leader candidacy (the leader side runs only while holding the Lease)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time

import aiomqtt

from agent import metrics
from agent.cluster import HEALTH_ANNOTATION, ClusterApi, ClusterError, load_api_client
from agent.config import AgentConfig
from agent.election import ElectionTiming, LeaderElector
from agent.fence_executor import FenceExecutor
from agent.fencing import Cleanup, Timing
from agent.health import HealthServer
from agent.heartbeat import HeartbeatPublisher
from agent.heartbeat_auth import node_key
from agent.heartbeat_codec import WatchdogClaim
from agent.inventory_watch import InventoryWatcher
from agent.leader import LeaderSide
from agent.mqtt_client import make_client
from agent.peers import (
    ProbeResult,
    decode_request,
    encode_result,
    probe_filter,
    result_topic,
    run_probe,
)
from agent.probe_auth import sign_result
from agent.profiles import DetectionProfile, profile_from_mapping
from agent.records import from_record, is_open_mark
from agent.watchdog import FeedPolicy, WatchdogFeeder, watch_marks
from backends.ipmi import prestart_workers

log = logging.getLogger("nodefence.agent")


def detection_profile(cfg: AgentConfig) -> DetectionProfile:
    """The config's profile with its overrides applied (raises `ProfileError`)."""
    return profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})


async def answer_probes(cfg: AgentConfig, node: str, timeout: float, stop: asyncio.Event) -> None:
    """Probe suspects when the leader names this node as a peer; report over the broker,
    signed with this node's heartbeat key unless `auth.mode` is off (`agent.probe_auth`)."""
    cluster_key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
    key = (
        node_key(cluster_key, node) if cluster_key is not None and cfg.auth.mode != "off" else None
    )
    while not stop.is_set():
        try:
            async with make_client(cfg.broker, f"nodefence-probe-{node}") as client:
                await client.subscribe(probe_filter(cfg.cluster), qos=0)
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes):
                        continue
                    req = decode_request(payload)
                    if req is None or node not in req.peers or req.suspect == node:
                        continue
                    reachable = await run_probe(req, timeout)
                    res = ProbeResult(
                        req.id, node, req.suspect, reachable, ts=int(time.time() * 1000)
                    )
                    if key is not None:
                        res = sign_result(res, key)
                    await client.publish(result_topic(cfg.cluster, node), encode_result(res))
        except aiomqtt.MqttError as err:
            log.debug("probe responder lost the broker: %s", err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cfg.broker.reconnect_max)


def leader_identity(node: str) -> str:
    """The Lease holder identity of this process: the node name and a per-process id."""
    return f"{node}_{secrets.token_hex(4)}"


def identity_node(identity: str | None) -> str | None:
    """The node name in a Lease holder identity (older agents used the bare node name)."""
    return None if not identity else identity.split("_", 1)[0]


def advertised_host(cfg: AgentConfig) -> str:
    """The address peers should probe: the bind address, or the node IP the DaemonSet gives."""
    if cfg.health_host not in ("0.0.0.0", "::"):
        return cfg.health_host
    return os.environ.get("NODE_IP") or os.environ.get("POD_IP") or "127.0.0.1"


async def run_agent(
    cfg: AgentConfig,
    node: str,
    stop: asyncio.Event,
) -> None:
    """Run every part of the agent until `stop` is set."""
    profile = detection_profile(cfg)
    key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
    publisher = HeartbeatPublisher(
        cfg.broker,
        cfg.cluster,
        node,
        interval=profile.interval,
        key=node_key(key, node) if key is not None and cfg.auth.mode != "off" else None,
    )
    health = HealthServer(
        cfg.health_host,
        cfg.health_port,
        info=lambda: {"node": node, "boot": publisher.boot, "broker": publisher.stats.connected},
        ready=lambda: publisher.stats.connected,
    )
    await health.start()
    metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port)
    api = ClusterApi(load_api_client(cfg.kube.kubeconfig))
    feeder: WatchdogFeeder | None = None
    w = cfg.watchdog
    if w.enabled:

        async def announce_stop() -> bool:
            # The publisher's clean stop publishes "stopped" (QoS 1) for this boot.
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
        publisher.on_echo = policy.contact

        async def my_marks() -> list[str]:
            records = await api.list_records(cfg.kube.namespace, node)
            return [
                str((r.get("metadata") or {}).get("name"))
                for r in records
                if (r.get("spec") or {}).get("nodeName") == node and is_open_mark(from_record(r))
            ]

    try:
        endpoint = cfg.health_advertise or f"{advertised_host(cfg)}:{health.port}"
        await api.annotate_node(node, HEALTH_ANNOTATION, endpoint)
    except ClusterError as err:
        log.warning("cannot announce the health endpoint on node %s: %s", node, err)
    k = cfg.kube
    # Unique per process: two agents started with the same node name (a stale pod, a
    # mistake) must never both take the Lease as "ours".
    identity = leader_identity(node)
    elector = LeaderElector(
        api,
        k.namespace,
        k.lease_name,
        identity=identity,
        timing=ElectionTiming(k.lease_duration, k.renew_deadline, k.retry_period),
    )

    pending_events: set[asyncio.Task[None]] = set()

    def inventory_rejected(problem: str) -> None:
        # Called from the leader's loop when a changed inventory file does not validate.
        async def report() -> None:
            try:
                await api.lease_event(
                    k.namespace,
                    k.lease_name,
                    "InventoryRejected",
                    f"new BMC inventory rejected, keeping the previous one: {problem}",
                )
            except ClusterError as err:
                log.warning("cannot record the InventoryRejected event: %s", err)

        with contextlib.suppress(RuntimeError):  # no running loop: at start, already logged
            task = asyncio.get_running_loop().create_task(report())
            pending_events.add(task)
            task.add_done_callback(pending_events.discard)

    watcher = (
        InventoryWatcher(cfg.inventory, on_rejected=inventory_rejected) if cfg.inventory else None
    )

    def executor_factory(leader: LeaderSide) -> FenceExecutor:
        assert watcher is not None
        # A fence is likely now: have IPMI worker processes ready, so the first power-off
        # does not wait for one to start.
        prestart_workers()
        return FenceExecutor(
            api,
            k.namespace,
            identity,
            inventory=watcher.current,
            confirm_leader=elector.confirm,
            alive_since=leader.alive_since,
            in_maintenance=leader.in_maintenance,
            timing=Timing(
                cfg.fencing.retry_base,
                cfg.fencing.retry_max,
                cfg.fencing.recovery_timeout,
                cfg.fencing.release_timeout,
                cfg.fencing.return_timeout,
            ),
            max_parallel=cfg.fencing.max_parallel,
            after_proof=cfg.fencing.after_proof,
            self_fence=leader.self_fence_check if cfg.fencing.self_fence else None,
            cleanup=Cleanup(cfg.fencing.cleanup),
            release=cfg.fencing.release,
            last_heartbeat=leader.detector.last_heartbeat,
        )

    async def lead() -> None:
        # Without an inventory the leader only detects and reports (nothing is fenced).
        await LeaderSide(
            cfg,
            profile,
            api,
            identity,
            inventory=watcher.nodes if watcher else None,
            executor_factory=executor_factory if watcher else None,
        ).run()

    log.info(
        "agent for node %s: cluster %s, broker %s:%s, profile %s, metrics on port %d",
        node,
        cfg.cluster,
        cfg.broker.host,
        cfg.broker.port,
        cfg.profile,
        metrics_port,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(publisher.run(stop))
            tg.create_task(elector.run(lead, stop))
            tg.create_task(answer_probes(cfg, node, profile.peer_probe_timeout, stop))
            if feeder is not None:
                tg.create_task(feeder.run(stop))
                tg.create_task(watch_marks(my_marks, feeder.policy, w.api_check_interval, stop))
    finally:
        await health.stop()


def run_agent_process(cfg: AgentConfig, node: str) -> int:
    """Run the agent in this process until SIGTERM/SIGINT; returns the exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(cfg, node, stop)

    asyncio.run(main())
    return 0
