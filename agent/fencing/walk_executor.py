"""The power walks of a `FenceExecutor`: the guarded power-off
(`nodefence.agent.fencing.guard_client`), the power-on after a failed fence, the read-back that
voids a stale proof, the watchdog rule, and the wait while fencing is paused."""

from __future__ import annotations

import logging
import re

from nodefence.agent.config.inventory_file import NodeInventory
from nodefence.agent.fencing.base_executor import ExecutorBase
from nodefence.agent.fencing.events import Event, FenceDone, PoweredOn, PoweredOnAgain, SelfFenced
from nodefence.agent.fencing.guard_client import WalkGuard
from nodefence.agent.fencing.operation import Operation
from nodefence.agent.fencing.power_executor import PowerFencer, StopWalk
from nodefence.agent.fencing.stop import NOT_JUDGED, WALK_LEASE_LOST
from nodefence.agent.fencing.topology import PowerOutcome, PowerRequest
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.fencing")


def all_unreachable(node: NodeInventory, outcome: PowerOutcome) -> bool:
    """True when the walk tried every device of the node and none of them answered."""
    devices = {d.name for level in node.levels for d in level.devices}
    tried = {s.device for s in outcome.steps}
    return (
        bool(devices) and tried >= devices and all(s.result == "unreachable" for s in outcome.steps)
    )


class PowerWalks(ExecutorBase):
    """Power-off and power-on walks of one operation, and what decides whether one may run."""

    def _wait_for_resume(self, op: Operation) -> bool:
        """Whether `op`'s power walk must wait: fencing is paused (said once per pause)."""
        pause = self.paused()
        if pause is None:
            if op.node in self._waiting_for_resume:
                self._waiting_for_resume.discard(op.node)
                log.warning(
                    "fencing node=%s op=%s: resumed, the power walk goes on", op.node, op.id
                )
            return False
        if op.node not in self._waiting_for_resume:
            self._waiting_for_resume.add(op.node)
            log.warning(
                "fencing node=%s op=%s: fencing is %s; no power-off until `nodefence resume`",
                op.node,
                op.id,
                pause,
            )
        return True

    async def _proof_stale(self, op: Operation) -> PoweredOnAgain | None:
        """Before a cleanup step: does the machine run again since its Off was proven? Life
        seen since the proof (or since this leader took the operation over), or a device of
        the level that proved Off reading On now. A device that cannot be read proves
        nothing either way (a watchdog proof has no BMC to ask). Once its VMs were let go
        (pods released, Node deleted) there is nothing left to protect: they died with the Off."""
        if op.vms_let_go:
            return None
        since = op.proven_at if op.proven_at is not None else self.store.marked_at.get(op.node)
        if since is not None:
            evidence = self.alive_since(op.node, since, certain=True)
            if evidence:
                return PoweredOnAgain(evidence)
        inventory = self.inventory()
        node_inv = inventory.nodes.get(op.node) if inventory else None
        if inventory is None or node_inv is None or op.level is None:
            return None
        if not 1 <= op.level <= len(node_inv.levels):
            return None
        proved = NodeInventory(node_inv.name, (node_inv.levels[op.level - 1],))
        outcome = await PowerFencer(
            proved, inventory.policy, factory=self.backend_factory, clock=self.clock
        ).run(PowerRequest.STATUS)
        on = sorted({s.device for s in outcome.steps if s.result == "on"})
        if on:
            return PoweredOnAgain(f"{', '.join(on)} read On again")
        return None

    def _self_fenced(self, op: Operation) -> SelfFenced | None:
        """A `SelfFenced` event when the watchdog rule holds for `op` now (see the module doc)."""
        marked = self.store.marked_at.get(op.node)
        decided = self._decided.get(op.node)
        if self.self_fence is None or marked is None or decided is None or not op.power_off_sent:
            return None
        ok, why = self.self_fence(op.node, marked, decided, self._unreachable.get(op.node, False))
        if ok:
            log.warning("fencing %s: %s", op.node, why)
            return SelfFenced(why)
        kind = re.split(r"\d", why, maxsplit=1)[0]  # log each reason once, not each countdown
        if self._self_fence_note.get(op.node) != kind:
            self._self_fence_note[op.node] = kind
            log.info("fencing %s: not (yet) taken as self-fenced: %s", op.node, why)
        return None

    async def _power_off(self, op: Operation) -> Event | None:
        inventory = self.inventory()
        node_inv = inventory.nodes.get(op.node) if inventory else None
        if inventory is None or node_inv is None:
            return FenceDone(False, errors=(f"node {op.node} has no BMC inventory entry",))
        decided_at = self._decided.get(op.node)
        if decided_at is None and not op.power_off_sent:
            raise StopWalk(NOT_JUDGED)  # held: see resume
        guard = WalkGuard(
            op,
            decided_at,
            confirm_leader=self.confirm_leader,
            alive_since=self.alive_since,
            in_maintenance=self.in_maintenance,
            store=self.store,
            api=self.api,
            clock=self.clock,
            timing=self.timing,
            read_kubelet=self.read_kubelet,
            on_confirmed=lambda step: self._lease_confirmed(op, step),
            on_stored=lambda sent: self.evidence.step(
                op.node,
                op.id,
                "phase",
                phase=sent.phase.value,
                reason="PowerOffSending stored: the point of no return, the request goes next",
            ),
            paused=self.paused,
        )
        self.stats.power_walks += 1
        fencer = PowerFencer(
            node_inv,
            inventory.policy,
            guard=guard,
            last_look=guard.last_look,
            factory=self.backend_factory,
            clock=self.clock,
            on_step=lambda s: self.evidence.power_step(op.node, op.id, node_inv, s),
        )
        outcome = await fencer.run(PowerRequest.OFF)
        if guard.stopped_by_pause:
            return None  # nothing more sent or stored: the next round waits for the resume
        self.evidence.step(
            op.node,
            op.id,
            "walk",
            offProven=outcome.off_proven,
            level=outcome.level,
            elapsedSeconds=round(outcome.elapsed, 3),
            errors=list(outcome.errors[-5:]) or None,
        )
        self._unreachable[op.node] = all_unreachable(node_inv, outcome)
        stopped = guard.stopped is not None or guard.lost_lease
        if not stopped:
            metrics.FENCE.labels("proven" if outcome.off_proven else "failed").observe(
                outcome.elapsed
            )
            if not outcome.off_proven:
                metrics.FENCE_FAILURES.inc()
        self.operations[op.node] = guard.op
        if guard.lost_lease:
            raise StopWalk(WALK_LEASE_LOST)
        if guard.stopped is not None:
            return guard.stopped
        return FenceDone(outcome.off_proven, outcome.level, tuple(outcome.errors))

    async def _power_on(self, op: Operation) -> Event:
        inventory = self.inventory()
        node_inv = inventory.nodes.get(op.node) if inventory else None
        if inventory is None or node_inv is None:
            return PoweredOn(False, f"node {op.node} has no BMC inventory entry")
        outcome = await PowerFencer(
            node_inv,
            inventory.policy,
            factory=self.backend_factory,
            clock=self.clock,
            on_step=lambda s: self.evidence.power_step(op.node, op.id, node_inv, s),
        ).run(PowerRequest.ON)
        if not outcome.success:
            log.error("powering %s back on after the fence failed: %s", op.node, outcome.reason)
            return PoweredOn(False, "; ".join(outcome.errors) or "power-on not confirmed")
        return PoweredOn(True)
