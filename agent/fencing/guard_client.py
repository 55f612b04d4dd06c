"""The guard of one power-off walk: what must hold before each power request goes out.

Before every request: this process still holds the leader Lease. Before the FIRST power-off
request of an operation, in this order:
1. cheap early looks (life since the decision in the leader's cache, the cached maintenance
   mark): no Lease renewal or record write for a node that is plainly back;
2. renew the Lease; fencing paused cluster-wide (`nodefence.agent.fencing.pause`, read with that
   renewal) stops the walk here, nothing stored, nothing sent (`paused`: the operation waits for
   `resume`);
3. store the point of no return (PowerOffSending); if that write fails, nothing is sent;
4. read the Node from the API server: a maintenance mark, or another Node object than the one
   declared dead (it registered again), aborts; and its kubelet Lease (`read_kubelet`): the
   leader's cache follows a watch, and a renewal the watch has not delivered yet counts as life
   seen now;
5. look for life since the decision once more (heartbeats that arrived during 2-4 count),
   right before the first request is handed to its backend (`last_look`, called by the power
   walk with nothing awaited in between); a pause seen since (a later Lease renewal) withdraws
   the send there too: no power-off goes out once this process has read a pause.
A stop is reported as its typed reason (`stop`, `nodefence.agent.fencing.stop`) and, unless the
Lease was lost or the walk waits for a resume, as the event the executor folds in (`stopped`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nodefence.agent.fencing.events import (
    Cancelled,
    Event,
    FenceDone,
    Maintenance,
    NodeAlive,
    PowerOffSending,
    SendWithdrawn,
)
from nodefence.agent.fencing.machine import Timing, apply
from nodefence.agent.fencing.operation import Operation
from nodefence.agent.fencing.power_executor import StopWalk
from nodefence.agent.fencing.stop import StopKind, StopReason, lease_lost, paused
from nodefence.agent.fencing.store_client import RecordStore
from nodefence.agent.kube.client import ClusterApi, ClusterError


class WalkGuard:
    """`guard(step)` for `PowerFencer`, for one walk of operation `op` (see the module doc)."""

    def __init__(
        self,
        op: Operation,
        decided_at: float | None,
        *,
        confirm_leader: Callable[[], Awaitable[None]],
        alive_since: Callable[[str, float], str | None],
        in_maintenance: Callable[[str], bool],
        store: RecordStore,
        api: ClusterApi,
        clock: Callable[[], float],
        timing: Timing,
        on_confirmed: Callable[[str], None] | None = None,
        on_stored: Callable[[Operation], None] | None = None,
        paused: Callable[[], str | None] = lambda: None,
        read_kubelet: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.op = op  # advances to Fencing (power_off_sent) once the point of no return is stored
        self.decided_at = decided_at
        self.confirm_leader = confirm_leader
        self.alive_since = alive_since
        self.in_maintenance = in_maintenance
        self.store = store
        self.api = api
        self.clock = clock
        self.timing = timing
        self.stop: StopReason | None = None  # why the walk stopped (None: it did not)
        self.stopped: Event | None = None  # the stop as an event to fold in
        self.first_sent = op.power_off_sent  # a request of this operation went out
        self.on_confirmed = on_confirmed  # the Lease was confirmed ours before `step` (evidence)
        self.on_stored = on_stored  # the point of no return was stored (evidence)
        self.paused = paused  # fencing paused cluster-wide: its description, else None
        self.read_kubelet = read_kubelet  # reads the node's kubelet Lease fresh into the cache

    @property
    def lost_lease(self) -> bool:
        """The walk stopped because this process is not the leader any more."""
        return self.stop is not None and self.stop.kind is StopKind.LEASE_LOST

    @property
    def stopped_by_pause(self) -> bool:
        """The walk stopped at a pause before anything was stored: it waits for the resume."""
        return self.stop is not None and self.stop.kind is StopKind.PAUSED and self.stopped is None

    def _stop(self, reason: StopReason, event: Event | None = None) -> StopWalk:
        self.stop, self.stopped = reason, event
        return StopWalk(reason)

    def _life(self) -> str | None:
        assert self.decided_at is not None, "a first power-off needs this leader's decision"
        return self.alive_since(self.op.node, self.decided_at)

    async def __call__(self, step: str) -> None:
        node, first = self.op.node, not self.op.power_off_sent
        if first:
            evidence = self._life()
            if evidence:
                back = StopReason(StopKind.NODE_ALIVE, f"node came back ({evidence})")
                raise self._stop(back, NodeAlive(evidence))
            if self.in_maintenance(node):
                entered = StopReason(StopKind.MAINTENANCE, "node entered maintenance")
                raise self._stop(entered, Maintenance())
        try:
            await self.confirm_leader()
        except Exception as err:
            raise self._stop(lease_lost(err)) from None
        if self.on_confirmed is not None:
            self.on_confirmed(step)
        # Read with the Lease just confirmed. Also past the point of no return: a pause means
        # no more power-off requests; the walk waits (nothing more stored) until the resume.
        pause = self.paused()
        if pause is not None:
            raise self._stop(paused(pause))
        if not first:
            return
        sending = apply(self.op, PowerOffSending(), self.clock(), self.timing)
        try:
            await self.store.save(sending, required=True)
        except ClusterError as err:
            why = f"PowerOffSending could not be stored, nothing sent: {err}"
            raise self._stop(
                StopReason(StopKind.NOT_STORED, why), FenceDone(False, errors=(why,))
            ) from None
        self.op = sending
        if self.on_stored is not None:
            self.on_stored(sending)
        try:
            info = await self.api.get_node(node)
        except ClusterError as err:
            why = f"cannot read Node {node} before the power-off, nothing sent: {err}"
            raise self._stop(StopReason(StopKind.UNREADABLE, why), SendWithdrawn(why)) from None
        if info is not None and sending.node_uid and info.uid != sending.node_uid:
            why = "node re-registered (a new Node object) before the power-off was sent"
            raise self._stop(StopReason(StopKind.NODE_CHANGED, why), Cancelled(why))
        if info is not None and info.maintenance:
            why = "node entered maintenance before the power-off was sent"
            raise self._stop(StopReason(StopKind.MAINTENANCE, why), Cancelled(why))
        if self.read_kubelet is not None:
            try:
                await self.read_kubelet(node)
            except ClusterError as err:
                why = f"cannot read the kubelet Lease of {node} before the power-off: {err}"
                raise self._stop(StopReason(StopKind.UNREADABLE, why), SendWithdrawn(why)) from None

    def last_look(self, device: str) -> None:
        """Right before a power-off request goes to `device`: the first one of the operation
        goes out only if the node showed no life since the decision. Later ones (the other
        devices of the level) must go out whatever happens: one request already did."""
        if self.first_sent:
            return
        evidence = self._life()
        if evidence:
            why = f"node came back before the power-off was sent ({evidence})"
            raise self._stop(StopReason(StopKind.NODE_ALIVE, why), Cancelled(why))
        pause = self.paused()
        if pause is not None:
            why = f"fencing was paused before the request went out ({pause}): nothing sent"
            raise self._stop(StopReason(StopKind.PAUSED, why), SendWithdrawn(why))
        self.first_sent = True
