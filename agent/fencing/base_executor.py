"""The state a `FenceExecutor` keeps and the checks every step of it shares: the Lease renewed
before an irreversible step (noted in the fence certificate), a voided proof's taint taken
off, the open operations exported as metrics.

`FenceExecutor` (`nodefence.agent.fencing.executor`) is this, plus its power walks
(`nodefence.agent.fencing.walk_executor`), the loop that drives one operation
(`nodefence.agent.fencing.steps_executor`) and the entry points the leader calls.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from nodefence.agent.config.inventory_file import Inventory
from nodefence.agent.fencing.evidence import EvidenceBook
from nodefence.agent.fencing.machine import Timing
from nodefence.agent.fencing.operation import FINAL, Cleanup, Operation, Phase
from nodefence.agent.fencing.power_executor import BackendFactory, StopWalk
from nodefence.agent.fencing.reports_client import FenceReporter
from nodefence.agent.fencing.stop import lease_lost
from nodefence.agent.fencing.store_client import RecordStore
from nodefence.agent.kube.cache_watch import ClusterReads
from nodefence.agent.kube.client import ClusterApi, ClusterError
from nodefence.agent.observe import metrics
from nodefence.agent.virt.layer_client import VirtLayer
from nodefence.backends.registry import build_backend

log = logging.getLogger("nodefence.fencing")

ConfirmLeader = Callable[[], Awaitable[None]]


class AliveSince(Protocol):
    """Evidence of life of `node` after `since` (see `LeaderSide.alive_since`)."""

    def __call__(self, node: str, since: float, *, certain: bool = False) -> str | None:
        """See `LeaderSide.alive_since`."""
        ...


# node, marked_at, decided_at, unreachable -> (proven, why)
SelfFenceCheck = Callable[[str, float, float, bool], tuple[bool, str]]
# node -> what the leader knew when it declared the node dead (nodefence.agent.fencing.evidence)
DecisionFacts = Callable[[str], dict[str, Any] | None]
LeaseGeneration = Callable[[], dict[str, object] | None]


@dataclass
class ExecutorStats:
    """What the executor did, for status, metrics and tests."""

    started: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # final phase -> count
    power_walks: int = 0


class ExecutorBase:
    """The executor's state (see `FenceExecutor` for the parameters)."""

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

    async def _leader_or_stop(self, op: Operation, step: str) -> None:
        """Renew the Lease before the irreversible `step` of `op` (noted in its evidence)."""
        try:
            await self.confirm_leader()
        except Exception as err:
            raise StopWalk(lease_lost(err)) from None
        self._lease_confirmed(op, step)

    def _lease_confirmed(self, op: Operation, step: str) -> None:
        lease = self.lease_generation() if self.lease_generation is not None else None
        self.evidence.lease(op.node, op.id, step, lease)
