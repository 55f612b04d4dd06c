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
    SequenceTracker,
    WatchdogClaim,
    decode_heartbeat,
    heartbeat_filter,
    node_from_topic,
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
    PolicyDecision,
    decide,
    leader_guard,
)
from agent.probe_auth import UNSIGNED_ACCEPTED, ProbeRejected, ProbeResultVerifier
from agent.probe_requests import OutstandingProbes
from agent.profiles import DetectionProfile
from agent.watchdog import SelfFenceFacts, self_fence_verdict

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

    def self_fence_check(self, node: str, marked_at: float, unreachable: bool) -> tuple[bool, str]:
        """May `node` be taken as reset by its watchdog now? (see `agent.watchdog`)"""
        return self_fence_verdict(
            SelfFenceFacts(
                now=self.clock(),
                marked_at=marked_at,
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
                    [heartbeat_filter(cluster), result_filter(cluster)], self._on_message, up
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
            self.watchdog_claims[node] = hb.wd
            self.detector.observe(hb, now)
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
        self.nodes = {n.name: n for n in nodes}
        for n in nodes:
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
            if self.executor is not None:
                self.executor.forget(gone)  # a node that rejoins later may be fenced again
            self.kubelet_seen.pop(gone, None)
            self.detector.forget(gone)
            self.sequences.forget(gone)
            self.watchdog_claims.pop(gone, None)
            self.rejected_at.pop(gone, None)

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
        decision = decide(
            self.verdicts,
            LeaderFacts(now, self.leader_since, self.broker_up_since),
            ClusterFacts(
                self.max_unhealthy,
                maintenance,
                inventory,
                expected_nodes=len(self.verdicts) or None,
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
                    self.executor.submit(node)
        await self._publish_view(decision, now)
        return decision

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
                if self.executor is not None:
                    self.executor.submit(v.node)
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
