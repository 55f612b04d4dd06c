"""Drives the pure fencing state machine (`agent.fencing`) for each dead node.

Thin on purpose: it asks `next_action`, does exactly that one thing (power walk through the
BMC topology, VM snapshot, taint, release of pods and VolumeAttachments (`agent.fence_release`),
delete, power-on after a reboot, VM check, the node's return and untaint), folds the result in
with `apply`, and stores the record (`agent.fence_store`) before going on. Before every
irreversible step it renews the leader Lease (`confirm_leader`); the first power-off request
of an operation passes `agent.fence_guard` (the point of no return stored, the Node read fresh,
life since this leader's decision looked for). A record another writer changed makes it step
back; the reconcile loop picks up, on the leader's own schedule, every operation that stopped.

Operations a new leader inherits (`resume`) go on at once only when their Off is proven; the
others are held until this leader's own verdict: `submit` (dead) or `cancel_held` (alive).

While fencing is paused cluster-wide (`paused`, `agent.pause`) no power walk starts, and a
walk under way sends no further power-off request once the pause is read (with the Lease
renewal before each request, also past the point of no return): an operation whose Off is not
proven waits (its phase unchanged) until the pause ends; one whose Off is proven goes on with
its cleanup (the node is off: releasing it lets its VMs run).

With `self_fence` set, an operation whose last power walk found every BMC device of the node
unreachable asks, while it waits to retry, whether the node's watchdog deadline has provably
passed (`agent.watchdog.self_fence_verdict`, evaluated by the leader); the clock starts when
this leader stored (or took over) the node's record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from agent import metrics
from agent.cluster import ClusterApi, ClusterError, NodeInfo
from agent.fence_evidence import EvidenceBook
from agent.fence_guard import WalkGuard
from agent.fence_release import node_returned, release_attachments, release_pods
from agent.fence_reports import FenceReporter
from agent.fence_store import RecordStore, Superseded
from agent.fence_vms import snapshot_vms, vms_seen
from agent.fencing import Timing, apply, next_action
from agent.fencing_events import (
    Cancelled,
    Event,
    FenceDone,
    NodeDeleted,
    PoweredOn,
    PoweredOnAgain,
    SelfFenced,
    Tainted,
    Untainted,
)
from agent.fencing_operation import FINAL, Action, Cleanup, Operation, Phase
from agent.inventory import Inventory, NodeInventory
from agent.kube_cache import ClusterReads
from agent.power import BackendFactory, PowerFencer, StopWalk
from agent.records import from_record, resumed
from agent.topology import Action as PowerAction
from agent.topology import Outcome
from agent.virt import VirtLayer
from backends.registry import build_backend

log = logging.getLogger("nodefence.fencing")

ConfirmLeader = Callable[[], Awaitable[None]]


class AliveSince(Protocol):
    """Evidence of life of `node` after `since` (see `LeaderSide.alive_since`)."""

    def __call__(self, node: str, since: float, *, certain: bool = False) -> str | None:
        """See `LeaderSide.alive_since`."""
        ...


# node, marked_at, decided_at, unreachable -> (proven, why)
SelfFenceCheck = Callable[[str, float, float, bool], tuple[bool, str]]
# node -> what the leader knew when it declared the node dead (agent.fence_evidence)
DecisionFacts = Callable[[str], dict[str, Any] | None]
LeaseGeneration = Callable[[], dict[str, object] | None]


def all_unreachable(node: NodeInventory, outcome: Outcome) -> bool:
    """True when the walk tried every device of the node and none of them answered."""
    devices = {d.name for level in node.levels for d in level.devices}
    tried = {s.device for s in outcome.steps}
    return (
        bool(devices) and tried >= devices and all(s.result == "unreachable" for s in outcome.steps)
    )


@dataclass
class ExecutorStats:
    """What the executor did, for status, metrics and tests."""

    started: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # final phase -> count
    power_walks: int = 0


class FenceExecutor:
    """Runs fencing operations, at most `max_parallel` power walks at once."""

    def __init__(
        self,
        api: ClusterApi,
        namespace: str,
        leader_id: str,
        *,
        inventory: Callable[[], Inventory | None],
        confirm_leader: ConfirmLeader,
        alive_since: AliveSince,
        in_maintenance: Callable[[str], bool],
        timing: Timing | None = None,
        max_parallel: int = 2,
        after_proof: Literal["off", "reboot"] = "off",
        check_interval: float = 0.25,
        reconcile_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        self_fence: SelfFenceCheck | None = None,
        backend_factory: BackendFactory = build_backend,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:8],
        decision_facts: DecisionFacts | None = None,
        lease_generation: LeaseGeneration | None = None,
        cleanup: Cleanup = Cleanup.DELETE,
        release: bool = True,
        last_heartbeat: Callable[[str], float | None] = lambda node: None,
        virt: VirtLayer | None = None,
        paused: Callable[[], str | None] = lambda: None,
        reads: ClusterReads | None = None,
        record_saved: Callable[[dict[str, Any]], None] | None = None,
        read_kubelet: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.api = api
        # The VM APIs whose VMs are snapshotted and verified (default: Deckhouse's only).
        self.virt = virt or VirtLayer(api)
        # Where resume reads (the leader's caches, else the API server); `record_saved` writes
        # each stored record through to them.
        self.reads: ClusterReads = reads if reads is not None else api
        self.read_kubelet = read_kubelet  # the guard's fresh look at the kubelet Lease
        self.namespace = namespace
        self.leader_id = leader_id
        self.inventory = inventory
        self.confirm_leader = confirm_leader
        self.alive_since = alive_since
        self.in_maintenance = in_maintenance
        self.timing = timing or Timing()
        self.after_proof = after_proof
        self.cleanup = cleanup
        self.release = release
        self.last_heartbeat = last_heartbeat
        self.check_interval = check_interval
        self.reconcile_interval = reconcile_interval
        self.clock = clock
        self.wall = wall
        self.stats = ExecutorStats()
        self.operations: dict[str, Operation] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.store = RecordStore(api, namespace, leader_id, clock, wall, on_saved=record_saved)
        self.reports = FenceReporter(api)
        self._slots = asyncio.Semaphore(max_parallel)
        self._checked: set[str] = set()
        self._released_once: set[str] = set()  # nodes whose attachments were looked at
        self.self_fence = self_fence
        self.backend_factory = backend_factory
        self.new_id = new_id
        self._unreachable: dict[str, bool] = {}  # node -> last walk found no BMC answering
        self._self_fence_note: dict[str, str] = {}
        # node -> when THIS leader last declared it dead (its own evidence). Operations of
        # nodes not in here whose Off is not proven are held: see `resume`.
        self._decided: dict[str, float] = {}
        self._held: set[str] = set()
        # Aborted operations seen at the last listing (id -> operation), and when this
        # leader last tried to take an orphan taint of each off.
        self._aborted: dict[str, Operation] = {}
        self._orphan_tried: dict[str, float] = {}
        # The fence certificate of each operation, stored with its record.
        self.evidence = EvidenceBook(leader_id, wall)
        self.decision_facts = decision_facts
        self.lease_generation = lease_generation
        self.store.evidence = lambda op: self.evidence.to_json(op.node, op.id)
        self.paused = paused
        self._waiting_for_resume: set[str] = set()  # operations told they wait (logged once)
        # (wall time, operation) of the operations that ended here lately, for the status view.
        self._finished: collections.deque[tuple[float, Operation]] = collections.deque(maxlen=10)

    # -- entry points -------------------------------------------------------------------------

    def busy(self, node: str) -> bool:
        """True while an operation for `node` runs here."""
        task = self._tasks.get(node)
        return task is not None and not task.done()

    def recently_finished(
        self, wall_now: float, within: float = 900.0
    ) -> list[tuple[float, Operation]]:
        """The operations that ended here within `within` seconds, oldest first."""
        return [(at, op) for at, op in self._finished if wall_now - at <= within]

    def held(self) -> frozenset[str]:
        """Nodes whose resumed operation waits for this leader's own verdict."""
        return frozenset(self._held)

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

    async def cancel_held(self, node: str, reason: str) -> None:
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
        event: Event = PoweredOnAgain(reason) if op.off_proven else Cancelled(reason)
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
                if walked != op:
                    op = stored = walked  # stored by the walk's guard
                if event is None:
                    continue
                after = apply(op, event, self.clock(), self.timing)
                if after != op:
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
        ).run(PowerAction.STATUS)
        on = sorted({s.device for s in outcome.steps if s.result == "on"})
        if on:
            return PoweredOnAgain(f"{', '.join(on)} read On again")
        return None

    async def _clear_orphan_taint(self, op: Operation) -> None:
        """An aborted operation had tainted its node (its proof turned stale): the Node must not
        keep a taint naming it (a stale leader's taint can land after the abort, and a node
        marked as fenced and kept out of service is never fenced again until it returns)."""
        try:
            info = await self.api.get_node(op.node)
            if info is not None and info.out_of_service and info.fenced_by == op.id:
                await self.confirm_leader()  # a deposed leader leaves it to its successor
                log.warning(
                    "node %s: removing the out-of-service taint of aborted %s", op.node, op.id
                )
                await self.api.remove_out_of_service(op.node, info.uid)
        except Exception as err:  # an API error or the Lease lost: tried again next round
            log.warning("node %s: cannot clear the taint of aborted %s: %s", op.node, op.id, err)

    async def _untaint_if_voided(self, op: Operation) -> None:
        """A voided proof: take the out-of-service taint off the running node again."""
        if op.phase is not Phase.ABORTED or not (op.off_proven and op.tainted):
            return
        try:
            await self.confirm_leader()
        except Exception as err:  # the successor takes it off (`clear_orphan_taints`)
            log.warning("node %s: its taint is left to the next leader: %s", op.node, err)
            return
        try:
            await self.api.remove_out_of_service(op.node, op.node_uid or None)
        except ClusterError as err:
            log.error(
                "node %s runs again but its out-of-service taint could not be removed: %s;"
                " remove it by hand (kubectl taint node %s node.kubernetes.io/out-of-service-)",
                op.node,
                err,
                op.node,
            )

    def _export_phases(self) -> None:
        """`nodefence_fence_operations_open`: the unfinished operations here, by phase."""
        counts = {p: 0 for p in Phase if p not in FINAL}
        for op in self.operations.values():
            if not op.final:
                counts[op.phase] += 1
        for phase, count in counts.items():
            metrics.OPERATIONS_OPEN.labels(phase.value).set(count)

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

    async def _leader_or_stop(self, op: Operation, step: str) -> None:
        """Renew the Lease before the irreversible `step` of `op` (noted in its evidence)."""
        try:
            await self.confirm_leader()
        except Exception as err:
            raise StopWalk(f"not the leader any more: {err}") from None
        self._lease_confirmed(op, step)

    def _lease_confirmed(self, op: Operation, step: str) -> None:
        lease = self.lease_generation() if self.lease_generation is not None else None
        self.evidence.lease(op.node, op.id, step, lease)

    async def _power_off(self, op: Operation) -> Event | None:
        inventory = self.inventory()
        node_inv = inventory.nodes.get(op.node) if inventory else None
        if inventory is None or node_inv is None:
            return FenceDone(False, errors=(f"node {op.node} has no BMC inventory entry",))
        decided_at = self._decided.get(op.node)
        if decided_at is None and not op.power_off_sent:
            raise StopWalk("this leader has not judged the node itself")  # held: see resume
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
        outcome = await fencer.run(PowerAction.OFF)
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
            raise StopWalk("lost leadership during the power walk")
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
        ).run(PowerAction.ON)
        if not outcome.success:
            log.error("powering %s back on after the fence failed: %s", op.node, outcome.reason)
            return PoweredOn(False, "; ".join(outcome.errors) or "power-on not confirmed")
        return PoweredOn(True)

    async def _snapshot(self, op: Operation) -> Event:
        snap = await snapshot_vms(self.api, op, self.virt)
        if snap.capacity_warning:
            await self.reports.event(op, "FenceNoRoomForVMs", snap.capacity_warning, True)
        return snap
