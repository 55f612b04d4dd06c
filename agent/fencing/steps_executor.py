"""The loop that drives one fencing operation of a `FenceExecutor` to a final phase: ask
the pure machine (`nodefence.agent.fencing.machine.next_action`), do that one step, fold the result
in, store the record before going on."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nodefence.agent.fencing.events import Event, NodeDeleted, Tainted, Untainted
from nodefence.agent.fencing.machine import apply, next_action
from nodefence.agent.fencing.operation import FINAL, Action, Operation, Phase
from nodefence.agent.fencing.power_executor import StopWalk
from nodefence.agent.fencing.release_executor import (
    node_returned,
    release_attachments,
    release_pods,
)
from nodefence.agent.fencing.store_client import Superseded
from nodefence.agent.fencing.vms_client import snapshot_vms, vms_seen
from nodefence.agent.fencing.walk_executor import PowerWalks
from nodefence.agent.kube.client import ClusterError
from nodefence.agent.observe import metrics

log = logging.getLogger("nodefence.fencing")


class FenceSteps(PowerWalks):
    """Launch, run and stop operations (see `FenceExecutor`)."""

    async def stop(self) -> None:
        """Cancel every running operation (leadership lost); records stay for a successor."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for phase in Phase:
            if phase not in FINAL:  # the next leader exports the operations it runs
                metrics.OPERATIONS_OPEN.labels(phase.value).set(0)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait_idle(self) -> None:
        """Wait until no operation runs (tests)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _launch(self, op: Operation) -> None:
        self.operations[op.node] = op
        self.stats.started += 1
        self._tasks[op.node] = asyncio.create_task(self._run(op), name=f"fence-{op.node}")

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self, op: Operation) -> None:
        """Drive `op` to a final phase. Every change is stored before the next action, so no
        step (a taint, a deletion) ever goes out before the state that allows it is in the
        record: a successor, or an operator, always sees at least what was done."""
        node = op.node
        stored: Operation | None = None if not self.store.has(node) else op  # last saved
        dirty = stored is None
        try:
            while True:
                if dirty:
                    if not self.store.has(node):
                        # A new record tells its node it is being fenced (its watchdog stops
                        # feeding): only the holder of the Lease may write one.
                        await self._leader_or_stop(op, "record")
                    try:
                        await self.store.save(op, required=True)
                    except ClusterError as err:
                        log.error("fencing %s: cannot store the record: %s", node, err)
                        await asyncio.sleep(self.check_interval)
                        continue
                    dirty = False
                    if stored is None:
                        await self.reports.event(
                            op, "FenceStarted", f"fencing started: {node} declared dead", True
                        )
                    else:
                        if op.phase is not stored.phase:
                            await self.reports.phase_changed(op)
                        await self.reports.release_events(op, stored)
                    await self.reports.vm_events(op, stored.vms if stored else None)
                    stored = op
                if op.final:
                    break
                action = next_action(op, self.clock())
                try:
                    event = await self._do(action, op)
                except ClusterError as err:
                    # The API is flaky or down: retry the same step; nothing irreversible
                    # is repeated without the leader check before it.
                    log.error("fencing %s: %s failed: %s", node, action.value, err)
                    await asyncio.sleep(self.check_interval)
                    continue
                walked = self.operations[node]  # the power walk may have advanced it
                if walked is not op and walked != op:  # (the same object: equal, no compare)
                    op = stored = walked  # stored by the walk's guard
                if event is None:
                    continue
                after = apply(op, event, self.clock(), self.timing)
                if after is not op and after != op:  # apply returns `op` when nothing changes
                    if after.phase is not op.phase:
                        self.evidence.step(
                            node, after.id, "phase", phase=after.phase.value, reason=after.reason
                        )
                    op, dirty = after, True
                    self.operations[node] = op
                    self._export_phases()
            self.stats.finished[op.phase.value] = self.stats.finished.get(op.phase.value, 0) + 1
            self._finished.append((self.wall(), op))
            metrics.OPERATIONS.labels(op.phase.value).inc()
            if op.phase is Phase.RECOVERED and op.recovery_start is not None:
                metrics.RECOVERY.observe(self.clock() - op.recovery_start)
        except Superseded:
            log.warning(
                "fencing record of %s was updated by another writer; stepping back and"
                " reading it again",
                node,
            )
            # The stored record is the truth now: forget this copy, so that the next pick-up
            # (`resume`) adopts the record as it is, under the same hold rules.
            if self.operations.get(node) is op or self.operations.get(node) == op:
                self.operations.pop(node, None)
            self.store.forget(node)
        except StopWalk as stop:
            log.warning("fencing of %s stopped: %s", node, stop)

    async def _do(self, action: Action, op: Operation) -> Event | None:
        if action is Action.POWER_OFF:
            if self._wait_for_resume(op):
                await asyncio.sleep(self.check_interval)
                return None
            # A bounded number of power walks at once; an operation waiting to retry holds no
            # slot, so one unfenceable node never starves the others.
            async with self._slots:
                return await self._power_off(op)
        if action is Action.WAIT_RETRY:
            assert op.retry_at is not None
            proven = self._self_fenced(op)
            if proven is not None:
                await self._leader_or_stop(op, "self-fence-proof")
                self.evidence.step(op.node, op.id, "watchdog-proof", detail=proven.evidence)
                return proven
            await asyncio.sleep(max(0.0, min(op.retry_at - self.clock(), 1.0)))
            return None
        if action is Action.SNAPSHOT_VMS:
            return await self._snapshot(op)
        if action is Action.TAINT:
            again = await self._proof_stale(op)
            if again is not None:
                return again
            await self._leader_or_stop(op, "taint")
            await self.api.taint_out_of_service(op.node, op.node_uid or None, op.id)
            self.evidence.step(op.node, op.id, "tainted", nodeUID=op.node_uid)
            return Tainted()
        if action is Action.RELEASE_PODS:
            # Releasing its pods lets its VMs start elsewhere: the last moment a stale proof
            # (the machine running again) can still be caught.
            again = await self._proof_stale(op)
            if again is not None:
                await self._untaint_if_voided(apply(op, again, self.clock(), self.timing))
                return again
            await self._leader_or_stop(op, "release-pods")
            return await release_pods(self.api, op)
        if action is Action.RELEASE_ATTACHMENTS:
            if op.node in self._released_once:  # pace the re-checks, look at once the first time
                await asyncio.sleep(self.check_interval)
            self._released_once.add(op.node)
            await self._leader_or_stop(op, "release-attachments")
            return await release_attachments(self.api, op)
        if action is Action.AWAIT_RETURN:
            back = await node_returned(self.api, op, self.last_heartbeat, self.clock())
            if not back.back:
                await asyncio.sleep(self.check_interval)
            return back
        if action is Action.UNTAINT:
            await self._leader_or_stop(op, "untaint")
            await self.api.remove_out_of_service(op.node, op.node_uid or None)
            log.warning("node %s is back: out-of-service taint removed", op.node)
            return Untainted()
        if action is Action.DELETE_NODE:
            again = await self._proof_stale(op)
            if again is not None:
                await self._untaint_if_voided(apply(op, again, self.clock(), self.timing))
                return again
            await self._leader_or_stop(op, "delete-node")
            await self.api.delete_node(op.node, op.node_uid or None)
            self.evidence.step(op.node, op.id, "node-deleted", nodeUID=op.node_uid)
            log.warning("node %s deleted after a proven power-off", op.node)
            return NodeDeleted()
        if action is Action.POWER_ON:
            # Only now: the deletion is stored, so no successor can act on the old Node.
            await self._leader_or_stop(op, "power-on")
            return await self._power_on(op)
        if action is Action.CHECK_VMS:
            if op.node in self._checked:  # pace the checks, but look at once the first time
                await asyncio.sleep(self.check_interval)
            self._checked.add(op.node)
            return await vms_seen(op, self.virt)
        return None

    async def _snapshot(self, op: Operation) -> Event:
        snap = await snapshot_vms(self.api, op, self.virt)
        if snap.capacity_warning:
            await self.reports.event(op, "FenceNoRoomForVMs", snap.capacity_warning, True)
        return snap
