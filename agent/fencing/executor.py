"""Drives the pure fencing state machine (`nodefence.agent.fencing.machine`) for each dead node.

Thin on purpose: it asks `next_action`, does exactly that one thing (power walk through the
BMC topology, VM snapshot, taint, release of pods and VolumeAttachments
(`nodefence.agent.fencing.release_executor`), delete, power-on after a reboot, VM check, the node's
return and untaint), folds the result in with `apply`, and stores the record
(`nodefence.agent.fencing.store_client`) before going on. Before every irreversible step it renews
the leader Lease (`confirm_leader`); the first power-off request of an operation passes
`nodefence.agent.fencing.guard_client` (the point of no return stored, the Node read fresh, life
since this leader's decision looked for). A record another writer changed makes it step back; the
reconcile loop picks up, on the leader's own schedule, every operation that stopped.

The executor is four small modules: this one, the entry points the leader calls (`submit`,
`cancel_held`, `go_on`, `resume`, `reconcile_loop`); `nodefence.agent.fencing.steps_executor`, the
loop that drives one operation; `nodefence.agent.fencing.walk_executor`, the power walks;
`nodefence.agent.fencing.base_executor`, the state and the checks they share. A stop carries a typed
reason (`nodefence.agent.fencing.stop`).

Operations a new leader inherits (`resume`) go on at once only when their Off is proven; the
others are held until this leader's own verdict: `submit` (dead) or `cancel_held` (alive).

While fencing is paused cluster-wide (`paused`, `nodefence.agent.fencing.pause`) no power walk
starts, and a walk under way sends no further power-off request once the pause is read (with the
Lease renewal before each request, also past the point of no return): an operation whose Off is not
proven waits (its phase unchanged) until the pause ends; one whose Off is proven goes on with
its cleanup (the node is off: releasing it lets its VMs run).

With `self_fence` set, an operation whose last power walk found every BMC device of the node
unreachable asks, while it waits to retry, whether the node's watchdog deadline has provably
passed (`nodefence.agent.node.watchdog_rules.self_fence_verdict`, evaluated by the leader); the
clock starts when this leader stored (or took over) the node's record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from nodefence.agent.fencing.base_executor import (
    AliveSince,
    ConfirmLeader,
    DecisionFacts,
    ExecutorStats,
    LeaseGeneration,
    SelfFenceCheck,
)
from nodefence.agent.fencing.events import Cancelled, Event, PoweredOnAgain
from nodefence.agent.fencing.machine import apply
from nodefence.agent.fencing.operation import Operation, Phase
from nodefence.agent.fencing.records import from_record, resumed
from nodefence.agent.fencing.steps_executor import FenceSteps
from nodefence.agent.fencing.stop import StopReason
from nodefence.agent.fencing.store_client import Superseded
from nodefence.agent.fencing.walk_executor import all_unreachable
from nodefence.agent.kube.client import ClusterError, NodeInfo

log = logging.getLogger("nodefence.fencing")

__all__ = [
    "AliveSince",
    "ConfirmLeader",
    "DecisionFacts",
    "ExecutorStats",
    "FenceExecutor",
    "LeaseGeneration",
    "SelfFenceCheck",
    "all_unreachable",
]


class FenceExecutor(FenceSteps):
    """Runs fencing operations, at most `max_parallel` power walks at once."""

    def submit(self, node: str, decided_at: float, uid: str = "") -> None:
        """This leader declared `node` (the Node object `uid`) dead at `decided_at` (its
        clock): fence it unless an operation for it already runs here. An unfinished recorded
        operation of the node (resumed and held, or one this leader had to stop) is continued,
        not duplicated. A node already fenced and deleted is not fenced again unless the
        verdict is about a newer Node object (it rejoined and died again)."""
        if self.busy(node):
            return
        last = self.operations.get(node)
        if last is not None and last.final:
            if last.node_deleted and (not uid or uid == last.node_uid):
                return  # already fenced and removed; a stale verdict must not fence it twice
            self.forget(node, force=True)
            last = None
        self._decided[node] = decided_at
        self.evidence.decided(node, self.decision_facts(node) if self.decision_facts else None)
        if last is not None and not last.final:
            self._held.discard(node)
            if uid and not last.off_proven and last.node_uid != uid:
                # Decided about the Node object that exists now (it re-registered).
                last = replace(last, node_uid=uid)
                self.operations[node] = last
            self._launch(last)
            return
        self._tasks[node] = asyncio.create_task(
            self._adopt_or_start(node, uid), name=f"fence-{node}"
        )

    async def cancel_held(self, node: str, reason: StopReason) -> None:
        """A held operation's node is alive by this leader's own evidence (or in maintenance,
        or gone): abort it. One whose Off was proven before ends as powered on again (its
        taint, if any, removed): never delete the Node of a machine that runs again."""
        op = self.operations.get(node)
        if node not in self._held or op is None or op.final or self.busy(node):
            return
        try:
            await self.confirm_leader()  # a stale leader must not end another leader's work
        except Exception as err:
            log.warning("not ending the held operation of %s: %s", node, err)
            return
        why = reason.text  # stored in the record as the operation's reason
        event: Event = PoweredOnAgain(why) if op.off_proven else Cancelled(why)
        ended = apply(op, event, self.clock(), self.timing)
        if not ended.final:
            return  # past the point where it could be ended (its VMs were let go): goes on
        self._held.discard(node)
        op = ended
        self.operations[node] = op
        log.warning("fencing node=%s op=%s: %s", node, op.id, reason)
        try:
            await self.store.save(op)
        except Superseded:
            return
        await self._untaint_if_voided(op)
        await self.reports.phase_changed(op)

    def go_on(self, node: str) -> None:
        """Launch a held operation whose Off is proven: this leader, past its first window,
        sees no life of the node (cleanup checks the proof once more before each step)."""
        op = self.operations.get(node)
        if node in self._held and op is not None and op.off_proven and not self.busy(node):
            self._held.discard(node)
            log.warning("resuming the fencing of %s from phase %s", node, op.phase.value)
            self._launch(op)

    def forget(self, node: str, *, force: bool = False) -> None:
        """Drop a finished operation of a Node that is gone (it may rejoin and fail again)."""
        op = self.operations.get(node)
        if op is not None and (op.final or force) and not self.busy(node):
            self.operations.pop(node, None)
            self.store.forget(node)
            self._unreachable.pop(node, None)
            self._decided.pop(node, None)
            self._held.discard(node)
            self.evidence.forget(node)
            self._released_once.discard(node)

    async def _adopt_or_start(self, node: str, uid: str) -> None:
        record: dict[str, Any] | None = None
        try:
            for rec in await self.api.list_records(self.namespace, node):
                if (rec.get("spec") or {}).get("nodeName") == node and not from_record(rec).final:
                    record = rec
                    break
        except (ClusterError, KeyError, ValueError) as err:
            log.error("cannot look for an unfinished operation of %s: %s", node, err)
            return  # retried at the next judging round
        if record is not None:
            try:
                # Another leader's work: a leader that woke up stale must not carry it on (its
                # next steps may need no API call, so its elector may not have noticed yet).
                await self.confirm_leader()
            except Exception as err:
                log.warning("not taking over the operation of %s: %s", node, err)
                return  # retried at the next judging round, if still leading
            op = self._from_record(record)
            if uid and not op.off_proven and op.node_uid != uid:
                op = replace(op, node_uid=uid)
            if op.last_heartbeat is None:
                op = replace(op, last_heartbeat=self.last_heartbeat(node))
            log.warning("resuming the fencing of %s from phase %s", node, op.phase.value)
        else:
            op = Operation(node=node, id=self.new_id(), node_uid=uid)
            reboot = self.after_proof == "reboot"
            op = replace(op, reboot=reboot, cleanup=self.cleanup, release=self.release)
            op = replace(op, last_heartbeat=self.last_heartbeat(node))
            self.store.forget(node)  # marked when its record is first stored
        self.operations[node] = op
        self.stats.started += 1
        await self._run(op)

    def _from_record(self, record: dict[str, Any]) -> Operation:
        """The operation a record holds, deadlines rebuilt, remembered as taken over now."""
        op = resumed(from_record(record), record, self.clock(), self.wall(), self.timing)
        self.store.adopt(op.node, record, self.clock())  # the record exists: the node sees it
        self.evidence.adopt(op.node, op.id, record)
        return op

    async def resume(self) -> int:
        """Take over every unfinished operation recorded in the cluster; returns how many.

        An operation whose Node is already deleted goes on at once (only its VMs are left to
        judge). Any other is held until this leader, past its own first window, has judged the
        node: one that sent no power-off, or sent one without proof, goes on when this leader
        declares the node dead (`submit`), even when the previous leader stored
        PowerOffSending (this leader cannot know whether that request went out, and it never
        powers off a node it has not judged itself); one whose Off is proven goes on unless the
        node shows life (`go_on`); any of them is aborted when the node is alive
        (`cancel_held`)."""
        try:
            records = await self.reads.list_records(self.namespace)
        except ClusterError as err:
            log.error("cannot list fencing records to resume: %s", err)
            return 0
        taken = 0
        confirmed = False
        aborted: dict[str, Operation] = {}
        for rec in records:
            try:
                op = from_record(rec)
            except (KeyError, ValueError) as err:
                log.error(
                    "unreadable fencing record %s: %s", (rec.get("metadata") or {}).get("name"), err
                )
                continue
            if op.phase is Phase.ABORTED:
                aborted[op.id] = op
            if op.final or self.busy(op.node):
                continue
            mine = self.operations.get(op.node)
            if mine is not None and mine.id != op.id and not mine.final:
                continue  # the node's newest operation here wins; the other is an old one
            op = self._from_record(rec)
            self.operations[op.node] = op
            taken += 1
            if op.node_deleted or op.node in self._decided:
                if not confirmed:
                    # Records read from the caches cost no request, so a leader that woke up
                    # stale could carry on another leader's work before its elector noticed.
                    try:
                        await self.confirm_leader()
                    except Exception as err:
                        log.warning("not taking over the operation of %s: %s", op.node, err)
                        self.operations.pop(op.node, None)
                        return taken - 1
                    confirmed = True
                log.warning("resuming the fencing of %s from phase %s", op.node, op.phase.value)
                self._launch(op)
            elif op.node not in self._held:
                self._held.add(op.node)
                log.warning(
                    "holding the fencing of %s (phase %s) until this leader judges the node",
                    op.node,
                    op.phase.value,
                )
        self._aborted = aborted
        return taken

    async def clear_orphan_taints(self, nodes: Iterable[NodeInfo], now: float) -> None:
        """Take off every out-of-service taint that names an aborted operation (its proof
        turned stale, or a stale leader's taint landed after the abort): a node kept out of
        service as fenced is never judged again until it returns, so an orphan taint would
        keep a dead node unfenced forever. Paced per operation."""
        for info in nodes:
            op = self._aborted.get(info.fenced_by) if info.out_of_service else None
            if op is None or op.node != info.name or self.busy(info.name):
                continue
            if now - self._orphan_tried.get(op.id, -1e9) < self.reconcile_interval:
                continue
            self._orphan_tried[op.id] = now
            await self._clear_orphan_taint(op)

    async def reconcile_loop(self) -> None:
        """Pick up, on the leader's own schedule, every unfinished operation that stopped here
        (a transient Lease-check failure, a record another writer touched, an API error) or
        that sits in the API: none waits for a per-round fence decision that may never come
        (the Node is gone, decisions are frozen)."""
        while True:
            await asyncio.sleep(self.reconcile_interval)
            await self.resume()
            for node, op in list(self.operations.items()):
                if op.final or self.busy(node) or node in self._held or self.store.has(node):
                    continue  # stored ones are picked up from the API by `resume`
                if node in self._decided:
                    self._launch(op)
