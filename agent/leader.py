"""Leader side: hear every heartbeat, watch kubelets, ask peers, judge, decide, report.

Thin I/O around the pure `agent.detector` and `agent.policy`, over one `agent.ingest.Listener`
(sessions to every broker, the detector and what was heard). A warm standby hands over its
running Listener, history included; a cold leader starts its own. Then:
- the listener delivers heartbeats and statuses to the ingest (stamped on receipt with the
  leader's monotonic clock; malformed, refused and replayed ones counted and dropped, copies
  from the other brokers dropped quietly) and probe results here; while no broker is reachable
  (and for `fence_after` after one is again) the policy declares nobody dead;
- kube caches (`agent.kube_cache`): Nodes and kubelet Leases listed once, then watched;
  each change is folded in as it arrives, noting on our clock when a renewTime changed;
- judge loop: evaluates, asks peers to probe suspects, applies the policy, and reports each
  new decision once (log + Kubernetes Event + the `on_dead` callback), and publishes the
  leader's view (retained) for `nodefence status`.
With an inventory, the fence executor's reconcile loop and the BMC checks (`agent.bmc_monitor`,
whose transitions become Node Events and alerts, and whose verdicts the view shows) run beside
them; `decision_evidence` is what the fence certificate keeps of a decision.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from agent import __version__, metrics
from agent.bmc_health import Transition
from agent.bmc_monitor import BmcMonitor
from agent.broker_set import BrokerSet
from agent.cluster import NODE_LEASE_NAMESPACE, ClusterApi, ClusterError, LeaseInfo, NodeInfo
from agent.config import AgentConfig
from agent.detector import NodeHealth, NodeVerdict
from agent.fence_evidence import stamp
from agent.fence_executor import FenceExecutor
from agent.fence_stop import StopKind, StopReason
from agent.fencing import RESTART_POLICIES
from agent.heartbeat_auth import AuthMode
from agent.heartbeat_codec import PREFIX
from agent.informer import Change
from agent.ingest import HeartbeatIngest, LeaderStats, Listener, delivery_gap
from agent.kube_cache import KubeCache
from agent.leader_broker import BrokerLost, LeaderBroker
from agent.leader_view import (
    Alert,
    InventoryState,
    LeaderView,
    NodeRow,
    OperationEntry,
    PauseState,
    encode,
    view_topic,
)
from agent.node_keys import Keyring
from agent.pause import Pause
from agent.peers import (
    ProbeRequest,
    Target,
    choose_peers,
    decode_result,
    encode_request,
    probe_topic,
)
from agent.policy import (
    ClusterFacts,
    LeaderFacts,
    MaxUnhealthy,
    NodeWorkload,
    PolicyDecision,
    decide,
    key_mismatch_alerts,
    leader_guard,
    marked_schedulable_alerts,
)
from agent.probe_auth import (
    UNSIGNED_ACCEPTED,
    ProbeRejected,
    ProbeResultVerifier,
    sign_request,
)
from agent.probe_requests import OutstandingProbes
from agent.profiles import DetectionProfile, NoPeers, Signal
from agent.status_view import operation_entry
from agent.virt import VirtLayer
from agent.watchdog import SelfFenceFacts, self_fence_verdict
from agent.workload import node_workload

log = logging.getLogger("nodefence.leader")

DeadCallback = Callable[[str, NodeVerdict], Awaitable[None]]
ExecutorFactory = Callable[["LeaderSide"], FenceExecutor]
BmcMonitorFactory = Callable[["LeaderSide"], BmcMonitor]
NameStandbys = Callable[[list[str]], None]  # called with the fencers' nodes, every round

__all__ = ["LeaderSide", "LeaderStats", "view_topic"]


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library call swallowed (Python 3.11 wait_for)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LeaderSide:
    """Runs while this process holds the Lease; cancelled the moment it does not.

    `listener`: a running Listener handed over by a warm standby (this side never stops it);
    without one the side listens itself, over `broker` (one edge, e.g. a simulation's) or over
    every broker of `cfg`, with `keyring` (the fencer key and the pinned node keys). Probe
    requests are signed for each peer asked (`agent.probe_auth`). `name_standbys` gets the
    nodes the other fencers announced themselves on (`agent.fencer_presence`) every round, to
    name the warm standbys on the Lease (`agent.standby`). `paused` says whether fencing is
    paused cluster-wide (`agent.pause`, read with the Lease); `inventory_problem` why the
    newest inventory file was rejected ("" when it was not).
    """

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

    async def run(self) -> None:
        """Lead until cancelled."""
        self.leader_since = self.clock()
        # A standby's listener was up before this moment: its history is this leader's.
        self.warm = self.broker_up_since is not None and not self._owns_listener
        if self.warm:
            log.info("leader side starting with the standby's heartbeat history")
        else:
            log.info("leader side starting; judging nobody for %.1f s", self.profile.fence_after)
        self.listener.on_other = self._on_message
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.kube.run())
                await self._first_look()
                if self.warm and self._nodes_listed:
                    for node in self.detector.tracked():
                        if node not in self.nodes:
                            self.ingest.forget(node)  # heard as a standby, gone from the cluster
                if self.executor_factory is not None:
                    self.executor = self.executor_factory(self)
                    resumed = await self.executor.resume()
                    if resumed:
                        log.warning("resumed %d unfinished fencing operations", resumed)
                if self._owns_listener:
                    tg.create_task(self.listener.run())
                tg.create_task(self._judge_loop())
                if self.executor is not None:
                    tg.create_task(self.executor.reconcile_loop())
                if self.bmc_monitor_factory is not None:
                    self.bmc = self.bmc_monitor_factory(self)
                    tg.create_task(self.bmc.run())
        finally:
            if self.listener.on_other == self._on_message:
                self.listener.on_other = None
            if self.executor is not None:
                await self.executor.stop()

    async def _first_look(self) -> None:
        """Give the caches' first lists the time one API call has (the old single look's),
        so the first rounds judge with the cluster's Nodes; the watches run on regardless."""
        if not await self.kube.wait_synced(self.first_look):
            missing = [inf.what for inf in self.kube.all if not inf.synced.is_set()]
            log.warning("not yet listed after %g s: %s", self.first_look, ", ".join(missing))
        _raise_if_cancelling()

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

    @property
    def max_claim_age(self) -> float:
        """How old (at the fence decision) a node's last armed-watchdog heartbeat may be: the
        longest a silent node can take to be declared dead under this profile, plus two
        heartbeat intervals and two probe timeouts."""
        p = self.profile
        kubelet_decides = Signal.KUBELET in p.require or (
            Signal.PEERS in p.require and p.on_no_peers is NoPeers.KUBELET
        )
        base = max(p.fence_after, p.kubelet_stale_after if kubelet_decides else 0.0)
        return base + 2 * p.interval + 2 * p.peer_probe_timeout

    def self_fence_check(
        self, node: str, marked_at: float, decided_at: float, unreachable: bool
    ) -> tuple[bool, str]:
        """May `node` be taken as reset by its watchdog now? (see `agent.watchdog`)"""
        decision = self.last_decision
        return self_fence_verdict(
            SelfFenceFacts(
                now=self.clock(),
                marked_at=marked_at,
                decided_at=decided_at,
                max_claim_age=self.max_claim_age,
                frozen=decision is None or decision.frozen,
                margin=self.cfg.fencing.self_fence_margin,
                claim=self.watchdog_claims.get(node),
                last_heartbeat=self.detector.last_heartbeat(node),
                last_rejected=self.rejected_at.get(node),
                # Every broker: the node's watchdog counts an echo from any of them as contact.
                broker_up_since=self.listener.brokers.all_up_since(),
                alive_after_mark=self.alive_since(node, marked_at),
                bmc_unreachable=unreachable,
                in_maintenance=self.in_maintenance(node),
            )
        )

    def decision_evidence(self, node: str) -> dict[str, object]:
        """What this leader knows about `node` now, as the fence evidence keeps it for the
        decision (`agent.fence_evidence`): verdict, last heartbeat, kubelet, peer reports."""
        now, wall = self.clock(), self.wall()
        v = next((v for v in self.verdicts if v.node == node), None)
        facts: dict[str, object] = {"profile": self.cfg.profile}
        if v is not None:
            facts["verdict"] = {"health": v.health.value, "reason": v.reason}
            facts["kubelet"] = {
                "leaseAgeSeconds": None if v.kubelet_age is None else round(v.kubelet_age, 2),
                "ready": v.kubelet_ready,
            }
            p = v.peers
            facts["peerSummary"] = {
                "reachable": p.reachable,
                "unreachable": p.unreachable,
                "available": p.available,
                "needed": p.needed,
            }
        last = self.detector.last_heartbeat(node)
        if last is not None:
            boot, seq = self.ingest.last_seq.get(node, ("", 0))
            facts["lastHeartbeat"] = {
                "at": stamp(wall - (now - last)),
                "ageSeconds": round(now - last, 3),
                "boot": boot,
                "seq": seq,
            }
        else:
            facts["lastHeartbeat"] = None  # never heard in this leader's term
        facts["peerReports"] = [
            {"peer": peer, "reachable": r.reachable, "ageSeconds": round(now - r.at, 3)}
            for peer, r in sorted(self.detector.peer_reports(node).items())
        ]
        return facts

    def fencing_busy(self, node: str) -> bool:
        """Whether a fencing operation of `node` runs here now (its BMCs are in use)."""
        return self.executor is not None and self.executor.busy(node)

    async def report_bmc_change(self, change: Transition) -> None:
        """A BMC check turned bad or recovered, or a node became (un)fenceable: an Event on
        the Node and, for bad news, an alert (`nodefence_alerts_total`)."""
        self.stats.bmc_changes.append(change)
        if change.warning:
            kind = "cannot-be-fenced" if change.device is None else "bmc-check-failed"
            metrics.ALERTS.labels(kind).inc()
        await self._event(change.node, change.change.value, change.message, change.warning)

    def _bmc_alerts(self) -> tuple[Alert, ...]:
        """The BMC alerts that hold now, as the view lists alerts."""
        if self.bmc is None:
            return ()
        out: list[Alert] = []
        for node, verdict in sorted(self.bmc.book.nodes.items()):
            if verdict.fenceable is False:
                message = f"node {node} cannot be fenced: {verdict.reason}"
                out.append(Alert("cannot-be-fenced", node, message))
        for node, checks in sorted(self.bmc.book.checks.items()):
            for c in checks.values():
                if not c.healthy:
                    message = f"BMC {node}/{c.device} ({c.type}) fails its check: {c.problem}"
                    out.append(Alert("bmc-check-failed", node, message))
        return tuple(out)

    def in_maintenance(self, node: str) -> bool:
        """Whether the Node carries our maintenance mark."""
        info = self.nodes.get(node)
        return bool(info and info.maintenance)

    # -- broker ------------------------------------------------------------------------------

    def _on_message(self, topic: str, data: bytes) -> None:
        """Everything but heartbeats and statuses (the ingest's): probe results."""
        now = self.clock()
        prefix = f"{PREFIX}/{self.cfg.cluster}/probe-result/"
        if not topic.startswith(prefix):
            return
        res = decode_result(topic[len(prefix) :], data)
        if res is None:
            self.stats.rejected["malformed_probe_result"] += 1
            metrics.REJECTED.labels("malformed_probe_result").inc()
            return
        try:
            # The signature first, so a forgery never uses up a peer's one answer.
            signed = self.probe_verifier.check(res, self.wall())
            asked_at = self.probes.admit(res, now)
        except ProbeRejected as rej:
            self.stats.rejected[rej.reason.value] += 1
            metrics.REJECTED.labels(rej.reason.value).inc()
            log.debug("dropped probe result on %s: %s", topic, rej)
            return
        if not signed and self.verifier.mode is AuthMode.PERMISSIVE:
            self.stats.rejected[UNSIGNED_ACCEPTED] += 1  # counted only
            metrics.REJECTED.labels(UNSIGNED_ACCEPTED).inc()
        self.stats.probe_results += 1
        # "Unreachable" may describe any moment since the request went out: stamp it then,
        # so a heartbeat received meanwhile outweighs it. "Reachable" counts on receipt.
        at = now if res.reachable else asked_at
        self.detector.observe_peer_report(res.suspect, res.peer, res.reachable, at)

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

    # -- judging -------------------------------------------------------------------------------

    async def _judge_loop(self) -> None:
        # Give the first broker connection a moment, so a leader that is still connecting
        # does not raise a "broker down" alert (it judges nobody meanwhile anyway).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.listener.brokers.connected_once.wait(), self.profile.fence_after
            )
        while True:
            started = self.clock()
            await self.judge_once()
            _raise_if_cancelling()
            # On a big cluster judging costs tens of ms: never spend more than a third of the
            # loop's time on it, so heartbeats keep being read (and stamped) promptly.
            await asyncio.sleep(max(self.tick, 2 * (self.clock() - started)))

    def _facts(self, now: float) -> LeaderFacts:
        return LeaderFacts(now, self.leader_since, self.broker_up_since, warm=self.warm)

    async def judge_once(self) -> PolicyDecision:
        """One round: evaluate, probe suspects, decide, report what is new."""
        now = self.clock()
        self.verdicts = self.detector.evaluate(now)
        healthy = [v.node for v in self.verdicts if v.health is NodeHealth.HEALTHY]
        for v in self.verdicts:
            if v.health in (NodeHealth.SUSPECT, NodeHealth.DEAD):
                await self._ask_peers(v.node, healthy, now)
        maintenance = frozenset(n for n, info in self.nodes.items() if info.maintenance)
        inventory = (
            self.inventory()
            if self.inventory is not None
            else frozenset(v.node for v in self.verdicts)
        )
        nodes = self.nodes.values()
        pause = self.paused()
        metrics.PAUSED.set(1 if pause is not None else 0)
        cordoned = frozenset(i.name for i in nodes if i.unschedulable)
        deckhouse = {i.name: i.deckhouse_maintenance for i in nodes if i.deckhouse_maintenance}
        planned = [
            v.node
            for v in self.verdicts
            if v.health is NodeHealth.DEAD and (v.node in cordoned or v.node in deckhouse)
        ]
        decision = decide(
            self.verdicts,
            self._facts(now),
            ClusterFacts(
                self.max_unhealthy,
                maintenance,
                inventory,
                expected_nodes=len(self.verdicts) or None,
                cordoned=cordoned,
                deckhouse_maintenance=deckhouse,
                workloads=await self._workloads_of(planned, now),
                kept_out_of_service={
                    i.name: i.fenced_by for i in nodes if i.out_of_service and i.fenced_by
                },
                deckhouse_fencing={
                    i.name: i.deckhouse_fencing for i in nodes if i.deckhouse_fencing
                },
                paused=None if pause is None else pause.describe(),
            ),
            self.profile,
        )
        decision.alerts.extend(
            marked_schedulable_alerts(
                {n: (info.maintenance, info.unschedulable) for n, info in self.nodes.items()}
            )
        )
        decision.alerts.extend(key_mismatch_alerts(self.ingest.key_mismatches))
        self.last_decision = decision
        up = self.broker_up_since
        # Once it has listened suspect_after (even in a new leader's first window) it has heard
        # every fencer's retained presence: naming standbys need not wait for more.
        listened = up is not None and now - up >= self.profile.suspect_after
        fencers = sorted(self.ingest.fencers)
        if self.name_standbys is not None and listened and fencers:
            self.name_standbys(fencers)
        metrics.FROZEN.set(1 if decision.frozen else 0)
        counts = collections.Counter(v.health.value for v in self.verdicts)
        for state in NodeHealth:
            metrics.NODES.labels(state.value).set(counts.get(state.value, 0))
        await self._report(decision, now)
        if self.executor is not None:
            for node in decision.fence:  # no-op while its operation runs
                if node in self.nodes:
                    self.executor.submit(node, now, self.nodes[node].uid)
            await self._advance_held(maintenance, now)
            await self.executor.clear_orphan_taints(nodes, now)
        await self._publish_view(decision, now, pause)
        return decision

    async def _workloads_of(self, nodes: list[str], now: float) -> dict[str, NodeWorkload]:
        """What each (dead, cordoned) node runs that fencing would free, read at most once per
        `kube_period`; a node whose workload cannot be read is left out (unknown)."""
        found: dict[str, NodeWorkload] = {}
        for node in nodes:
            cached = self._workloads.get(node)
            if cached is None or now - cached[0] >= self.kube_period:
                try:
                    cached = (now, await node_workload(self.api, node, self.virt))
                except ClusterError as err:
                    log.warning("cannot read what %s runs: %s", node, err)
                    self._workloads.pop(node, None)
                    continue
                self._workloads[node] = cached
            found[node] = cached[1]
        return found

    async def _advance_held(self, maintenance: frozenset[str], now: float) -> None:
        """Resumed operations this leader did not decide (held, see FenceExecutor.resume):
        once it can judge (its own first window over, its broker connection up), abort those
        whose node it finds alive, in maintenance or gone from the cluster. One whose Off was
        proven goes on unless the node is alive (then its proof is stale: the machine runs
        again). One whose power-off the old leader may have sent goes on once this leader's
        own verdict is DEAD, even while the storm guard freezes new decisions (the decision was
        taken and committed); one that sent nothing waits for a fence decision that passes
        every guard."""
        assert self.executor is not None
        if leader_guard(self._facts(now), self.profile.fence_after) is not None:
            return
        verdicts = {v.node: v for v in self.verdicts}
        for node in sorted(self.executor.held()):
            v = verdicts.get(node)
            op = self.executor.operations.get(node)
            alive = v is not None and v.health in (NodeHealth.HEALTHY, NodeHealth.AGENT_LOST)
            if op is not None and op.off_proven:
                if alive and not op.vms_let_go:
                    assert v is not None
                    again = StopReason(StopKind.NODE_ALIVE, f"node alive again ({v.reason})")
                    await self.executor.cancel_held(node, again)
                else:
                    self.executor.go_on(node)
                continue
            if node in maintenance and not (op and op.power_off_sent):
                why = StopReason(
                    StopKind.MAINTENANCE,
                    "node in maintenance (seen by a new leader that never decided to fence it)",
                )
            elif alive:
                assert v is not None
                why = StopReason(
                    StopKind.NODE_ALIVE, f"node alive by the new leader's own evidence ({v.reason})"
                )
            elif node not in self.nodes and self._nodes_listed:
                why = StopReason(
                    StopKind.NODE_GONE,
                    "its Node no longer exists and this leader never decided to fence it",
                )
            else:
                if op and op.power_off_sent and v is not None and v.health is NodeHealth.DEAD:
                    self.executor.submit(node, now, self.nodes[node].uid)
                continue
            await self.executor.cancel_held(node, why)

    async def _ask_peers(self, suspect: str, healthy: list[str], now: float) -> None:
        last = self._probed.get(suspect)
        if last is not None and now - last < max(self.profile.interval, 0.5):
            return
        info = self.nodes.get(suspect)
        if not self._broker_up or info is None:
            return
        targets: list[Target] = []
        # Announced by the node's pinned key; the annotation is what agents of releases before
        # the fencer split wrote.
        keyring = self.ingest.keyring
        endpoint = (keyring.health.get(suspect) if keyring else None) or info.health_endpoint
        if endpoint and ":" in endpoint:
            host, _, port = endpoint.rpartition(":")
            if port.isdigit():
                targets.append(Target(host, int(port), "agent"))
        if info.internal_ip and info.kubelet_port:
            targets.append(Target(info.internal_ip, info.kubelet_port, "kubelet"))
        if not targets:
            return
        self._probe_salt += 1
        peers = choose_peers(
            suspect, healthy, max(self.profile.peer_quorum, 1) + 1, self._probe_salt
        )
        if not peers:
            return
        req = ProbeRequest(self.new_id(), suspect, peers, tuple(targets))
        if keyring is not None:
            req = sign_request(req, keyring, int(self.wall() * 1000))
        self._probed[suspect] = now
        self.probes.asked(req, now)  # before publishing: an answer may come back at once
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(probe_topic(self.cfg.cluster, suspect), encode_request(req))
            self.stats.probes_sent += 1

    async def _report(self, decision: PolicyDecision, now: float) -> None:
        blind = leader_guard(self._facts(now), self.profile.fence_after)
        for v in [] if blind else self.verdicts:  # a blind leader reports no node's state
            before = self._reported.get(v.node)
            current = v.health
            if v.node in decision.fence:
                current = NodeHealth.DEAD
            elif v.health is NodeHealth.DEAD:
                current = NodeHealth.SUSPECT  # DEAD but held: not declared
            if before == current:
                continue
            self._reported[v.node] = current
            if current is NodeHealth.DEAD:
                self.stats.decisions.append((now, v.node, "dead"))
                if v.since_last_heartbeat is not None:
                    metrics.DETECTION.observe(v.since_last_heartbeat)
                log.warning("node %s declared dead: %s", v.node, v.reason)
                await self._event(v.node, "NodeDeclaredDead", f"declared dead: {v.reason}", True)
                if self.executor is not None and v.node in self.nodes:
                    self.executor.submit(v.node, now, self.nodes[v.node].uid)
                if self.on_dead is not None:
                    await self.on_dead(v.node, v)
            elif current is NodeHealth.AGENT_LOST:
                self.stats.decisions.append((now, v.node, "agent-lost"))
                log.warning("node %s: agent lost, node alive: %s", v.node, v.reason)
                await self._event(v.node, "AgentLostNodeAlive", v.reason, True)
            elif current is NodeHealth.HEALTHY and before in (
                NodeHealth.DEAD,
                NodeHealth.AGENT_LOST,
            ):
                self.stats.decisions.append((now, v.node, "recovered"))
                await self._event(v.node, "NodeHeartbeatsBack", "heartbeats are back", False)
        for alert in decision.alerts:
            key = (alert.kind.value, alert.node)
            if key in self._alerted:
                continue
            self._alerted.add(key)
            self.stats.alerts.append(alert)
            metrics.ALERTS.labels(alert.kind.value).inc()
            log.error("alert %s: %s", alert.kind.value, alert.message)
            reason = "Alert" + alert.kind.name.title().replace("_", "")
            if alert.node:
                await self._event(alert.node, reason, alert.message, True)
            else:
                try:
                    await self.api.lease_event(
                        self.cfg.kube.namespace, self.cfg.kube.lease_name, reason, alert.message
                    )
                except ClusterError as err:
                    log.warning("cannot record event %s: %s", reason, err)
        active = {(a.kind.value, a.node) for a in decision.alerts}
        self._alerted &= active  # an alert that cleared may fire again later

    async def _event(self, node: str, reason: str, message: str, warning: bool) -> None:
        info = self.nodes.get(node)
        try:
            await self.api.node_event(node, info.uid if info else "", reason, message, warning)
        except ClusterError as err:
            log.warning("cannot record event %s for %s: %s", reason, node, err)

    async def _down_vms(self, nodes: set[str], now: float) -> dict[str, list[str]] | None:
        """The ColdStandby VMs still on each of `nodes` (not proven off), for the view: read
        at most every 5 s, only while there is such a node; None when they cannot be read."""
        if not nodes:
            return {}
        read_at, found = self._vms_down
        if found is None or now - read_at >= 5.0:
            try:
                vms = await self.api.vm_placements()
            except ClusterError as err:
                log.warning("cannot read the VMs of dead nodes for the status view: %s", err)
                found = None
            else:
                found = {}
                for vm in vms:
                    if vm.node and vm.run_policy in RESTART_POLICIES and vm.phase != "Stopped":
                        found.setdefault(vm.node, []).append(vm.key)
            self._vms_down = (now, found)
        return None if found is None else {n: sorted(found.get(n, [])) for n in nodes}

    async def _operations_view(self, dead: set[str], now: float) -> list[OperationEntry]:
        """The operations this leader runs or finished lately, for `nodefence status`."""
        ex = self.executor
        if ex is None:
            return []
        open_ops = [op for op in ex.operations.values() if not op.final]
        unproven = {op.node for op in open_ops if not op.off_proven}
        down = await self._down_vms(unproven | dead, now)
        out = [
            operation_entry(
                op,
                ex.store.started(op.node),
                None,
                None if down is None else down.get(op.node, []),
            )
            for op in sorted(open_ops, key=lambda o: o.node)
        ]
        for ended_at, op in ex.recently_finished(self.wall()):
            out.append(operation_entry(op, None, stamp(ended_at), None))
        return out

    async def _publish_view(
        self, decision: PolicyDecision, now: float, pause: Pause | None = None
    ) -> None:
        if not self._broker_up or now - self._view_at < self.view_period:
            return
        self._view_at = now
        inventory = self.inventory() if self.inventory is not None else None
        dead = {v.node for v in self.verdicts if v.health is NodeHealth.DEAD}
        rows = []
        for v in self.verdicts:
            info = self.nodes.get(v.node)
            rows.append(
                NodeRow(
                    node=v.node,
                    state=v.health.value,
                    heartbeat_age=None
                    if v.since_last_heartbeat is None
                    else round(v.since_last_heartbeat, 2),
                    kubelet_age=None if v.kubelet_age is None else round(v.kubelet_age, 2),
                    kubelet_lease_seen=v.node in self.kubelet_seen,
                    ready=info.ready if info is not None else None,
                    reason=v.reason,
                    held=decision.held.get(v.node, ""),
                    maintenance=info.maintenance_mark if info is not None else "",
                    cordoned=bool(info and info.unschedulable),
                    in_inventory=None if inventory is None else v.node in inventory,
                    agent=self.ingest.versions.get(v.node),
                    bmc=None if self.bmc is None else self.bmc.node_view(v.node),
                )
            )
        problem = self.inventory_problem() if self.inventory_problem is not None else ""
        view = LeaderView(
            leader=self.identity,
            version=__version__,
            profile=self.cfg.profile,
            period=self.view_period,
            frozen=decision.frozen,
            paused=None if pause is None else PauseState(pause.reason, pause.by, pause.since),
            alerts=tuple(Alert(a.kind.value, a.node, a.message) for a in decision.alerts)
            + self._bmc_alerts(),
            rejected=dict(self.stats.rejected),
            nodes=tuple(rows),
            operations=tuple(await self._operations_view(dead, now)),
            inventory=None if inventory is None else InventoryState(len(inventory), problem),
            published_at=self.wall(),
        )
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(view_topic(self.cfg.cluster), encode(view), retain=True)


def _lease_object(lease: LeaseInfo) -> dict[str, object]:
    """A Lease read (`LeaseInfo`) as the API's JSON, for the cache (`agent.kube_json`)."""
    renew = lease.renew_time.isoformat() if lease.renew_time is not None else None
    return {
        "metadata": {
            "name": lease.name,
            "namespace": lease.namespace,
            "resourceVersion": lease.resource_version,
        },
        "spec": {"holderIdentity": lease.holder, "renewTime": renew},
    }
