"""The leader candidacy both of production's fencers and of the simulation's candidates run.

`leader_candidate` wires the Lease election, the leader side (which runs only while holding the
Lease), the fencing executor, the BMC checks, the warm listener (which keeps a heartbeat history
while not leading) and the sync of the pinned node keys.
`nodefence.agent.leader.fencer_runner.run_fencer` (the fencer process) and
`nodefence.hwsim.sim.candidates` (the deterministic simulation) call it, so both run the same
wiring. The node side (`nodefence agent`) is `nodefence.agent.node.agent_runner`; `run_process` runs
either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.config.inventory_file import Inventory
from nodefence.agent.detection.profiles import DetectionProfile, profile_from_mapping
from nodefence.agent.fencing.executor import FenceExecutor
from nodefence.agent.fencing.machine import Timing
from nodefence.agent.fencing.operation import Cleanup
from nodefence.agent.fencing.pause import Pause
from nodefence.agent.fencing.power_executor import BackendFactory
from nodefence.agent.heartbeat.key_pins_client import PinSync
from nodefence.agent.heartbeat.node_keys import Keyring
from nodefence.agent.kube.client import ClusterApi
from nodefence.agent.leader.bmc_monitor_loop import BmcMonitor, CertDays
from nodefence.agent.leader.election_client import ElectionTiming, LeaderElector
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.agent.leader.standby_loop import WarmListener, choose_standbys
from nodefence.agent.mqtt.leader_broker_client import LeaderBroker
from nodefence.agent.node.self_watch import open_mark_names
from nodefence.agent.virt.layer_client import VirtLayer
from nodefence.backends.ipmi.backend import prestart_workers
from nodefence.backends.registry import build_backend
from nodefence.backends.tls_cert import certificate_days_left

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

    @property
    def rejected(self) -> str:
        """Why the newest version of the inventory file was rejected ("" when it was not)."""
        ...


@dataclass
class LeaderCandidate:
    """One process's candidacy: the elector, and the leader side of the current term."""

    elector: LeaderElector
    lead: Callable[[], Coroutine[Any, Any, None]]
    leader: LeaderSide | None = None  # set while this process leads
    warm: WarmListener | None = None  # runs while this process is a warm standby
    pins: PinSync | None = None  # keeps the pinned node keys in step with the store

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign until `stop`; lead while holding the Lease. With `pins`, nothing starts
        before the pins are read: without them every node's heartbeats would be refused."""
        if self.pins is not None and not await self.pins.load(stop):
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.elector.run(self.lead, stop))
            if self.pins is not None:
                tg.create_task(self.pins.run(stop))
            if self.warm is not None:
                tg.create_task(self.warm.run(stop))


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
    view_period: float | None = None,
    identity: str | None = None,
    cert_days: CertDays = certificate_days_left,
    defer: Callable[[], bool] | None = None,
    warm: Callable[[LeaderElector], WarmListener] | None = None,
    keyring: Keyring | None = None,
    pins: PinSync | None = None,
    every_candidate_warm: bool = False,
) -> LeaderCandidate:
    """The leader election, leader side and fencing executor of one agent, wired together.

    `run_agent` calls it with the production edges; the deterministic simulation
    (`nodefence.hwsim.sim`) with in-memory ones, so both run the same wiring. Without an inventory
    the leader only detects and reports (nothing is fenced). `tick` overrides the leader side's
    judging pace (the simulation judges less often to run faster), `view_period` how often it
    publishes its status view (the simulation: less often, nobody reads it there). `identity`
    is the Lease holder identity (default: the node name and a per-process id, see
    `leader_identity`).
    `warm` builds the listener a warm standby keeps running (production; without it, every new
    leader starts cold with an empty history, and no standbys are named); with
    `every_candidate_warm` (the fencers: two or three, all listening) no candidate is cold, and
    the standbys named on the Lease are the other fencers. `keyring` holds the fencer key and
    the pinned node keys, `pins` keeps them in step with the store.
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
            k.cold_retry_period
            if k.standbys and warm is not None and not every_candidate_warm
            else None,
        ),
        clock=clock,
        defer=defer or (lambda: False),
        node=node,
    )
    warm_listener = warm(elector) if warm is not None else None

    def paused() -> Pause | None:
        # Read with every Lease renewal (nodefence.agent.fencing.pause): no request of its own.
        return Pause.parse(elector.observed_paused)

    def pause_said() -> str | None:
        pause = paused()
        return None if pause is None else pause.describe()

    def name_standbys(healthy: list[str]) -> None:
        elector.standbys = choose_standbys(elector.standbys, healthy, node, k.standbys)

    # One view of the VM APIs (discovery with `auto`) for the leader side and the executor.
    virt = VirtLayer(api, cfg.virtualization, clock=clock)
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
            virt=virt,
            paused=pause_said,
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
            virt=virt,
            paused=paused,
            inventory_problem=(lambda: inventory.rejected) if inventory is not None else None,
            keyring=keyring,
        )
        if tick is not None:
            leader.tick = tick
        if view_period is not None:
            leader.view_period = view_period
        candidate.leader = leader
        try:
            await leader.run()
        finally:
            candidate.leader = None

    candidate = LeaderCandidate(elector, lead, warm=warm_listener, pins=pins)
    return candidate


def run_process(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run `main(stop)` in this process until SIGTERM/SIGINT sets `stop`; the exit code."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(run())
    return 0
