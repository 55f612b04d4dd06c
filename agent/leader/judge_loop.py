"""The leader's judge loop: evaluate, probe suspects, decide, report each new decision once.

`LeaderJudge` runs the pure `nodefence.agent.detection.detector` and
`nodefence.agent.detection.policy` over what the leader knows, reports new decisions (log,
Kubernetes Event, alert, the `on_dead` callback), submits fence decisions to the executor, advances
resumed operations it did not decide, and publishes the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nodefence.agent.detection.detector import NodeHealth
from nodefence.agent.detection.policy import (
    ClusterFacts,
    NodeWorkload,
    PolicyDecision,
    decide,
    key_mismatch_alerts,
    leader_guard,
    marked_schedulable_alerts,
)
from nodefence.agent.fencing.stop import StopKind, StopReason
from nodefence.agent.kube.client import ClusterError
from nodefence.agent.leader.probe_client import LeaderProbes
from nodefence.agent.leader.state_client import raise_if_cancelling
from nodefence.agent.leader.view_client import ViewPublisher
from nodefence.agent.maintenance.workload_client import node_workload
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.leader")

_HEALTH_VALUES = tuple(h.value for h in NodeHealth)  # the label values of `metrics.NODES`


class LeaderJudge(LeaderProbes, ViewPublisher):
    """One judging round, and the loop that runs it."""

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
            raise_if_cancelling()
            # On a big cluster judging costs tens of ms: never spend more than a third of the
            # loop's time on it, so heartbeats keep being read (and stamped) promptly.
            await asyncio.sleep(max(self.tick, 2 * (self.clock() - started)))

    async def judge_once(self) -> PolicyDecision:
        """One round: evaluate, probe suspects, decide, report what is new."""
        now = self.clock()
        verdicts = self.verdicts = self.detector.evaluate(now)
        # The verdicts sorted out in one pass: the healthy (who may probe), the suspect or
        # dead (to probe, in verdict order), the dead, and how many of each state.
        healthy: list[str] = []
        to_probe: list[str] = []
        dead: list[str] = []
        counts = dict.fromkeys(_HEALTH_VALUES, 0)
        for v in verdicts:
            health = v.health
            counts[health] += 1  # a NodeHealth is its value as a key
            if health is NodeHealth.HEALTHY:
                healthy.append(v.node)
            elif health is NodeHealth.SUSPECT:
                to_probe.append(v.node)
            elif health is NodeHealth.DEAD:
                to_probe.append(v.node)
                dead.append(v.node)
        for node in to_probe:
            await self._ask_peers(node, healthy, now)
        # What the cluster says of its nodes, gathered in one pass over them.
        in_maintenance: list[str] = []
        marked: dict[str, tuple[bool, bool]] = {}
        unschedulable: list[str] = []
        deckhouse: dict[str, str] = {}
        kept_out_of_service: dict[str, str] = {}
        deckhouse_fencing: dict[str, str] = {}
        for name, i in self.nodes.items():
            if i.maintenance:
                in_maintenance.append(name)
                marked[name] = (i.maintenance, i.unschedulable)
            if i.unschedulable:
                unschedulable.append(i.name)
            if i.deckhouse_maintenance:
                deckhouse[i.name] = i.deckhouse_maintenance
            if i.out_of_service and i.fenced_by:
                kept_out_of_service[i.name] = i.fenced_by
            if i.deckhouse_fencing:
                deckhouse_fencing[i.name] = i.deckhouse_fencing
        maintenance = frozenset(in_maintenance)
        cordoned = frozenset(unschedulable)
        inventory = (
            self.inventory() if self.inventory is not None else frozenset(v.node for v in verdicts)
        )
        pause = self.paused()
        metrics.PAUSED.set(1 if pause is not None else 0)
        planned = [n for n in dead if n in cordoned or n in deckhouse]
        decision = decide(
            verdicts,
            self._facts(now),
            ClusterFacts(
                self.max_unhealthy,
                maintenance,
                inventory,
                expected_nodes=len(verdicts) or None,
                cordoned=cordoned,
                deckhouse_maintenance=deckhouse,
                workloads=await self._workloads_of(planned, now) if planned else {},
                kept_out_of_service=kept_out_of_service,
                deckhouse_fencing=deckhouse_fencing,
                paused=None if pause is None else pause.describe(),
            ),
            self.profile,
        )
        if marked:  # only a node marked for maintenance can be marked but schedulable
            decision.alerts.extend(marked_schedulable_alerts(marked))
        if self.ingest.key_mismatches:
            decision.alerts.extend(key_mismatch_alerts(self.ingest.key_mismatches))
        self.last_decision = decision
        up = self.broker_up_since
        # Once it has listened suspect_after (even in a new leader's first window) it has heard
        # every fencer's retained presence: naming standbys need not wait for more.
        listened = up is not None and now - up >= self.profile.suspect_after
        if self.name_standbys is not None and listened and self.ingest.fencers:
            self.name_standbys(sorted(self.ingest.fencers))
        metrics.FROZEN.set(1 if decision.frozen else 0)
        for value, count in counts.items():
            metrics.NODES.labels(value).set(count)
        await self._report(decision, now)
        if self.executor is not None:
            for node in decision.fence:  # no-op while its operation runs
                if node in self.nodes:
                    self.executor.submit(node, now, self.nodes[node].uid)
            await self._advance_held(maintenance, now)
            await self.executor.clear_orphan_taints(self.nodes.values(), now)
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
        held = self.executor.held()
        if not held or leader_guard(self._facts(now), self.profile.fence_after) is not None:
            return
        verdicts = {v.node: v for v in self.verdicts}
        for node in sorted(held):
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

    async def _report(self, decision: PolicyDecision, now: float) -> None:
        blind: str | None = None
        judged = False  # whether `blind` was asked: at the first change, before any await
        for v in self.verdicts:
            before = self._reported.get(v.node)
            current = v.health
            if v.node in decision.fence:
                current = NodeHealth.DEAD
            elif v.health is NodeHealth.DEAD:
                current = NodeHealth.SUSPECT  # DEAD but held: not declared
            if before == current:
                continue
            if not judged:
                judged = True
                blind = leader_guard(self._facts(now), self.profile.fence_after)
            if blind:
                break  # a blind leader reports no node's state
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
        # An alert that cleared may fire again later.
        if decision.alerts:
            self._alerted &= {(a.kind.value, a.node) for a in decision.alerts}
        else:
            self._alerted.clear()
