"""Leader side: hear every heartbeat, watch kubelets, ask peers, judge, decide, report.

Thin I/O around the pure `nodefence.agent.detection.detector` and
`nodefence.agent.detection.policy`, over one `nodefence.agent.leader.ingest_loop.Listener` (sessions
to every broker, the detector and what was heard). A warm standby hands over its running Listener,
history included; a cold leader starts its own. Then:
- the listener delivers heartbeats and statuses to the ingest (stamped on receipt with the
  leader's monotonic clock; malformed, refused and replayed ones counted and dropped, copies
  from the other brokers dropped quietly) and probe results here; while no broker is reachable
  (and for `fence_after` after one is again) the policy declares nobody dead;
- kube caches (`nodefence.agent.kube.cache_watch`): Nodes and kubelet Leases listed once, then
  watched; each change is folded in as it arrives, noting on our clock when a renewTime changed;
- judge loop: evaluates, asks peers to probe suspects, applies the policy, and reports each
  new decision once (log + Kubernetes Event + the `on_dead` callback), and publishes the
  leader's view (retained) for `nodefence status`.
With an inventory, the fence executor's reconcile loop and the BMC checks
(`nodefence.agent.leader.bmc_monitor_loop`, whose transitions become Node Events and alerts, and
whose verdicts the view shows) run beside them; `decision_evidence` is what the fence certificate
keeps of a decision.

The halves live apart: what the leader knows (`nodefence.agent.leader.state_client`), the judge loop
(`nodefence.agent.leader.judge_loop`), peer probes (`nodefence.agent.leader.probe_client`), the
status view (`nodefence.agent.leader.view_client`); this module runs them and answers the executor
and the BMC checks.
"""

from __future__ import annotations

import asyncio
import logging

from nodefence.agent.detection.profiles import NoPeers, Signal
from nodefence.agent.fencing.evidence import stamp
from nodefence.agent.leader.bmc_health import Transition
from nodefence.agent.leader.judge_loop import LeaderJudge
from nodefence.agent.leader.state_client import raise_if_cancelling
from nodefence.agent.node.watchdog_rules import SelfFenceFacts, self_fence_verdict
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.leader")

__all__ = ["LeaderSide"]


class LeaderSide(LeaderJudge):
    """Runs while this process holds the Lease; cancelled the moment it does not.

    `listener`: a running Listener handed over by a warm standby (this side never stops it);
    without one the side listens itself, over `broker` (one edge, e.g. a simulation's) or over
    every broker of `cfg`, with `keyring` (the fencer key and the pinned node keys). Probe
    requests are signed for each peer asked (`nodefence.agent.probes.signing`). `name_standbys` gets
    the nodes the other fencers announced themselves on
    (`nodefence.agent.leader.fencer_presence_client`) every round, to name the warm standbys on the
    Lease (`nodefence.agent.leader.standby_loop`). `paused` says whether fencing is paused
    cluster-wide (`nodefence.agent.fencing.pause`, read with the Lease); `inventory_problem` why the
    newest inventory file was rejected ("" when it was not).
    """

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
        raise_if_cancelling()

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
        """May `node` be taken as reset by its watchdog now? (see
        `nodefence.agent.node.watchdog_rules`)"""
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
        decision (`nodefence.agent.fencing.evidence`): verdict, last heartbeat, kubelet, peer
        reports."""
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
