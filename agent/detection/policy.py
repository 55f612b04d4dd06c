"""Pure guards: may a DEAD verdict become a fence decision this round?

`decide` takes the detector's verdicts, the leader's own situation (`LeaderFacts`) and the
cluster's (`ClusterFacts`) and returns a `PolicyDecision`: nodes to fence, nodes held with the
reason, and alerts. Leader-wide guards come first and freeze every decision: this process is not
the leader; it reaches no broker, or has reached one without a gap for less than `fence_after`
(silence then says nothing about the nodes; with several brokers, losing some of them is no
gap); it became leader less than `fence_after` ago and its heartbeat history began with its
leadership (a cold leader has not seen a full window of heartbeats; a warm one took over the
history a standby kept and judges at once the nodes heard in it); more than `max_unhealthy`
nodes are unhealthy at once (storm: the cause is likely shared, fencing would make it worse).
Then per node: a node in maintenance or without a BMC inventory entry is never fenced, an alert
is raised instead; a node fenced earlier and kept out of service (`cleanup: taint`) is not
fenced again until it returns; a cordoned node (`kubectl drain`), or one Deckhouse's fencing is
told to leave alone, is fenced only when fencing would free something, its ColdStandby VMs or
volumes attached to it (`maintenance_guard`), with an alert either way. Nodes that Deckhouse's
own fencing also watches are named in an alert. While fencing is paused cluster-wide
(`nodefence pause`, `pause_guard`) every DEAD node is held and one alert says so; detection,
the other guards and their alerts go on as usual. Alerts are produced every round their
condition holds; the caller de-duplicates them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nodefence.agent.detection.detector import UNHEALTHY, NodeHealth, NodeVerdict
from nodefence.agent.detection.profiles import DetectionProfile


class AlertKind(enum.StrEnum):
    """What an alert is about; the value is the Event reason suffix and metric label."""

    STORM = "storm"
    BROKER_DOWN = "broker-down"
    AGENT_LOST = "agent-lost"
    MAINTENANCE = "maintenance"
    NO_INVENTORY = "no-inventory"
    MAINTENANCE_SCHEDULABLE = "maintenance-schedulable"
    DOWN_WHILE_CORDONED = "down-while-cordoned"
    DECKHOUSE_FENCING = "deckhouse-fencing"
    PAUSED = "paused"
    KEY_MISMATCH = "key-mismatch"


@dataclass(frozen=True)
class Alert:
    """Something an operator must know; `node` is None for cluster-wide alerts."""

    kind: AlertKind
    node: str | None
    message: str


@dataclass(frozen=True)
class MaxUnhealthy:
    """The storm threshold: a node count, or a percentage of the expected nodes (rounded down).

    Decisions freeze when strictly more nodes than `limit(total)` are unhealthy, as in the
    Machine API's and medik8s' `maxUnhealthy`.
    """

    value: int
    percent: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise ValueError(f"max_unhealthy: must be a count >= 0, got {self.value!r}")
        if self.percent and self.value > 100:
            raise ValueError(f"max_unhealthy: a percentage must be 0..100, got {self.value}%")

    @classmethod
    def parse(cls, value: int | str) -> MaxUnhealthy:
        """From config: an integer count (`3`, `"3"`) or a percentage string (`"40%"`).

        Raises ValueError naming `max_unhealthy` for anything else.
        """
        if isinstance(value, str):
            text = value.strip()
            percent = text.endswith("%")
            digits = text[:-1].strip() if percent else text
            if not digits.isdigit():
                raise ValueError(
                    f"max_unhealthy: expected a count like 3 or a percentage like '40%',"
                    f" got {value!r}"
                )
            return cls(int(digits), percent)
        return cls(value)

    def limit(self, total: int) -> int:
        """How many unhealthy nodes of `total` are still tolerated."""
        return total * self.value // 100 if self.percent else self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


# `LeaderFacts`, `ClusterFacts` and `PolicyDecision` are built every judging round: they are
# frozen dataclasses with a hand-written `__init__` that fills the instance dict directly (the
# generated frozen `__init__` makes one `object.__setattr__` call per field, three times the cost).


@dataclass(frozen=True, init=False)
class LeaderFacts:
    """The deciding process's own situation, in its monotonic seconds.

    `leader_since`: when it became leader (None: it does not hold the Lease).
    `broker_up_since`: since when at least one of its broker connections has been up without a
    gap (None: it reaches no broker).
    `warm`: its heartbeat history (the detector and `broker_up_since`) was kept by this process
    as a standby before it led, so a full window of it may predate `leader_since`.
    """

    now: float
    leader_since: float | None
    broker_up_since: float | None
    warm: bool = False

    def __init__(
        self,
        now: float,
        leader_since: float | None,
        broker_up_since: float | None,
        warm: bool = False,
    ) -> None:
        d = self.__dict__
        d["now"] = now
        d["leader_since"] = leader_since
        d["broker_up_since"] = broker_up_since
        d["warm"] = warm

    @property
    def broker_connected(self) -> bool:
        """True while the leader reaches at least one broker."""
        return self.broker_up_since is not None


@dataclass(frozen=True)
class NodeWorkload:
    """What fencing a node would free: its ColdStandby VMs (namespace/name) and the volumes
    attached to it (a pod on it holds them)."""

    vms: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True, init=False)
class ClusterFacts:
    """What the cluster says about its nodes.

    `expected_nodes`: the node count `max_unhealthy` percentages refer to (default: the number
    of verdicts). Nodes in `maintenance` are never fenced, do not count as unhealthy and
    leave the count (`guarded_node_count`).
    `cordoned`: nodes marked unschedulable; `deckhouse_maintenance`: node -> the Deckhouse
    annotation that disables its fencing; `workloads`: what such a node runs, where it could be
    read (absent: unknown). `kept_out_of_service`: node -> the operation that fenced it and
    kept it tainted (`cleanup: taint`). `deckhouse_fencing`: node -> the mode of the Deckhouse
    fencing that watches it too. `paused`: fencing is paused cluster-wide (the pause, described
    for people; None: not paused).
    """

    max_unhealthy: MaxUnhealthy
    maintenance: frozenset[str] = frozenset()
    inventory: frozenset[str] = frozenset()
    expected_nodes: int | None = None
    cordoned: frozenset[str] = frozenset()
    deckhouse_maintenance: Mapping[str, str] = field(default_factory=dict)
    workloads: Mapping[str, NodeWorkload] = field(default_factory=dict)
    kept_out_of_service: Mapping[str, str] = field(default_factory=dict)
    deckhouse_fencing: Mapping[str, str] = field(default_factory=dict)
    paused: str | None = None

    def __init__(
        self,
        max_unhealthy: MaxUnhealthy,
        maintenance: frozenset[str] = frozenset(),
        inventory: frozenset[str] = frozenset(),
        expected_nodes: int | None = None,
        cordoned: frozenset[str] = frozenset(),
        deckhouse_maintenance: Mapping[str, str] | None = None,
        workloads: Mapping[str, NodeWorkload] | None = None,
        kept_out_of_service: Mapping[str, str] | None = None,
        deckhouse_fencing: Mapping[str, str] | None = None,
        paused: str | None = None,
    ) -> None:
        d = self.__dict__
        d["max_unhealthy"] = max_unhealthy
        d["maintenance"] = maintenance
        d["inventory"] = inventory
        d["expected_nodes"] = expected_nodes
        d["cordoned"] = cordoned
        d["deckhouse_maintenance"] = {} if deckhouse_maintenance is None else deckhouse_maintenance
        d["workloads"] = {} if workloads is None else workloads
        d["kept_out_of_service"] = {} if kept_out_of_service is None else kept_out_of_service
        d["deckhouse_fencing"] = {} if deckhouse_fencing is None else deckhouse_fencing
        d["paused"] = paused


@dataclass(frozen=True, init=False)
class PolicyDecision:
    """One round's outcome: `fence` the nodes listed; DEAD nodes not fenced are in `held`.

    `frozen`: a leader-wide guard stopped every decision this round.
    """

    fence: list[str] = field(default_factory=list)
    frozen: bool = False
    alerts: list[Alert] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)

    def __init__(
        self,
        fence: list[str] | None = None,
        frozen: bool = False,
        alerts: list[Alert] | None = None,
        held: dict[str, str] | None = None,
    ) -> None:
        d = self.__dict__
        d["fence"] = [] if fence is None else fence
        d["frozen"] = frozen
        d["alerts"] = [] if alerts is None else alerts
        d["held"] = {} if held is None else held


def leader_guard(leader: LeaderFacts, fence_after: float) -> str | None:
    """Why this process may not judge anyone now, or None when it may."""
    now = leader.now
    if leader.leader_since is None:
        return "this process does not hold the leader Lease"
    if leader.broker_up_since is None:
        return "the leader reaches no broker: silence proves nothing"
    if now - leader.broker_up_since < fence_after:
        return (
            f"the leader has reached a broker for {now - leader.broker_up_since:.1f} s only;"
            f" waiting one full fence_after ({fence_after:g} s)"
        )
    if not leader.warm and now - leader.leader_since < fence_after:
        return (
            f"leader for {now - leader.leader_since:.1f} s; a new leader waits one full"
            f" window ({fence_after:g} s) before judging anyone"
        )
    return None


def pause_guard(paused: str | None, dead: Sequence[str]) -> tuple[str, Alert] | None:
    """While fencing is paused cluster-wide: (why each DEAD node is held, the alert), else
    None. The alert is raised while the pause lasts, dead nodes or not: a forgotten pause
    leaves the next failure unfenced."""
    if paused is None:
        return None
    held = f"fencing is paused cluster-wide ({paused}); `nodefence resume` fences again"
    message = (
        f"fencing is {paused}: nodes are judged and alerted on, none is powered off"
        + (f"; dead and not fenced: {', '.join(sorted(dead))}" if dead else "")
        + "; `nodefence resume` ends the pause"
    )
    return held, Alert(AlertKind.PAUSED, None, message)


def storm_guard(
    verdicts: Sequence[NodeVerdict], cluster: ClusterFacts
) -> tuple[int, int, int] | None:
    """(unhealthy, limit, total) when more nodes than `max_unhealthy` are unhealthy, else None.

    Unhealthy: SUSPECT, DEAD or AGENT_LOST, not in maintenance and not fenced and kept out of
    service (`cleanup: taint`: a known-dead node, not part of a new incident).
    """
    total = guarded_node_count(verdicts, cluster)
    limit = cluster.max_unhealthy.limit(total)
    settled = cluster.maintenance
    if cluster.kept_out_of_service:
        settled = settled | frozenset(cluster.kept_out_of_service)
    unhealthy = 0
    for v in verdicts:
        if v.health in UNHEALTHY and v.node not in settled:
            unhealthy += 1
    return (unhealthy, limit, total) if unhealthy > limit else None


def guarded_node_count(verdicts: Sequence[NodeVerdict], cluster: ClusterFacts) -> int:
    """The node count a percentage `max_unhealthy` refers to: the expected nodes (default: one
    per verdict) less those in maintenance, which are neither judged nor fenced. Counting them
    would let more of the nodes that are judged be fenced at once than the threshold says."""
    total = cluster.expected_nodes if cluster.expected_nodes is not None else len(verdicts)
    away = len({v.node for v in verdicts} & cluster.maintenance) if cluster.maintenance else 0
    return max(0, total - away)


def marked_schedulable_alerts(nodes: Mapping[str, tuple[bool, bool]]) -> list[Alert]:
    """An alert per node marked for maintenance but schedulable; `nodes` maps a node to
    (marked `nodefence.io/maintenance=true`, unschedulable).

    Such a node is never fenced, yet new VMs may start on it (`kubectl uncordon` ends a
    drain but leaves our mark): a failure there would leave them down for good.
    """
    return [
        Alert(
            AlertKind.MAINTENANCE_SCHEDULABLE,
            node,
            f"{node} is marked nodefence.io/maintenance=true but schedulable: nodefence never"
            " fences it, yet new VMs may start there. End maintenance with `nodefence"
            f" maintenance exit {node}`, or cordon it again",
        )
        for node, (marked, unschedulable) in sorted(nodes.items())
        if marked and not unschedulable
    ]


def key_mismatch_alerts(mismatches: Mapping[str, str]) -> list[Alert]:
    """An alert per node for which a key other than its pinned one was announced; `mismatches`
    maps the node to the fingerprint of that key.

    Either the node lost its key (reinstalled: an operator removes the pin) or someone who can
    publish as that node on the broker tries to speak for it (refused: its messages are
    believed only under the pinned key).
    """
    return [
        Alert(
            AlertKind.KEY_MISMATCH,
            node,
            f"a key other than {node}'s pinned one was announced for it (fingerprint {seen}):"
            " refused. If the node was reinstalled, remove its pin (`kubectl -n nodefence delete"
            f" nodekey {node}`) and restart its agent; otherwise someone speaks for {node}",
        )
        for node, seen in sorted(mismatches.items())
    ]


def maintenance_guard(
    node: str,
    reason: str,
    cordoned: bool,
    annotation: str,
    workload: NodeWorkload | None,
) -> tuple[bool, str]:
    """May a DEAD node that is cordoned (`kubectl drain`) or carries a Deckhouse annotation
    disabling fencing be fenced? (fence, alert message); (True, "") for any other node.

    Such a node is down for planned work, most likely. Fencing it (power-off, then its Node
    deleted) frees nothing when it runs no ColdStandby VM and holds no volume: it is left
    alone, with an alert. When it still runs such VMs or holds volumes, or what it runs could
    not be read, it is fenced as any other node: those VMs must run elsewhere, and only a
    proven Off makes that safe."""
    if not cordoned and not annotation:
        return True, ""
    marks = ("cordoned" if cordoned else "", f"annotated {annotation}" if annotation else "")
    why = " and ".join(m for m in marks if m)
    head = f"{node} is down ({reason}) while {why}"
    if workload is None:
        return True, f"{head}; what it runs could not be read: fenced as any other node"
    if workload.vms or workload.volumes:
        held = [
            f"ColdStandby VMs {', '.join(workload.vms)}" if workload.vms else "",
            f"volumes {', '.join(workload.volumes)}" if workload.volumes else "",
        ]
        still = " and ".join(h for h in held if h)
        return True, f"{head}, but it still runs {still}: fenced as any other node"
    return False, (
        f"{head} and runs no ColdStandby VM and holds no volume: not fenced (down while"
        " cordoned; uncordon it once it is back)"
    )


def deckhouse_alert(node: str, mode: str) -> Alert:
    """Both Deckhouse's fencing and nodefence would act on `node`."""
    return Alert(
        AlertKind.DECKHOUSE_FENCING,
        node,
        f"{node} is also watched by Deckhouse's fencing (NodeGroup spec.fencing, mode {mode}):"
        " its fencing-controller force-deletes the node's pods 60 s after its kubelet stops"
        " (and its Node, unless the node is Static or in Notify mode), and in Watchdog mode its"
        " agent lets the node reset itself, while nodefence powers it off through its BMC;"
        " choose one fencing for this node (operator guide, 'nodefence and Deckhouse fencing')",
    )


def decide(
    verdicts: Sequence[NodeVerdict],
    leader: LeaderFacts,
    cluster: ClusterFacts,
    profile: DetectionProfile,
) -> PolicyDecision:
    """Which DEAD nodes to fence now, which to hold and why, and what to alert on.

    Only DEAD verdicts can be fenced. Every DEAD verdict not fenced appears in `held` with the
    guard's reason. Leader-wide guards (see the module doc) set `frozen` and hold everyone; a
    broker outage and a storm raise a cluster-wide alert; per-node AGENT_LOST, maintenance and
    missing-inventory alerts are raised only while the leader is fit to judge.
    """
    dead = [v.node for v in verdicts if v.health is NodeHealth.DEAD]
    alerts: list[Alert] = []

    pause = pause_guard(cluster.paused, dead)
    if pause is not None:
        alerts.append(pause[1])
    blind = leader_guard(leader, profile.fence_after)
    if blind is not None:
        if leader.leader_since is not None and not leader.broker_connected:
            alerts.append(Alert(AlertKind.BROKER_DOWN, None, blind))
        return PolicyDecision(frozen=True, alerts=alerts, held=dict.fromkeys(dead, blind))

    storm = storm_guard(verdicts, cluster)
    if storm is not None:
        unhealthy, limit, total = storm
        message = (
            f"storm guard: {unhealthy} of {total} nodes unhealthy at once, more than"
            f" max_unhealthy {cluster.max_unhealthy} ({limit}); all fencing decisions frozen"
        )
        alerts.append(Alert(AlertKind.STORM, None, message))
        return PolicyDecision(frozen=True, alerts=alerts, held=dict.fromkeys(dead, message))

    fence: list[str] = []
    held: dict[str, str] = {}
    for node in sorted(cluster.deckhouse_fencing):
        if node in cluster.inventory:
            alerts.append(deckhouse_alert(node, cluster.deckhouse_fencing[node]))
    for v in verdicts:
        if v.health is NodeHealth.AGENT_LOST:
            alerts.append(Alert(AlertKind.AGENT_LOST, v.node, v.reason))
        if v.health is not NodeHealth.DEAD:
            continue
        reasons: list[str] = []
        if v.node in cluster.kept_out_of_service:
            reasons.append(
                f"fenced by operation {cluster.kept_out_of_service[v.node]} and kept out of"
                " service (cleanup: taint); fenced again only once it has returned"
            )
        may_fence, message = maintenance_guard(
            v.node,
            v.reason,
            v.node in cluster.cordoned,
            cluster.deckhouse_maintenance.get(v.node, ""),
            cluster.workloads.get(v.node),
        )
        if message and v.node not in cluster.maintenance:
            alerts.append(Alert(AlertKind.DOWN_WHILE_CORDONED, v.node, message))
        if not may_fence:
            reasons.append("down while cordoned (or in Deckhouse maintenance), runs nothing")
        if v.node in cluster.maintenance:
            reasons.append("node is in maintenance")
            alerts.append(
                Alert(
                    AlertKind.MAINTENANCE,
                    v.node,
                    f"{v.node} looks dead ({v.reason}) but is in maintenance; not fenced",
                )
            )
        if pause is not None:
            reasons.append(pause[0])
        if v.node not in cluster.inventory:
            reasons.append("node has no BMC inventory entry")
            alerts.append(
                Alert(
                    AlertKind.NO_INVENTORY,
                    v.node,
                    f"{v.node} looks dead ({v.reason}) but has no BMC inventory entry; not"
                    " fenced, add it to the inventory or recover it by hand",
                )
            )
        if reasons:
            held[v.node] = "; ".join(reasons)
        else:
            fence.append(v.node)
    return PolicyDecision(fence=sorted(fence), frozen=False, alerts=alerts, held=held)
