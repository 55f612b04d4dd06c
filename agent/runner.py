"""`nodefence agent`: everything one node runs: heartbeats (to every broker), the health
endpoint, answers to peer probes, and the leader candidacy (the leader side runs only while
holding the Lease; a warm standby named on the Lease keeps a heartbeat history meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from agent import metrics
from agent.bmc_monitor import BmcMonitor, CertDays
from agent.cluster import HEALTH_ANNOTATION, ClusterApi, ClusterError, load_api_client
from agent.config import AgentConfig
from agent.election import ElectionTiming, LeaderElector
from agent.fence_executor import FenceExecutor
from agent.fencing import Cleanup, Timing
from agent.health import HealthServer
from agent.heartbeat import HeartbeatPublisher
from agent.heartbeat_auth import node_key
from agent.heartbeat_codec import WatchdogClaim
from agent.ingest import Listener
from agent.inventory import Inventory
from agent.inventory_watch import InventoryWatcher
from agent.leader import LeaderSide
from agent.leader_broker import LeaderBroker
from agent.node_watch import NodeWatch, open_mark_names
from agent.power import BackendFactory
from agent.probe_responder import answer_probes
from agent.profiles import DetectionProfile, profile_from_mapping
from agent.standby import WarmListener, choose_standbys
from agent.watchdog import FeedPolicy, WatchdogFeeder, watch_marks
from backends.ipmi import prestart_workers
from backends.registry import build_backend
from backends.tls_cert import certificate_days_left

log = logging.getLogger("nodefence.agent")


def detection_profile(cfg: AgentConfig) -> DetectionProfile:
    """The config's profile with its overrides applied (raises `ProfileError`)."""
    return profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})


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


async def unfinished_marks(api: ClusterApi, namespace: str, node: str) -> list[str]:
    """Names of the unfinished fencing records of `node` (the node side's "am I being fenced"
    check; raises `ClusterError` when the API cannot be read)."""
    return open_mark_names(await api.list_records(namespace, node), node)


class InventorySource(Protocol):
    """Where the leader gets the BMC inventory (`InventoryWatcher` in production)."""

    def current(self) -> Inventory | None:
        """The newest valid inventory."""
        ...

    def nodes(self) -> frozenset[str]:
        """Names of the nodes the inventory can fence."""
        ...


@dataclass
class LeaderCandidate:
    """One process's candidacy: the elector, and the leader side of the current term."""

    elector: LeaderElector
    lead: Callable[[], Coroutine[Any, Any, None]]
    leader: LeaderSide | None = None  # set while this process leads
    warm: WarmListener | None = None  # runs while this process is a named warm standby

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign until `stop`; lead while holding the Lease."""
        await self.elector.run(self.lead, stop)


def leader_candidate(
    cfg: AgentConfig,
    profile: DetectionProfile,
    api: ClusterApi,
    node: str,
    *,
    inventory: InventorySource | None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    new_id: Callable[[], str] | None = None,
    broker: LeaderBroker | None = None,
    backend_factory: BackendFactory = build_backend,
    tick: float | None = None,
    identity: str | None = None,
    cert_days: CertDays = certificate_days_left,
    defer: Callable[[], bool] | None = None,
    warm: Callable[[LeaderElector], WarmListener] | None = None,
) -> LeaderCandidate:
    """The leader election, leader side and fencing executor of one agent, wired together.

    `run_agent` calls it with the production edges; the deterministic simulation
    (`hwsim.sim`) with in-memory ones, so both run the same wiring. Without an inventory the
    leader only detects and reports (nothing is fenced). `tick` overrides the leader side's
    judging pace (the simulation judges less often to run faster). `identity` is the Lease
    holder identity (default: the node name and a per-process id, see `leader_identity`).
    `warm` builds the listener a named warm standby keeps running (production; without it,
    every new leader starts cold with an empty history, and no standbys are named).
    """
    k = cfg.kube
    # Unique per process: two agents started with the same node name (a stale pod, a
    # mistake) must never both take the Lease as "ours".
    me = identity or leader_identity(node)
    elector = LeaderElector(
        api,
        k.namespace,
        k.lease_name,
        identity=me,
        timing=ElectionTiming(
            k.lease_duration,
            k.renew_deadline,
            k.retry_period,
            k.cold_retry_period if k.standbys and warm is not None else None,
        ),
        clock=clock,
        defer=defer or (lambda: False),
        node=node,
    )
    warm_listener = warm(elector) if warm is not None else None

    def name_standbys(healthy: list[str]) -> None:
        elector.standbys = choose_standbys(elector.standbys, healthy, node, k.standbys)

    # The ids the leader side (probe requests) and the executor (operations) draw by default.
    request_ids = new_id or (lambda: uuid.uuid4().hex[:12])
    operation_ids = new_id or (lambda: uuid.uuid4().hex[:8])

    def executor_factory(leader: LeaderSide) -> FenceExecutor:
        assert inventory is not None
        if backend_factory is build_backend:
            # A fence is likely now: have IPMI worker processes ready, so the first power-off
            # does not wait for one to start.
            prestart_workers()
        return FenceExecutor(
            api,
            k.namespace,
            me,
            inventory=inventory.current,
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
            clock=clock,
            wall=wall,
            backend_factory=backend_factory,
            new_id=operation_ids,
            decision_facts=leader.decision_evidence,
            lease_generation=elector.lease_generation,
            reads=leader.kube,
            record_saved=leader.kube.record_saved,
            read_kubelet=leader.read_kubelet_lease,
        )

    def bmc_monitor_factory(leader: LeaderSide) -> BmcMonitor:
        assert inventory is not None
        return BmcMonitor(
            inventory.current,
            interval=cfg.fencing.bmc_check_interval,
            parallel=cfg.fencing.bmc_check_parallel,
            report=leader.report_bmc_change,
            busy=leader.fencing_busy,
            factory=backend_factory,
            clock=clock,
            wall=wall,
            cert_days=cert_days,
        )

    checks = inventory is not None and cfg.fencing.bmc_check_interval > 0

    async def lead() -> None:
        leader = LeaderSide(
            cfg,
            profile,
            api,
            me,
            inventory=inventory.nodes if inventory else None,
            executor_factory=executor_factory if inventory else None,
            bmc_monitor_factory=bmc_monitor_factory if checks else None,
            clock=clock,
            wall=wall,
            broker=broker,
            new_id=request_ids,
            listener=warm_listener.take() if warm_listener is not None else None,
            name_standbys=name_standbys if k.standbys and warm_listener is not None else None,
        )
        if tick is not None:
            leader.tick = tick
        candidate.leader = leader
        try:
            await leader.run()
        finally:
            candidate.leader = None

    candidate = LeaderCandidate(elector, lead, warm=warm_listener)
    return candidate


async def run_agent(
    cfg: AgentConfig,
    node: str,
    stop: asyncio.Event,
) -> None:
    """Run every part of the agent until `stop` is set."""
    profile = detection_profile(cfg)
    key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
    publisher = HeartbeatPublisher(
        cfg.brokers,
        cfg.cluster,
        node,
        interval=profile.interval,
        key=node_key(key, node) if key is not None and cfg.auth.mode != "off" else None,
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
    metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port)
    # Named to the API server (its audit log, its per-client request metrics): nodefence/<node>.
    api = ClusterApi(load_api_client(cfg.kube.kubeconfig, f"nodefence/{node}"))
    feeder: WatchdogFeeder | None = None
    w = cfg.watchdog
    if w.enabled:

        async def announce_stop() -> bool:
            # The publisher's clean stop publishes "stopped" (QoS 1) for this boot on every
            # broker; one acknowledgement is enough (see agent.heartbeat).
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

        async def my_marks() -> list[str]:
            return await unfinished_marks(api, cfg.kube.namespace, node)

    k = cfg.kube
    # Its own Node (the maintenance mark hands leadership off, see agent.handoff; the health
    # endpoint annotation) and, with a watchdog, its own fencing records: watched.
    own = NodeWatch(api, k.namespace, node, records=feeder is not None, clock=time.monotonic)
    endpoint = cfg.health_advertise or f"{advertised_host(cfg)}:{health.port}"

    async def announce(value: str) -> None:
        await api.annotate_node(node, HEALTH_ANNOTATION, value)

    def make_warm(elector: LeaderElector) -> WarmListener:
        def listener() -> Listener:
            if cfg.inventory:
                # A standby may lead (and fence) any moment: have IPMI workers ready, as a leader.
                prestart_workers()
            return Listener.from_config(cfg, profile, elector.identity)

        # A named standby (or the leader) listens to every broker; the leader side adopts it.
        return WarmListener(
            listener,
            standby=lambda: elector.is_standby,
            leading=lambda: elector.is_leader,
            period=k.retry_period,
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

    candidate = leader_candidate(
        cfg, profile, api, node, inventory=watcher, defer=own.marked, warm=make_warm
    )

    log.info(
        "agent for node %s: cluster %s, brokers %s, profile %s, metrics on port %d",
        node,
        cfg.cluster,
        ", ".join(b.address for b in cfg.brokers),
        cfg.profile,
        metrics_port,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(publisher.run(stop))
            watching = tg.create_task(own.run())
            tg.create_task(own.announce(announce, endpoint, stop))
            tg.create_task(candidate.run(stop))
            if candidate.warm is not None:
                tg.create_task(candidate.warm.run(stop))
            tg.create_task(answer_probes(cfg, node, profile.peer_probe_timeout, stop))
            if feeder is not None:
                tg.create_task(feeder.run(stop))
                tg.create_task(
                    watch_marks(my_marks, feeder.policy, w.api_check_interval, stop, seen=own)
                )
            await stop.wait()
            watching.cancel()  # the watches run until the agent stops
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
