"""What a chaos run checks: six invariants over a stream of cluster snapshots (pure).

The runner polls the cluster (~every 50 ms) into `Snapshot`s and feeds them to
`InvariantChecker.observe`; unit tests feed synthetic ones. Times are seconds since the chaos
began. A snapshot holds both truths: what the API says (Nodes, Leases, VMs, FenceOperation
records) and what really is (power, where each VM's processes run).

- (a) `split-brain`: no VM's processes run on two machines at once.
- (b) `unproven-delete`: a Node disappears only when its machine is off (or was switched in
  between two looks) and a FenceOperation of that node says `offProven` (and no record says
  `nodeDeleted` without `offProven`).
- (c) `not-recovered`: every ColdStandby VM (runPolicy AlwaysOn / AlwaysOnUnlessStoppedManually;
  KubeVirt's runStrategy Always / RerunOnFailure) hosted by a node whose Off a record proves
  (the release that follows restarts it before the Node goes), or by a deleted Node, is
  Running again within `recovery_deadline`.
- (d) `wrong-fence`: no power-off is sent (a record's `powerOffSent` turns true) for a node in
  maintenance for at least `maintenance_grace`, nor for a node whose kubelet was alive then:
  at least two Lease renewals seen within `kubelet_alive_window` before it (one renewal is
  the last breath of a node that then went silent; two mean it kept renewing), nor for a node
  whose agent's heartbeats reached the broker after its record was stored (and at least
  `heartbeat_grace` before the send: the leader must have heard them).
- (e) `unrecorded-off`: a power-off request reaches a node's BMC or PDU only while a record of
  that node, not finished before, says `powerOffSent` (the point of no return is stored
  first; a late request of an abandoned walk must not hit a node that came back).
- (f) `stuck-fence`: every FenceOperation reaches a final phase (Recovered,
  RecoveryIncomplete, Aborted) within `fence_deadline` of its first sighting.
- (g) `not-fenced`: a machine off for `unfenced_after` (or powered but cut off from the
  network for `unfenced_after_cut`) while its Node is still there and not in maintenance has a
  FenceOperation that was under way during that time (a lost node is fenced, also one that was
  fenced before, came back and was lost again). While every broker's host (`broker_hosts`) is
  off or cut off no heartbeat reaches a leader and silence proves nothing (nodefence fences
  nobody, by design): the count then starts again at the first look with a broker back.
- (h) `lost-in-maintenance`: no VM's processes run on a machine in maintenance (its Node marked
  `nodefence.io/maintenance=true`) when that machine loses power: nodefence never fences a node
  in maintenance, so such a VM is never restarted (`maintenance enter` said done too early).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# Deckhouse's runPolicy; KubeVirt's runStrategy (RerunOnFailure: its instance Failed with it)
RESTARTABLE = ("AlwaysOn", "AlwaysOnUnlessStoppedManually", "Always", "RerunOnFailure")
HOSTED = ("Running", "Migrating")
INVARIANTS = (
    "split-brain",
    "unproven-delete",
    "not-recovered",
    "wrong-fence",
    "unrecorded-off",
    "stuck-fence",
    "not-fenced",
    "lost-in-maintenance",
)
FINAL_PHASES = frozenset({"Recovered", "RecoveryIncomplete", "Aborted"})


@dataclass(frozen=True)
class RecordView:
    """The fields of a FenceOperation record the checks read."""

    node: str
    phase: str = ""
    power_off_sent: bool = False
    off_proven: bool = False
    node_deleted: bool = False
    proof: str = ""  # "read-back" or "watchdog" once offProven

    @property
    def final(self) -> bool:
        """Nothing more will happen to this operation."""
        return self.phase in FINAL_PHASES


@dataclass(frozen=True)
class VmView:
    """A VirtualMachine as the API shows it."""

    phase: str
    node: str | None
    run_policy: str


@dataclass(frozen=True)
class Snapshot:
    """One look at the cluster at time `t`."""

    t: float
    nodes: Mapping[str, str]  # Node name -> uid
    maintenance: frozenset[str]  # Nodes labelled nodefence.io/maintenance=true
    power: Mapping[str, str]  # machine -> "on" | "off"
    power_changes: Mapping[str, int]  # machine -> transitions so far (SimMachine.power_changes)
    kubelet_renew: Mapping[str, str]  # node -> kubelet Lease spec.renewTime
    records: Mapping[str, RecordView]  # record name -> view
    vms: Mapping[str, VmView]  # "namespace/name" -> view
    running: Mapping[str, frozenset[str]]  # "namespace/name" -> machines really running it
    heartbeats: Mapping[str, float] = field(default_factory=dict)  # node -> last one on the broker
    # node -> channel ("ipmi", "redfish", "pdu") -> power-off requests it received so far
    off_requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    cut_off: frozenset[str] = frozenset()  # nodes whose network link is cut


@dataclass(frozen=True)
class Violation:
    """An invariant broken at `t` (seconds since the chaos began)."""

    t: float
    invariant: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.t:8.2f}s  {self.invariant:<16} {self.node:<8} {self.detail}"


@dataclass
class Pending:
    """A VM that must be Running again by `deadline` (its node was proven off, or its Node
    deleted, at `since`); Running on `lost_node` counts only on a Node other than `uid`."""

    vm: str
    lost_node: str
    since: float
    deadline: float
    uid: str = ""


@dataclass
class InvariantChecker:
    """Feed snapshots in time order with `observe`; read `violations` and the counters."""

    recovery_deadline: float = 30.0
    kubelet_alive_window: float = 4.5
    maintenance_grace: float = 1.0
    heartbeat_grace: float = 1.0
    fence_deadline: float = 90.0
    unfenced_after: float = 20.0
    unfenced_after_cut: float = 25.0
    broker_hosts: tuple[str, ...] = ()  # the machines the MQTT brokers run on
    violations: list[Violation] = field(default_factory=list)
    records_seen: set[str] = field(default_factory=set)
    proven: set[str] = field(default_factory=set)
    deleted_nodes: list[tuple[float, str]] = field(default_factory=list)
    recoveries: list[tuple[str, str, float]] = field(default_factory=list)  # vm, from, downtime
    pending: dict[str, Pending] = field(default_factory=dict)
    _prev: Snapshot | None = None
    _renewals: dict[str, list[float]] = field(default_factory=dict)
    _maintenance_since: dict[str, float] = field(default_factory=dict)
    _doubles: set[str] = field(default_factory=set)
    _sent: set[str] = field(default_factory=set)
    _first_seen: dict[str, float] = field(default_factory=dict)  # record -> first sighting
    _beats: dict[str, list[float]] = field(default_factory=dict)  # node -> heartbeat times
    _stuck: set[str] = field(default_factory=set)
    _finished_at: dict[str, float] = field(default_factory=dict)  # record -> first seen final
    _off_since: dict[str, float] = field(default_factory=dict)  # machine -> first seen off
    _cut_since: dict[str, float] = field(default_factory=dict)  # powered node -> first seen cut
    _unfenced: set[tuple[str, float]] = field(default_factory=set)
    # The first look with a broker's host reachable after none was (inf while none is).
    _broker_back_at: float = 0.0

    def observe(self, snap: Snapshot) -> list[Violation]:
        """Check one snapshot against the history; returns the violations it revealed."""
        before = len(self.violations)
        prev = self._prev
        self._track(snap, prev)
        self._split_brain(snap)
        if prev is not None:
            self._deletions(snap, prev)
            self._lost_in_maintenance(snap, prev)
        self._records(snap, prev)
        if prev is not None:
            self._off_requests(snap, prev)
        self._recoveries(snap)
        self._stuck_fences(snap)
        self._not_fenced(snap)
        self._prev = snap
        return self.violations[before:]

    def finish(self, t: float) -> list[Violation]:
        """The end of the run: every VM still waiting is a violation once its deadline is
        past (the runner waits for the deadlines first)."""
        before = len(self.violations)
        for vm, p in sorted(self.pending.items()):
            if t >= p.deadline:
                self._flag_late(t, vm, p)
        if self._prev is not None:
            self._stuck_fences(replace(self._prev, t=t))
            self._not_fenced(replace(self._prev, t=t))
        return self.violations[before:]

    # ---- bookkeeping ----------------------------------------------------------------------

    def _add(self, t: float, invariant: str, node: str, detail: str) -> None:
        self.violations.append(Violation(round(t, 3), invariant, node, detail))

    def _track(self, snap: Snapshot, prev: Snapshot | None) -> None:
        for node, renew in snap.kubelet_renew.items():
            if prev is not None and prev.kubelet_renew.get(node) not in (None, renew):
                self._renewals.setdefault(node, []).append(snap.t)
                del self._renewals[node][:-20]
        for node, at in snap.heartbeats.items():
            beats = self._beats.setdefault(node, [])
            if not beats or beats[-1] != at:
                beats.append(at)
                del beats[:-50]
        for name, rec in snap.records.items():
            self._first_seen.setdefault(name, snap.t)
            if rec.final:
                self._finished_at.setdefault(name, snap.t)
        for machine, power in snap.power.items():
            if power == "off":
                self._off_since.setdefault(machine, snap.t)
            else:
                self._off_since.pop(machine, None)
            if power == "on" and machine in snap.cut_off:
                self._cut_since.setdefault(machine, snap.t)
            else:
                self._cut_since.pop(machine, None)
        for node in snap.maintenance:
            self._maintenance_since.setdefault(node, snap.t)
        for node in list(self._maintenance_since):
            if node not in snap.maintenance:
                del self._maintenance_since[node]

    def kubelet_alive(self, node: str, t: float) -> bool:
        """Whether `node`'s kubelet kept renewing up to `t` (two renewals in the window)."""
        seen = [r for r in self._renewals.get(node, []) if t - self.kubelet_alive_window <= r <= t]
        return len(seen) >= 2

    # ---- (a) ------------------------------------------------------------------------------

    def _split_brain(self, snap: Snapshot) -> None:
        for vm, places in sorted(snap.running.items()):
            powered = sorted(p for p in places if snap.power.get(p) == "on")
            if len(powered) > 1:
                if vm not in self._doubles:
                    self._doubles.add(vm)
                    where = ", ".join(powered)
                    self._add(snap.t, "split-brain", powered[0], f"VM {vm} runs on {where}")
            else:
                self._doubles.discard(vm)

    # ---- (b) and the start of (c) ---------------------------------------------------------

    def _deletions(self, snap: Snapshot, prev: Snapshot) -> None:
        for node, uid in sorted(prev.nodes.items()):
            if snap.nodes.get(node) == uid:
                continue
            self.deleted_nodes.append((snap.t, node))
            on_throughout = (
                prev.power.get(node) == "on"
                and snap.power.get(node) == "on"
                and prev.power_changes.get(node) == snap.power_changes.get(node)
            )
            fresh = [
                r
                for name, r in snap.records.items()
                if r.node == node and not _deleted(prev.records.get(name))
            ]
            if on_throughout:
                proofs = ", ".join(sorted({r.proof for r in fresh if r.proof})) or "none"
                detail = f"Node deleted while its machine ran (proof: {proofs})"
                self._add(snap.t, "unproven-delete", node, detail)
            if not any(r.off_proven for r in fresh):
                phases = ", ".join(sorted(r.phase for r in fresh)) or "no record"
                self._add(
                    snap.t, "unproven-delete", node, f"Node deleted without offProven ({phases})"
                )
            for vm, view in sorted(prev.vms.items()):
                hosted = view.node == node and view.phase in HOSTED
                if hosted and view.run_policy in RESTARTABLE and vm not in self.pending:
                    deadline = snap.t + self.recovery_deadline
                    self.pending[vm] = Pending(vm, node, snap.t, deadline, uid)

    # ---- (b) record side, (d) -------------------------------------------------------------

    def _records(self, snap: Snapshot, prev: Snapshot | None) -> None:
        for name, rec in sorted(snap.records.items()):
            self.records_seen.add(name)
            if rec.off_proven and name not in self.proven:
                self._lost_with(rec.node, snap, prev)
            if rec.off_proven:
                self.proven.add(name)
            old = prev.records.get(name) if prev is not None else None
            if rec.node_deleted and not rec.off_proven and not _deleted(old):
                self._add(snap.t, "unproven-delete", rec.node, f"{name}: nodeDeleted, no offProven")
            if not rec.power_off_sent or name in self._sent:
                continue
            self._sent.add(name)
            since = self._maintenance_since.get(rec.node)
            if since is not None and snap.t - since >= self.maintenance_grace:
                detail = f"{name}: power-off sent {snap.t - since:.1f} s into maintenance"
                self._add(snap.t, "wrong-fence", rec.node, detail)
            if self.kubelet_alive(rec.node, snap.t):
                renewals = [f"{r:.2f}" for r in self._renewals.get(rec.node, [])[-3:]]
                detail = f"{name}: power-off sent while its kubelet renewed (at {renewals})"
                self._add(snap.t, "wrong-fence", rec.node, detail)
            stored = self._first_seen.get(name, snap.t)
            heard = [
                b
                for b in self._beats.get(rec.node, [])
                if stored < b <= snap.t - self.heartbeat_grace
            ]
            if heard:
                detail = (
                    f"{name}: power-off sent though its agent's heartbeats reached the broker "
                    f"at {heard[-1]:.2f} s, after the record was stored ({stored:.2f} s)"
                )
                self._add(snap.t, "wrong-fence", rec.node, detail)

    # ---- (e) and (f) ----------------------------------------------------------------------

    def _off_requests(self, snap: Snapshot, prev: Snapshot) -> None:
        for node, counts in sorted(snap.off_requests.items()):
            before = prev.off_requests.get(node, counts)
            via = sorted(ch or "?" for ch, n in counts.items() if n > before.get(ch, 0))
            if not via:
                continue
            covered = [
                name
                for name, rec in snap.records.items()
                if rec.node == node
                and (rec.power_off_sent or _sent(prev.records.get(name)))
                and not _final(prev.records.get(name))
            ]
            if not covered:
                said = sorted(f"{n} {r.phase}" for n, r in snap.records.items() if r.node == node)
                detail = (
                    f"a power-off request reached it (via {', '.join(via)}) while no unfinished"
                    f" record said powerOffSent (records: {', '.join(said) or 'none'})"
                )
                self._add(snap.t, "unrecorded-off", node, detail)

    def _stuck_fences(self, snap: Snapshot) -> None:
        for name, rec in sorted(snap.records.items()):
            since = self._first_seen.get(name, snap.t)
            if rec.final or name in self._stuck or snap.t - since < self.fence_deadline:
                continue
            self._stuck.add(name)
            detail = f"{name} still {rec.phase} {snap.t - since:.0f} s after it was stored"
            self._add(snap.t, "stuck-fence", rec.node, detail)

    def _not_fenced(self, snap: Snapshot) -> None:
        reachable = [
            h for h in self.broker_hosts if snap.power.get(h) == "on" and h not in snap.cut_off
        ]
        if self.broker_hosts and not reachable:
            self._broker_back_at = math.inf
        elif self._broker_back_at == math.inf:
            self._broker_back_at = snap.t
        lost = [(n, t, "machine off", self.unfenced_after) for n, t in self._off_since.items()]
        lost += [
            (n, t, "machine on but cut off", self.unfenced_after_cut)
            for n, t in self._cut_since.items()
        ]
        for node, since, how, limit in sorted(lost):
            if (
                node not in snap.nodes
                or node in snap.maintenance
                or snap.t - max(since, self._broker_back_at) < limit
                or (node, since) in self._unfenced
            ):
                continue
            under_way = [
                name
                for name, rec in snap.records.items()
                if rec.node == node
                and (not rec.final or self._finished_at.get(name, snap.t) >= since)
            ]
            if under_way:
                continue
            self._unfenced.add((node, since))
            detail = f"{how} since {since:.2f} s, its Node still there, and no fencing started"
            self._add(snap.t, "not-fenced", node, detail)

    # ---- (e) ------------------------------------------------------------------------------

    def _lost_in_maintenance(self, snap: Snapshot, prev: Snapshot) -> None:
        for node in sorted(snap.maintenance | prev.maintenance):
            cut = prev.power.get(node) == "on" and (
                snap.power.get(node) != "on"
                or prev.power_changes.get(node) != snap.power_changes.get(node)
            )
            if not cut:
                continue
            for vm, places in sorted(prev.running.items()):
                if node in places:
                    detail = f"VM {vm} ran on {node} (in maintenance) when its power was cut"
                    self._add(snap.t, "lost-in-maintenance", node, detail)

    # ---- (c) ------------------------------------------------------------------------------

    def _lost_with(self, node: str, snap: Snapshot, prev: Snapshot | None) -> None:
        """`node` was proven off: its ColdStandby VMs must run elsewhere in time."""
        for look in (prev, snap):
            for vm, view in sorted(look.vms.items() if look is not None else ()):
                hosted = view.node == node and view.phase in HOSTED
                if hosted and view.run_policy in RESTARTABLE and vm not in self.pending:
                    deadline = snap.t + self.recovery_deadline
                    self.pending[vm] = Pending(vm, node, snap.t, deadline, snap.nodes.get(node, ""))

    def _recoveries(self, snap: Snapshot) -> None:
        for vm, p in sorted(self.pending.items()):
            view = snap.vms.get(vm)
            if view is None:  # deleted by someone: nothing to recover
                del self.pending[vm]
            elif (
                view.phase == "Running"
                and view.node
                and (view.node != p.lost_node or snap.nodes.get(view.node) not in (None, p.uid))
            ):
                self.recoveries.append((vm, p.lost_node, round(snap.t - p.since, 3)))
                del self.pending[vm]
            elif snap.t > p.deadline:
                self._flag_late(snap.t, vm, p)

    def _flag_late(self, t: float, vm: str, p: Pending) -> None:
        detail = (
            f"VM {vm} not Running {self.recovery_deadline:g} s after {p.lost_node} was proven"
            " off or deleted"
        )
        self._add(t, "not-recovered", p.lost_node, detail)
        del self.pending[vm]


def _deleted(rec: RecordView | None) -> bool:
    return rec is not None and rec.node_deleted


def _sent(rec: RecordView | None) -> bool:
    return rec is not None and rec.power_off_sent


def _final(rec: RecordView | None) -> bool:
    return rec is not None and rec.final
