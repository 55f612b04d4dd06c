"""The leader's status view: what `nodefence status` shows, published retained on the broker.

`ViewPublisher` builds the view (`nodefence.agent.leader.view_codec.view_json`: nodes, alerts, BMC
verdicts, fencing operations with the ColdStandby VMs still on nodes not proven off) at most
once per `view_period` and publishes it on `view_topic`.
"""

from __future__ import annotations

import contextlib
import logging

from nodefence.agent import __version__
from nodefence.agent.detection.detector import NodeHealth
from nodefence.agent.detection.policy import PolicyDecision
from nodefence.agent.fencing.evidence import stamp
from nodefence.agent.fencing.operation import RESTART_POLICIES
from nodefence.agent.fencing.pause import Pause
from nodefence.agent.kube.client import ClusterError
from nodefence.agent.leader.state_client import LeaderState
from nodefence.agent.leader.status_view import operation_entry
from nodefence.agent.leader.view_codec import (
    Alert,
    InventoryState,
    OperationEntry,
    PauseState,
    encode_json,
    operation_json,
    row_json,
    view_json,
    view_topic,
)
from nodefence.agent.mqtt.leader_broker_client import BrokerLost

log = logging.getLogger("nodefence.leader")


class ViewPublisher(LeaderState):
    """Builds and publishes the status view."""

    def _bmc_alerts(self) -> list[Alert]:
        """The BMC alerts that hold now, as the view lists alerts."""
        if self.bmc is None:
            return []
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
        return out

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
        if now - self._view_at < self.view_period or not self._broker_up:
            return
        self._view_at = now
        inventory = self.inventory() if self.inventory is not None else None
        dead = {v.node for v in self.verdicts if v.health is NodeHealth.DEAD}
        nodes, held, seen = self.nodes, decision.held, self.kubelet_seen
        versions, bmc = self.ingest.versions, self.bmc
        rows = []
        for v in self.verdicts:
            node = v.node
            info = nodes.get(node)
            age, kubelet_age = v.since_last_heartbeat, v.kubelet_age
            rows.append(
                row_json(
                    node,
                    v.health.value,
                    None if age is None else round(age, 2),
                    None if kubelet_age is None else round(kubelet_age, 2),
                    node in seen,
                    info.ready if info is not None else None,
                    v.reason,
                    held.get(node, ""),
                    info.maintenance_mark if info is not None else "",
                    bool(info and info.unschedulable),
                    None if inventory is None else node in inventory,
                    versions.get(node),
                    None if bmc is None else bmc.node_view(node),
                )
            )
        problem = self.inventory_problem() if self.inventory_problem is not None else ""
        doc = view_json(
            leader=self.identity,
            version=__version__,
            profile=self.cfg.profile,
            period=self.view_period,
            frozen=decision.frozen,
            paused=None if pause is None else PauseState(pause.reason, pause.by, pause.since),
            alerts=[Alert(a.kind.value, a.node, a.message) for a in decision.alerts]
            + self._bmc_alerts(),
            rejected=dict(self.stats.rejected),  # as it is now, not after the await below
            nodes=rows,
            operations=[operation_json(op) for op in await self._operations_view(dead, now)],
            inventory=None if inventory is None else InventoryState(len(inventory), problem),
            published_at=self.wall(),
        )
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(view_topic(self.cfg.cluster), encode_json(doc), retain=True)
