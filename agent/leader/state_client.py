"""What the leader knows: the heartbeat ingest it reads, the Nodes and kubelet Leases it watches.

`LeaderState` holds every field of `nodefence.agent.leader.side_loop.LeaderSide` (built once here)
and folds the Kubernetes caches' changes (`nodefence.agent.kube.cache_watch`) into them: Nodes
added, replaced or deleted, kubelet Lease renewals stamped with the earliest moment they can have
happened on the leader's clock. The judging, probing and status-view halves build on it
(`nodefence.agent.leader.judge_loop`,
`nodefence.agent.leader.probe_client`, `nodefence.agent.leader.view_client`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.detection.detector import NodeHealth, NodeVerdict
from nodefence.agent.detection.policy import LeaderFacts, MaxUnhealthy, NodeWorkload, PolicyDecision
from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.agent.fencing.executor import FenceExecutor
from nodefence.agent.fencing.pause import Pause
from nodefence.agent.heartbeat.node_keys import Keyring
from nodefence.agent.kube.cache_watch import KubeCache
from nodefence.agent.kube.client import (
    NODE_LEASE_NAMESPACE,
    ClusterApi,
    ClusterError,
    LeaseInfo,
    NodeInfo,
)
from nodefence.agent.kube.informer_loop import Change
from nodefence.agent.leader.bmc_monitor_loop import BmcMonitor
from nodefence.agent.leader.ingest_loop import HeartbeatIngest, LeaderStats, Listener, delivery_gap
from nodefence.agent.mqtt.broker_set_client import BrokerSet
from nodefence.agent.mqtt.leader_broker_client import LeaderBroker
from nodefence.agent.probes.requests import OutstandingProbes
from nodefence.agent.probes.signing import ProbeResultVerifier
from nodefence.agent.virt.layer_client import VirtLayer

if TYPE_CHECKING:
    from nodefence.agent.leader.side_loop import LeaderSide

log = logging.getLogger("nodefence.leader")

DeadCallback = Callable[[str, NodeVerdict], Awaitable[None]]
ExecutorFactory = Callable[["LeaderSide"], FenceExecutor]
BmcMonitorFactory = Callable[["LeaderSide"], BmcMonitor]
NameStandbys = Callable[[list[str]], None]  # called with the fencers' nodes, every round


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library call swallowed (Python 3.11 wait_for)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LeaderState:
    """The leader's fields and what it knows of the cluster (see
    `nodefence.agent.leader.side_loop.LeaderSide`)."""

    def __init__(
        self,
        cfg: AgentConfig,
        profile: DetectionProfile,
        api: ClusterApi,
        identity: str,
        *,
        inventory: Callable[[], frozenset[str]] | None = None,
        on_dead: DeadCallback | None = None,
        executor_factory: ExecutorFactory | None = None,
        bmc_monitor_factory: BmcMonitorFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        broker: LeaderBroker | None = None,
        tick: float = 0.1,
        kube_period: float = 1.0,
        listener: Listener | None = None,
        name_standbys: NameStandbys | None = None,
        virt: VirtLayer | None = None,
        paused: Callable[[], Pause | None] = lambda: None,
        inventory_problem: Callable[[], str] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.cfg = cfg
        self.paused = paused
        self.inventory_problem = inventory_problem
        self.profile = profile
        self.api = api
        # The VM APIs whose VMs the maintenance guard looks at (default: Deckhouse's only).
        self.virt = virt or VirtLayer(api)
        self.identity = identity
        self.inventory = inventory
        self.on_dead = on_dead
        self.executor_factory = executor_factory
        self.executor: FenceExecutor | None = None
        self.bmc_monitor_factory = bmc_monitor_factory
        self.bmc: BmcMonitor | None = None
        self.clock = clock
        self.wall = wall
        self.new_id = new_id
        self._owns_listener = listener is None
        if listener is None:
            brokers = (
                BrokerSet(
                    {"broker": broker},
                    reconnect_min=cfg.broker.reconnect_min,
                    reconnect_max=cfg.broker.reconnect_max,
                    clock=clock,
                    silence=delivery_gap(profile),
                )
                if broker is not None
                else BrokerSet.from_config(cfg.brokers, identity, silence=delivery_gap(profile))
            )
            ingest = HeartbeatIngest(cfg, profile, clock=clock, wall=wall, keyring=keyring)
            listener = Listener(brokers, ingest)
        self.listener = listener
        self.broker: BrokerSet = listener.brokers  # publishes on every broker that is up
        self.name_standbys = name_standbys
        self.tick = tick
        self.kube_period = kube_period  # how long a node's workload, once read, is used
        self.first_look = getattr(api, "timeout", 5.0)  # see `_first_look`
        self.max_unhealthy = MaxUnhealthy.parse(cfg.max_unhealthy)
        ingest = listener.ingest
        self.ingest = ingest
        self.stats: LeaderStats = ingest.stats
        self.detector = ingest.detector
        self.sequences = ingest.sequences
        self.verifier = ingest.verifier
        self.probe_verifier = ProbeResultVerifier(self.verifier)
        # A peer answers within its probe timeout; the rest is for the broker's round trip.
        self.probes = OutstandingProbes(profile.peer_probe_timeout + max(profile.interval, 1.0))
        self.watchdog_claims = ingest.watchdog_claims
        self.stopped_boots = ingest.stopped_boots
        self._gone = ingest.gone  # Nodes deleted (until they register again)
        self.rejected_at = ingest.rejected_at
        self.leader_since = 0.0
        self.warm = False  # this leader took over a standby's running listener and history
        self.nodes: dict[str, NodeInfo] = {}
        # node -> (the kubelet Lease's renewTime last seen, the earliest and the latest moment
        # its last change can have happened on our clock; None until one was seen: a first look
        # proves nothing)
        self.kubelet_seen: dict[str, tuple[object, float | None, float | None]] = {}
        self.last_decision: PolicyDecision | None = None
        self.verdicts: list[NodeVerdict] = []
        self._reported: dict[str, NodeHealth] = {}
        self._alerted: set[tuple[str, str | None]] = set()
        self._probed: dict[str, float] = {}
        self._probe_salt = 0
        self.kube = KubeCache(
            api,
            cfg.kube.namespace,
            clock=clock,
            on_nodes=self._nodes_changed,
            on_leases=self._leases_changed,
            records=executor_factory is not None,
        )
        self._view_at = float("-inf")
        self.view_period = 1.0  # the status view is for people: once a second is plenty
        self._workloads: dict[str, tuple[float, NodeWorkload]] = {}  # node -> (read at, what)
        # For the view: the ColdStandby VMs on nodes not proven off, read at most every 5 s.
        self._vms_down: tuple[float, dict[str, list[str]] | None] = (float("-inf"), None)

    @property
    def broker_up_since(self) -> float | None:
        """Since when at least one broker has been up without a gap (None: none is)."""
        return self.listener.brokers.any_up_since

    @property
    def _broker_up(self) -> bool:
        """A session is up: publishing may succeed."""
        return bool(self.listener.brokers.up())

    def alive_since(self, node: str, since: float, *, certain: bool = False) -> str | None:
        """Evidence that `node` showed life after `since` (leader clock), or None.

        A kubelet renewal counts when it may have come after `since` (its change was seen at a
        look after `since`: the cautious reading before a power-off), or with `certain` only
        when it must have (the look before that change was already after `since`: before
        voiding a proof, a renewal made just before the machine went off proves nothing)."""
        last = self.detector.last_heartbeat(node)
        if last is not None and last >= since:  # stamped on receipt: at `since` is after it
            return f"heartbeat received {self.clock() - last:.1f} s ago"
        seen = self.kubelet_seen.get(node)
        if seen is None or seen[0] is None:
            return None
        changed = seen[1] if certain else seen[2]
        if changed is not None and changed >= since:
            return "kubelet Lease renewed"
        return None

    def in_maintenance(self, node: str) -> bool:
        """Whether the Node carries our maintenance mark."""
        info = self.nodes.get(node)
        return bool(info and info.maintenance)

    def _facts(self, now: float) -> LeaderFacts:
        return LeaderFacts(now, self.leader_since, self.broker_up_since, warm=self.warm)

    async def _event(self, node: str, reason: str, message: str, warning: bool) -> None:
        info = self.nodes.get(node)
        try:
            await self.api.node_event(node, info.uid if info else "", reason, message, warning)
        except ClusterError as err:
            log.warning("cannot record event %s for %s: %s", reason, node, err)

    # -- kubernetes ----------------------------------------------------------------------------

    def _nodes_changed(
        self, changes: list[Change[NodeInfo]], since: float | None, now: float
    ) -> None:
        """Nodes added, changed or deleted (the cache's first list: every Node, `since` None)."""
        for c in changes:
            n = c.new
            if n is None:
                self.nodes.pop(c.key, None)
                self._forget_node(c.key)
                self._gone.add(c.key)
                continue
            old = self.nodes.get(n.name)
            self.nodes[n.name] = n
            self._gone.discard(n.name)
            if old is not None and old.uid != n.uid:
                # Deleted and registered again while the watch was away: a new incarnation.
                log.info("node %s registered again (new uid)", n.name)
                self._forget_node(n.name)
            self.detector.expect(n.name, now)
            if n.name not in self.kubelet_seen:
                # First look: we cannot know when its Lease was renewed on our clock.
                lease = self.kube.leases.items().get(n.name)
                self.kubelet_seen[n.name] = (lease.renew_time if lease else None, None, None)
            self.detector.observe_kubelet(n.name, None, n.ready, now)

    @property
    def _nodes_listed(self) -> bool:
        """The Nodes' first list is in: a node missing from them is gone from the cluster."""
        return self.kube.nodes.synced.is_set()

    def _leases_changed(
        self, changes: list[Change[LeaseInfo]], since: float | None, now: float
    ) -> None:
        """Kubelet Leases changed between `since` (the last moment the cache was known
        current; None: the first list, no change seen) and `now`."""
        for c in changes:
            node = self.nodes.get(c.key)
            seen = self.kubelet_seen.get(c.key)
            if node is None or seen is None:
                continue  # its Node is not (yet) known: its first look takes the Lease then
            renew = c.new.renew_time if c.new is not None else None
            if since is None or renew is None:
                self.kubelet_seen[c.key] = (renew, seen[1], seen[2])  # no renewal seen
                continue
            if renew == seen[0]:
                continue
            # Stamped with the earliest moment it can have happened, so a renewal made just
            # before a node died is never taken for one made after its last heartbeat (a
            # false "node alive"); `now` is the latest.
            self.kubelet_seen[c.key] = (renew, since, now)
            self.detector.observe_kubelet(c.key, since, node.ready, now)

    async def read_kubelet_lease(self, node: str) -> None:
        """Read `node`'s kubelet Lease from the API server now (right before a first
        power-off) into the cache: a renewal the watch has not delivered yet counts as
        one seen now. Raises ClusterError."""
        lease = await self.api.get_lease(NODE_LEASE_NAMESPACE, node)
        if lease is not None:
            self.kube.leases.offer(_lease_object(lease))

    def _forget_node(self, node: str) -> None:
        if self.executor is not None:
            self.executor.forget(node)  # a node that rejoins later may be fenced again
        self.kubelet_seen.pop(node, None)
        self.ingest.forget(node)


def _lease_object(lease: LeaseInfo) -> dict[str, object]:
    """A Lease read (`LeaseInfo`) as the API's JSON, for the cache
    (`nodefence.agent.kube.json_codec`)."""
    renew = lease.renew_time.isoformat() if lease.renew_time is not None else None
    return {
        "metadata": {
            "name": lease.name,
            "namespace": lease.namespace,
            "resourceVersion": lease.resource_version,
        },
        "spec": {"holderIdentity": lease.holder, "renewTime": renew},
    }
