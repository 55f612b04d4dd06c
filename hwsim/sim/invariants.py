"""The simulation's invariants, checked at the step where each can break (docs/simulation.md).

Safety, checked as it happens:
- `split-brain`: a VM's processes start on a machine while they still run on another powered
  one.
- `unproven-cleanup`: a Node is tainted out-of-service or deleted, and no FenceOperation of
  this incident (created after the Node registered) says `offProven`, or the machine is on and
  has not been off (power lost, switched off, watchdog reset) since such a record was created
  (or, for a machine cut off from the network since before that, since it was cut off: no new
  work reached it after that reset).
- `wrong-fence`: leader L sends the first power-off of an operation (the requests of the first
  instant a power-off goes out for it, unless the operation was already past the point of no
  return when L's current leader side took it over, by L's own earlier side too) to node n, and
  L did not declare n dead in its current leader side (`LeaderSide.stats.decisions`), or a heartbeat
  of n was accepted by L's ingest after that declaration (a heartbeat still in flight does not
  count), or n has carried the maintenance label for more than `MAINTENANCE_GRACE` seconds, or
  fencing was paused (the leader Lease's pause annotation) before L's last accepted Lease write: a
  write accepted after the pause was set rests on a read that saw it.
- `two-leaders`: a process sends an irreversible request (power-off, taint, Node deletion)
  while its leadership is not current: its last accepted Lease write is more than
  renew_deadline of its *running* time ago, or another process acquired the Lease after it -
  unless it was paused between that Lease write and the request (the stop-the-world race no
  Lease can close; see the docs). Also: a record write of an older leadership term accepted
  after one of a newer term (two leaders acting on one operation); terms are ordered by the
  Lease acquisition they rest on.
- `crash`: an exception left the real code and ended a candidate process.
- `livelock`: callbacks kept running without virtual time passing (a busy loop).

Liveness, checked when the faults have stopped (`nodefence.hwsim.sim.runner`): `not-fenced` and
`stuck-operation`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodefence.agent.fencing.records import record_name
from nodefence.agent.heartbeat.codec import node_from_topic
from nodefence.agent.mqtt.leader_broker_client import OnMessage
from nodefence.hwsim.sim.api_objects import ApiListener, NodeObject
from nodefence.hwsim.sim.vloop import SimProcess

if TYPE_CHECKING:
    from nodefence.hwsim.sim.candidates import Candidate
    from nodefence.hwsim.sim.machines import Machine
    from nodefence.hwsim.sim.world import World

MAINTENANCE_GRACE = 2.0  # a label set this recently may not have been seen yet
INVARIANTS = (
    "split-brain",
    "unproven-cleanup",
    "wrong-fence",
    "two-leaders",
    "crash",
    "livelock",
    "not-fenced",
    "stuck-operation",
)


@dataclass(frozen=True)
class Violation:
    """An invariant broken at virtual time `t`."""

    t: float
    invariant: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.t:9.3f}  {self.invariant:<16} {self.node or '-':<8} {self.detail}"


@dataclass
class _Term:
    """What the invariants track of one candidate's current leadership term."""

    start: float | None = None
    decisions: int = 0
    declared: dict[str, bool] | None = None  # node -> heard from since declared dead


class Invariants(ApiListener):
    """Checks the safety invariants as the simulated edges report events."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[Violation] = []
        self._by_proc: dict[SimProcess, Candidate] = {}
        self._terms: dict[str, _Term] = {}  # by process name
        # record -> (process, leader side) that stored its powerOffSent first
        self._crossed: dict[str, tuple[str, float | None]] = {}
        self._record_terms: dict[str, tuple[float, str]] = {}  # record -> newest writer term
        self._lease_by: dict[str, float] = {}  # holder -> last accepted Lease write
        self._first_off: dict[str, float] = {}  # record -> when its first power-off went out
        self.power_offs = 0

    def violate(self, invariant: str, node: str, detail: str) -> None:
        """Record a violation now (once: requests to two devices at one instant are one)."""
        found = Violation(self.world.loop.time(), invariant, node, detail)
        if self.violations and self.violations[-1] == found:
            return
        self.violations.append(found)
        self.world.trace.event("VIOLATION", f"{invariant} {node}: {detail}")

    def track(self, cand: Candidate) -> None:
        """A new candidate process: watched after each of its steps."""
        self._by_proc[cand.proc] = cand
        term = self._terms[cand.proc.name] = _Term()
        cand.proc.after_step = functools.partial(self.after_step, cand, term)

    # -- after every step ----------------------------------------------------------------------

    def after_step(self, cand: Candidate, term: _Term) -> None:
        """After a step of `cand` (its current `term`): did it start or end a leadership term,
        declare a node dead?"""
        proc = cand.proc
        leader = cand.lc.leader
        if leader is not cand.seen_leader:
            cand.seen_leader = leader
            # A term starts with the Lease acquisition it rests on, which may be long before
            # the leader side starts (a pause in between): terms are ordered by acquisition.
            acquired = cand.acquired_at
            now = self.world.loop.time()
            cand.term_start = (acquired if acquired is not None else now) if leader else None
            cand.side_start = now if leader else None
            term.start = cand.term_start
            term.decisions = 0
            term.declared = {}
            if leader is not None:
                self.world.trace.event("leader", f"{proc.name} leads")
        if leader is None:
            return
        decisions = leader.stats.decisions
        if len(decisions) > term.decisions:
            declared = term.declared if term.declared is not None else {}
            for _, node, kind in decisions[term.decisions :]:
                if kind == "dead":
                    declared[node] = False
                    self.world.trace.event("decision", f"{proc.name} declared {node} dead")
            term.declared = declared
            term.decisions = len(decisions)

    # -- broker --------------------------------------------------------------------------------

    def delivered(
        self, proc: SimProcess, topic: str, payload: bytes, on_message: OnMessage
    ) -> None:
        """A message reaches a leader's ingest (see `SimLeaderBroker`)."""
        cand = self._by_proc.get(proc)
        leader = cand.lc.leader if cand is not None else None
        before = leader.stats.heartbeats if leader is not None else 0
        on_message(topic, payload)
        if cand is None or leader is None or leader.stats.heartbeats == before:
            return
        declared = self._terms[proc.name].declared
        if declared:
            node = node_from_topic(self.world.cfg.cluster, topic)
            if node is not None and node in declared:
                declared[node] = True

    # -- BMC requests --------------------------------------------------------------------------

    def power_request(self, cand: Candidate, node: str, device: str, verb: str) -> None:
        """`cand` sends a power request to `node`'s `device`."""
        w = self.world
        w.trace.event("bmc", f"{cand.proc.name} power-{verb} {node}/{device}")
        if verb != "off":
            return
        self.power_offs += 1
        self._current_leadership(cand, node, "power-off")
        leader = cand.lc.leader
        executor = leader.executor if leader is not None else None
        op = executor.operations.get(node) if executor is not None else None
        name = record_name(op) if op is not None else ""
        first = self._first_off.setdefault(name, w.loop.time())
        if first < w.loop.time():
            return  # a later request of a walk past the point of no return: the design
        crossed = self._crossed.get(name)
        if crossed is not None and crossed != (cand.proc.name, cand.side_start):
            # Past the point of no return before this leader side: carrying on is the design.
            # Compared by leader side, not Lease term: a leader that takes its own Lease again
            # keeps its term but starts a new side, whose declarations start empty.
            return
        declared = self._terms[cand.proc.name].declared or {}
        heard = declared.get(node)
        m = w.machines[node]
        alive = m.powered and not m.partitioned and m.agent is not None and m.agent.running
        state = " (the node is up and its agent runs)" if alive else ""
        if heard is None:
            self.violate(
                "wrong-fence",
                node,
                f"{cand.proc.name} sent the first power-off of an operation without having"
                f" declared the node dead in its leadership term{state}",
            )
        elif heard:
            self.violate(
                "wrong-fence",
                node,
                f"{cand.proc.name} sent a power-off after a heartbeat of the node reached its"
                f" ingest, later than it declared the node dead{state}",
            )
        paused = w.api.paused_since
        renewed = cand.last_lease_write
        if paused is not None and renewed is not None and paused < renewed:
            self.violate(
                "wrong-fence",
                node,
                f"{cand.proc.name} sent the first power-off of an operation while fencing was"
                f" paused (since t={paused:.3f}; its Lease write at t={renewed:.3f} saw it)",
            )
        since = w.api.maintenance_since.get(node)
        if since is not None and since <= w.loop.time() - MAINTENANCE_GRACE:
            self.violate(
                "wrong-fence",
                node,
                f"{cand.proc.name} sent a power-off to a node in maintenance since t={since:.3f}",
            )

    # -- API -----------------------------------------------------------------------------------

    def step_issued(self, proc: SimProcess | None, verb: str, node: str) -> None:
        """A taint or deletion request leaves a process."""
        cand = self._by_proc.get(proc) if proc is not None else None
        if cand is not None:
            self._current_leadership(cand, node, verb)

    def node_cleaned(self, proc: SimProcess | None, verb: str, node: NodeObject) -> None:
        """A Node was tainted out-of-service or deleted: was it proven off, and is it off?"""
        w = self.world
        if verb == "delete":
            w.api.maintenance_since.pop(node.name, None)
        w.vm_controller.node_lost(node.name)
        who = proc.name if proc is not None else "harness"
        created = w.api.record_created
        proofs = []
        for name, body in w.api.records.get(w.cfg.kube.namespace, {}).items():
            if (body.get("spec") or {}).get("nodeName") != node.name:
                continue
            at = created.get(name, float("-inf"))
            if at >= node.created_at and (body.get("status") or {}).get("offProven"):
                proofs.append(at)
        m = w.machines[node.name]
        if not proofs:
            self.violate(
                "unproven-cleanup",
                node.name,
                f"{verb} by {who} while no FenceOperation of this incident says offProven",
            )
        elif m.powered and not m.off_since_work(min(proofs)):
            self.violate(
                "unproven-cleanup",
                node.name,
                f"{verb} by {who} while the machine is on and has not been off since the"
                " fencing record was created",
            )

    def record_written(
        self, proc: SimProcess | None, issued: float, name: str, body: dict[str, Any]
    ) -> None:
        """A FenceOperation write was accepted."""
        cand = self._by_proc.get(proc) if proc is not None else None
        status = body.get("status") or {}
        self.world.trace.event(
            "record",
            f"{name} {status.get('phase')}"
            + "".join(
                f" {flag}"
                for flag in ("powerOffSent", "offProven", "tainted", "nodeDeleted")
                if status.get(flag)
            )
            + f" by {proc.name if proc is not None else 'harness'}",
        )
        if cand is None:
            return
        self.world.faults.record_written(cand, status)
        term = self._term_at(cand, issued)
        if status.get("powerOffSent") and name not in self._crossed:
            self._crossed[name] = (cand.proc.name, cand.side_start)
        if term is None:
            return
        newest = self._record_terms.get(name)
        if newest is not None and term < newest[0] and newest[1] != cand.proc.name:
            self.violate(
                "two-leaders",
                str((body.get("spec") or {}).get("nodeName", "")),
                f"{cand.proc.name} (leading since t={term:.3f}) wrote {name} after"
                f" {newest[1]} (leading since t={newest[0]:.3f}) had written it",
            )
        if newest is None or term > newest[0]:
            self._record_terms[name] = (term, cand.proc.name)

    def _term_at(self, cand: Candidate, issued: float) -> float | None:
        start = cand.term_start
        return start if start is not None and start <= issued else None

    def lease_written(
        self, proc: SimProcess | None, holder: str | None, before: str | None
    ) -> None:
        """The leader Lease was written."""
        now = self.world.loop.time()
        if holder is not None:
            self._lease_by[holder] = now
        cand = self._by_proc.get(proc) if proc is not None else None
        if cand is not None and holder == cand.holder:
            cand.last_lease_write = now
            if before != holder or cand.acquired_at is None:
                cand.acquired_at = now

    # -- the leadership rule ---------------------------------------------------------------------

    def _current_leadership(self, cand: Candidate, node: str, what: str) -> None:
        w = self.world
        now = w.loop.time()
        name = cand.proc.name
        renewed = cand.last_lease_write
        if cand.lc.leader is None or renewed is None:
            self.violate("two-leaders", node, f"{name} sent a {what} while not leading")
            return
        if cand.paused_between(renewed, now):
            return  # paused after its last Lease check: the race no Lease can close
        deadline = w.cfg.kube.renew_deadline
        ran = cand.running_since(renewed, now)
        if ran >= deadline:
            self.violate(
                "two-leaders",
                node,
                f"{name} sent a {what} {ran:.1f} s (running) after its last Lease renewal"
                f" (renew_deadline {deadline:g} s)",
            )
        for holder, at in self._lease_by.items():
            if holder != cand.holder and at > renewed:
                self.violate(
                    "two-leaders",
                    node,
                    f"{name} sent a {what} after {holder} acquired the Lease"
                    f" (t={at:.3f}, its own last renewal t={renewed:.3f})",
                )

    # -- VMs and crashes -----------------------------------------------------------------------

    def vm_started(self, machine: Machine, key: str) -> None:
        """A VM's processes started on `machine`: do they run anywhere else?"""
        self.world.trace.event("vm", f"{key} runs on {machine.name}")
        for other in self.world.machines.values():
            if other is not machine and key in other.vms and other.powered:
                self.violate(
                    "split-brain",
                    other.name,
                    f"VM {key} started on {machine.name} while it still runs on {other.name}",
                )

    def crashed(self, cand: Candidate, err: BaseException) -> None:
        """An exception ended a candidate process."""
        self.violate("crash", "", f"{cand.proc.name}: {type(err).__name__}: {err}")
