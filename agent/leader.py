"""Leader side: hear every heartbeat, watch kubelets, ask peers, judge, decide, report.

Thin I/O around the pure `agent.detector` and `agent.policy`: three loops share one detector
(created per leadership term):
- broker loop: subscribes to heartbeats and probe results, stamps each on receipt with the
  leader's monotonic clock, counts and drops malformed or replayed messages, and reconnects;
  while it is down (and for `fence_after` after) the policy declares nobody dead;
- kube loop: lists Nodes and kubelet Leases, noting on our clock when a renewTime changed;
- judge loop: evaluates, asks peers to probe suspects, applies the policy, and reports each
  new decision once (log + Kubernetes Event + the `on_dead` callback), and publishes the
  leader's view (retained) for `nodefence status`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent import metrics
from agent.cluster import ClusterApi, ClusterError, NodeInfo
from agent.config import AgentConfig
from agent.detector import FailureDetector, NodeHealth, NodeVerdict
from agent.fence_executor import FenceExecutor
from agent.heartbeat_auth import AuthMode, HeartbeatVerifier
from agent.heartbeat_codec import (
    PREFIX,
    HeartbeatRejected,
    NodeState,
    SequenceTracker,
    WatchdogClaim,
    decode_heartbeat,
    decode_status_boot,
    heartbeat_filter,
    node_from_topic,
    status_filter,
    valid_name,
)
from agent.leader_broker import BrokerLost, LeaderBroker, MqttLeaderBroker
from agent.peers import (
    ProbeRequest,
    Target,
    choose_peers,
    decode_result,
    encode_request,
    probe_topic,
    result_filter,
)
from agent.policy import (
    Alert,
    ClusterFacts,
    LeaderFacts,
    MaxUnhealthy,
    NodeWorkload,
    PolicyDecision,
    decide,
    leader_guard,
)
from agent.probe_auth import UNSIGNED_ACCEPTED, ProbeRejected, ProbeResultVerifier
from agent.probe_requests import OutstandingProbes
from agent.profiles import DetectionProfile, NoPeers, Signal
from agent.watchdog import SelfFenceFacts, self_fence_verdict
from agent.workload import node_workload

log = logging.getLogger("nodefence.leader")

DeadCallback = Callable[[str, NodeVerdict], Awaitable[None]]
ExecutorFactory = Callable[["LeaderSide"], FenceExecutor]


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library call swallowed (Python 3.11 wait_for)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def view_topic(cluster: str) -> str:
    """Retained topic where the leader publishes its view for `nodefence status`."""
    return f"{PREFIX}/{cluster}/leader/view"


@dataclass
class LeaderStats:
    """Counters for status output, metrics and tests."""

    heartbeats: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    probes_sent: int = 0
    probe_results: int = 0
    decisions: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, kind)
    alerts: list[Alert] = field(default_factory=list)


class LeaderSide:
    """Runs while this process holds the Lease; cancelled the moment it does not."""

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
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        broker: LeaderBroker | None = None,
        tick: float = 0.1,
        kube_period: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.profile = profile
        self.api = api
        self.identity = identity
        self.inventory = inventory
        self.on_dead = on_dead
        self.executor_factory = executor_factory
        self.executor: FenceExecutor | None = None
        self.clock = clock
        self.wall = wall
        self.new_id = new_id
        self.broker: LeaderBroker = broker or MqttLeaderBroker(cfg.broker, identity)
        self.tick = tick
        self.kube_period = kube_period
        self.max_unhealthy = MaxUnhealthy.parse(cfg.max_unhealthy)
        self.stats = LeaderStats()
        self.detector = FailureDetector(profile)
        self.sequences = SequenceTracker()
        key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
        self.verifier = HeartbeatVerifier(
            AuthMode(cfg.auth.mode),
            key,
            cfg.auth.max_skew,
            tuple(s.reveal().encode() for s in cfg.auth.also_accept),
        )
        self.probe_verifier = ProbeResultVerifier(self.verifier)
        # A peer answers within its probe timeout; the rest is for the broker's round trip.
        self.probes = OutstandingProbes(profile.peer_probe_timeout + max(profile.interval, 1.0))
        self.watchdog_claims: dict[str, WatchdogClaim | None] = {}
        self._claim_boot: dict[str, str] = {}  # node -> boot id of the heartbeat of its claim
        self.stopped_boots: dict[str, str] = {}  # node -> boot id its agent stopped cleanly
        self._gone: set[str] = set()  # Nodes deleted in this term (until they register again)
        self.rejected_at: dict[str, float] = {}  # node -> last refused message on its topic
        self.leader_since = 0.0
        self.broker_up_since: float | None = None
        self.nodes: dict[str, NodeInfo] = {}
        self.kubelet_seen: dict[str, tuple[object, float]] = {}
        self.last_decision: PolicyDecision | None = None
        self.verdicts: list[NodeVerdict] = []
        self._reported: dict[str, NodeHealth] = {}
        self._alerted: set[tuple[str, str | None]] = set()
        self._probed: dict[str, float] = {}
        self._probe_salt = 0
        self._broker_up = False  # a session is up: publishing may succeed
        self._last_kube_look: float | None = None
        self._view_at = float("-inf")
        self.view_period = 1.0  # the status view is for people: once a second is plenty
        self._connected_once = asyncio.Event()
        self._workloads: dict[str, tuple[float, NodeWorkload]] = {}  # node -> (read at, what)

    async def run(self) -> None:
        """Lead until cancelled."""
        self.leader_since = self.clock()
        log.info("leader side starting; judging nobody for %.1f s", self.profile.fence_after)
        await self._refresh_kube()
        if self.executor_factory is not None:
            self.executor = self.executor_factory(self)
            resumed = await self.executor.resume()
            if resumed:
                log.warning("resumed %d unfinished fencing operations", resumed)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._broker_loop())
                tg.create_task(self._kube_loop())
                tg.create_task(self._judge_loop())
                if self.executor is not None:
                    tg.create_task(self.executor.reconcile_loop())
        finally:
            if self.executor is not None:
                await self.executor.stop()

    def alive_since(self, node: str, since: float) -> str | None:
        """Evidence that `node` showed life after `since` (leader clock), or None."""
        last = self.detector.last_heartbeat(node)
        if last is not None and last > since:
            return f"heartbeat received {self.clock() - last:.1f} s ago"
        seen = self.kubelet_seen.get(node)
        if seen is not None and seen[1] > since and seen[0] is not None:
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
                broker_up_since=self.broker_up_since,
                alive_after_mark=self.alive_since(node, marked_at),
                bmc_unreachable=unreachable,
            )
        )

    def in_maintenance(self, node: str) -> bool:
        """Whether the Node carries our maintenance mark."""
        info = self.nodes.get(node)
        return bool(info and info.maintenance)

    # -- broker ------------------------------------------------------------------------------

    async def _broker_loop(self) -> None:
        attempt = 0
        cluster = self.cfg.cluster
        while True:

            def up() -> None:
                nonlocal attempt
                self.broker_up_since = self.clock()
                self._broker_up = True
                self._connected_once.set()
                attempt = 0
                log.info("leader connected to the broker")

            try:
                await self.broker.session(
                    [heartbeat_filter(cluster), result_filter(cluster), status_filter(cluster)],
                    self._on_message,
                    up,
                )
            except BrokerLost as err:
                log.warning("leader lost the broker: %s", err)
            finally:
                self._broker_up = False
                self.broker_up_since = None
            attempt += 1
            await asyncio.sleep(
                min(
                    self.cfg.broker.reconnect_max,
                    self.cfg.broker.reconnect_min * 2 ** min(attempt, 10),
                )
            )

    def _on_message(self, topic: str, payload: object) -> None:
        now = self.clock()
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        node = node_from_topic(self.cfg.cluster, topic)
        if node is None and topic.startswith(f"{PREFIX}/{self.cfg.cluster}/heartbeat/"):
            self.stats.rejected["bad_topic"] += 1
            metrics.REJECTED.labels("bad_topic").inc()
            return
        if node is not None and node in self._gone:
            # A heartbeat still in flight when its Node was deleted: it must not bring back a
            # phantom node (unhealthy forever, counted by the storm guard).
            self.stats.rejected["deleted_node"] += 1
            metrics.REJECTED.labels("deleted_node").inc()
            return
        if node is not None:
            try:
                hb = decode_heartbeat(node, data)
                if not self.verifier.check(hb, self.wall()) and self.verifier.mode is not (
                    AuthMode.OFF
                ):
                    self.stats.rejected["unsigned_accepted"] += 1  # permissive: counted only
                    metrics.REJECTED.labels("unsigned_accepted").inc()
                self.sequences.check(hb)
            except HeartbeatRejected as rej:
                self.stats.rejected[rej.reason.value] += 1
                metrics.REJECTED.labels(rej.reason.value).inc()
                if node in self.watchdog_claims or len(self.rejected_at) < 65536:
                    self.rejected_at[node] = now
                log.debug("dropped heartbeat on %s: %s", topic, rej)
                return
            self.stats.heartbeats += 1
            metrics.HEARTBEATS.inc()
            # A boot whose agent announced a clean stop has disarmed its watchdog: a
            # heartbeat of it delivered late (reordered) claims nothing.
            self.watchdog_claims[node] = hb.wd if self.stopped_boots.get(node) != hb.boot else None
            self._claim_boot[node] = hb.boot
            self.detector.observe(hb, now)
            return
        status_prefix = f"{PREFIX}/{self.cfg.cluster}/status/"
        if topic.startswith(status_prefix):
            self._on_status(topic[len(status_prefix) :], data)
            return
        prefix = f"{PREFIX}/{self.cfg.cluster}/probe-result/"
        if topic.startswith(prefix):
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

    def _on_status(self, node: str, data: bytes) -> None:
        """A node's retained status: a clean stop withdraws its boot's watchdog claim."""
        status = decode_status_boot(data) if valid_name(node) else None
        if status is None or status[0] is not NodeState.STOPPED or status[1] is None:
            return  # online/offline say nothing the heartbeats do not
        if node not in self.stopped_boots and len(self.stopped_boots) >= 65536:
            return
        self.stopped_boots[node] = status[1]
        if self._claim_boot.get(node) == status[1] and self.watchdog_claims.get(node):
            log.info("node %s: agent stopped cleanly, its watchdog claim is withdrawn", node)
            self.watchdog_claims[node] = None

    # -- kubernetes ----------------------------------------------------------------------------

    async def _kube_loop(self) -> None:
        while True:
            await asyncio.sleep(self.kube_period)
            await self._kube_then_check()

    async def _refresh_kube(self) -> None:
        try:
            nodes = await self.api.list_nodes()
            leases = await self.api.node_leases()
        except ClusterError as err:
            log.warning("cannot read nodes or kubelet leases: %s", err)
            return
        now = self.clock()
        previous_look, self._last_kube_look = self._last_kube_look, now
        previous, self.nodes = self.nodes, {n.name: n for n in nodes}
        for n in nodes:
            self._gone.discard(n.name)
            old = previous.get(n.name)
            if old is not None and old.uid != n.uid:
                # Deleted and registered again between two looks: a new incarnation.
                log.info("node %s registered again (new uid)", n.name)
                self._forget_node(n.name)
            self.detector.expect(n.name, now)
            lease = leases.get(n.name)
            renew = lease.renew_time if lease else None
            seen = self.kubelet_seen.get(n.name)
            renewed_at = None
            if seen is None:
                # First look: we cannot know when it was renewed on our clock.
                self.kubelet_seen[n.name] = (renew, now)
            elif renew != seen[0]:
                self.kubelet_seen[n.name] = (renew, now)
                # The change happened some time after our previous look: stamp it with that
                # earliest possible moment, so a renewal made just before a node died is never
                # taken for one made after its last heartbeat (a false "node alive").
                renewed_at = previous_look if previous_look is not None else now
            self.detector.observe_kubelet(n.name, renewed_at, n.ready, now)
        for gone in set(self.kubelet_seen) - set(self.nodes):
            self._forget_node(gone)
            self._gone.add(gone)

    def _forget_node(self, node: str) -> None:
        if self.executor is not None:
            self.executor.forget(node)  # a node that rejoins later may be fenced again
        self.kubelet_seen.pop(node, None)
        self.detector.forget(node)
        self.sequences.forget(node)
        self.watchdog_claims.pop(node, None)
        self._claim_boot.pop(node, None)
        self.rejected_at.pop(node, None)

    # -- judging -------------------------------------------------------------------------------

    async def _kube_then_check(self) -> None:
        await self._refresh_kube()
        _raise_if_cancelling()

    async def _judge_loop(self) -> None:
        # Give the first broker connection a moment, so a leader that is still connecting
        # does not raise a "broker down" alert (it judges nobody meanwhile anyway).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_once.wait(), self.profile.fence_after)
        while True:
            started = self.clock()
            await self.judge_once()
            _raise_if_cancelling()
            # On a big cluster judging costs tens of ms: never spend more than a third of the
            # loop's time on it, so heartbeats keep being read (and stamped) promptly.
            await asyncio.sleep(max(self.tick, 2 * (self.clock() - started)))

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
        cordoned = frozenset(i.name for i in nodes if i.unschedulable)
        deckhouse = {i.name: i.deckhouse_maintenance for i in nodes if i.deckhouse_maintenance}
        planned = [
            v.node
            for v in self.verdicts
            if v.health is NodeHealth.DEAD and (v.node in cordoned or v.node in deckhouse)
        ]
        decision = decide(
            self.verdicts,
            LeaderFacts(now, self.leader_since, self.broker_up_since),
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
            ),
            self.profile,
        )
        self.last_decision = decision
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
        await self._publish_view(decision, now)
        return decision

    async def _workloads_of(self, nodes: list[str], now: float) -> dict[str, NodeWorkload]:
        """What each (dead, cordoned) node runs that fencing would free, read at most once per
        `kube_period`; a node whose workload cannot be read is left out (unknown)."""
        found: dict[str, NodeWorkload] = {}
        for node in nodes:
            cached = self._workloads.get(node)
            if cached is None or now - cached[0] >= self.kube_period:
                try:
                    cached = (now, await node_workload(self.api, node))
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
        whose node it finds alive, in maintenance or gone from the cluster. One whose power-off
        the old leader may have sent goes on once this leader's own verdict is DEAD, even
        while the storm guard freezes new decisions (the decision was taken and committed);
        one that sent nothing waits for a fence decision that passes every guard."""
        assert self.executor is not None
        if (
            leader_guard(
                LeaderFacts(now, self.leader_since, self.broker_up_since), self.profile.fence_after
            )
            is not None
        ):
            return
        verdicts = {v.node: v for v in self.verdicts}
        for node in sorted(self.executor.held()):
            v = verdicts.get(node)
            op = self.executor.operations.get(node)
            if node in maintenance and not (op and op.power_off_sent):
                why = "node in maintenance (seen by a new leader that never decided to fence it)"
            elif v is not None and v.health in (NodeHealth.HEALTHY, NodeHealth.AGENT_LOST):
                why = f"node alive by the new leader's own evidence ({v.reason})"
            elif node not in self.nodes and self._last_kube_look is not None:
                why = "its Node no longer exists and this leader never decided to fence it"
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
        if info.health_endpoint and ":" in info.health_endpoint:
            host, _, port = info.health_endpoint.rpartition(":")
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
        self._probed[suspect] = now
        self.probes.asked(req, now)  # before publishing: an answer may come back at once
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(probe_topic(self.cfg.cluster, suspect), encode_request(req))
            self.stats.probes_sent += 1

    async def _report(self, decision: PolicyDecision, now: float) -> None:
        blind = leader_guard(
            LeaderFacts(now, self.leader_since, self.broker_up_since), self.profile.fence_after
        )
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

    async def _publish_view(self, decision: PolicyDecision, now: float) -> None:
        if not self._broker_up or now - self._view_at < self.view_period:
            return
        self._view_at = now
        rows = []
        for v in self.verdicts:
            seen = self.kubelet_seen.get(v.node)
            rows.append(
                {
                    "node": v.node,
                    "state": v.health.value,
                    "heartbeatAge": None
                    if v.since_last_heartbeat is None
                    else round(v.since_last_heartbeat, 2),
                    "kubeletAge": None if v.kubelet_age is None else round(v.kubelet_age, 2),
                    "kubeletLeaseSeen": seen is not None,
                    "ready": self.nodes[v.node].ready if v.node in self.nodes else None,
                    "reason": v.reason,
                }
            )
        view = {
            "v": 1,
            "leader": self.identity,
            "profile": self.cfg.profile,
            "frozen": decision.frozen,
            "alerts": [
                {"kind": a.kind.value, "node": a.node, "message": a.message}
                for a in decision.alerts
            ],
            "rejected": dict(self.stats.rejected),
            "nodes": rows,
            "publishedAt": self.wall(),
        }
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(
                view_topic(self.cfg.cluster), json.dumps(view).encode(), retain=True
            )
