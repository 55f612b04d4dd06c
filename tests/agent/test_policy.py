"""The fencing guards and detection profiles as pure logic: verdicts and facts in, decisions out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.detection.detector import NodeHealth, NodeVerdict, PeerSummary
from nodefence.agent.detection.policy import (
    AlertKind,
    ClusterFacts,
    LeaderFacts,
    MaxUnhealthy,
    NodeWorkload,
    PolicyDecision,
    decide,
    maintenance_guard,
)
from nodefence.agent.detection.profiles import (
    CONSERVATIVE,
    DEFAULT,
    FAST,
    PROFILES,
    NoPeers,
    ProfileError,
    Signal,
    profile_from_mapping,
)
from nodefence.agent.fencing.pause import Pause

FA = DEFAULT.fence_after
FIT = LeaderFacts(now=100.0, leader_since=0.0, broker_up_since=0.0)


def v(node: str, health: NodeHealth = NodeHealth.HEALTHY) -> NodeVerdict:
    return NodeVerdict(node, health, 0.0, None, None, PeerSummary(), f"{node} is {health}")


def fleet(n: int, dead: int = 0, suspect: int = 0) -> list[NodeVerdict]:
    """`n` nodes w0.., the first `dead` DEAD, the next `suspect` SUSPECT, the rest healthy."""
    out = []
    for i in range(n):
        h = (
            NodeHealth.DEAD
            if i < dead
            else NodeHealth.SUSPECT
            if i < dead + suspect
            else NodeHealth.HEALTHY
        )
        out.append(v(f"w{i}", h))
    return out


def facts(
    verdicts: list[NodeVerdict], max_unhealthy: int | str = "50%", **kw: object
) -> ClusterFacts:
    args: dict[str, object] = {"inventory": frozenset(x.node for x in verdicts), **kw}
    return ClusterFacts(MaxUnhealthy.parse(max_unhealthy), **args)  # type: ignore[arg-type]


def run(verdicts: list[NodeVerdict], leader: LeaderFacts = FIT, **kw: object) -> PolicyDecision:
    return decide(verdicts, leader, facts(verdicts, **kw), DEFAULT)  # type: ignore[arg-type]


# --- per node ----------------------------------------------------------------------------


def test_a_dead_node_with_inventory_is_fenced_when_the_leader_is_fit() -> None:
    d = run(fleet(5, dead=1))
    assert d.fence == ["w0"] and not d.frozen and d.held == {} and d.alerts == []


def test_only_dead_verdicts_are_ever_fenced() -> None:
    verdicts = [v("a", h) for h in NodeHealth]
    verdicts = [replace(x, node=f"n-{x.health}") for x in verdicts] + fleet(10)
    assert run(verdicts).fence == ["n-dead"]


def test_a_node_in_maintenance_is_held_and_alerted_not_fenced() -> None:
    d = run(fleet(5, dead=1), maintenance=frozenset({"w0"}))
    assert d.fence == [] and "maintenance" in d.held["w0"]
    assert [(a.kind, a.node) for a in d.alerts] == [(AlertKind.MAINTENANCE, "w0")]


def test_a_node_without_inventory_is_held_and_alerted_not_fenced() -> None:
    d = run(fleet(5, dead=2), inventory=frozenset({"w1", "w2", "w3", "w4"}))
    assert d.fence == ["w1"]
    assert "no BMC inventory" in d.held["w0"]
    assert [(a.kind, a.node) for a in d.alerts] == [(AlertKind.NO_INVENTORY, "w0")]


def test_an_agent_lost_node_is_alerted_and_never_fenced() -> None:
    verdicts = [v("a", NodeHealth.AGENT_LOST), *fleet(5)]
    d = run(verdicts)
    assert d.fence == [] and d.held == {}
    assert [(a.kind, a.node) for a in d.alerts] == [(AlertKind.AGENT_LOST, "a")]


# --- leader-wide guards ------------------------------------------------------------------

LEADER_CASES = [
    # (id, leader facts, reason fragment, broker alert expected)
    ("not_the_leader", LeaderFacts(100, None, 0), "does not hold the leader Lease", False),
    ("broker_down", LeaderFacts(100, 0, None), "reaches no broker", True),
    ("broker_just_back", LeaderFacts(100, 0, 100 - FA + 0.1), "for 3.9 s only", False),
    ("new_leader", LeaderFacts(100, 100 - FA + 0.5, 0), "a new leader waits", False),
    # A warm leader's history is as old as its broker connection, not as its leadership:
    # what it has not heard for a full window yet, it still does not judge.
    (
        "warm_leader_broker_just_back",
        LeaderFacts(100, 100 - 0.5, 100 - FA + 0.1, warm=True),
        "for 3.9 s only",
        False,
    ),
    ("warm_leader_broker_down", LeaderFacts(100, 100 - 0.5, None, warm=True), "no broker", True),
]


@pytest.mark.parametrize(
    ("leader", "reason", "alert"),
    [c[1:] for c in LEADER_CASES],
    ids=[c[0] for c in LEADER_CASES],
)
def test_a_leader_unfit_to_judge_fences_nobody_and_says_why(
    leader: LeaderFacts, reason: str, alert: bool
) -> None:
    d = run([v("a", NodeHealth.AGENT_LOST), *fleet(5, dead=2)], leader)
    assert d.fence == [] and d.frozen
    assert set(d.held) == {"w0", "w1"} and all(reason in r for r in d.held.values())
    assert [a.kind for a in d.alerts] == ([AlertKind.BROKER_DOWN] if alert else [])


def test_one_full_fence_after_after_reconnect_and_election_the_leader_judges_again() -> None:
    d = run(fleet(5, dead=1), LeaderFacts(100, 100 - FA, 100 - FA))
    assert d.fence == ["w0"]


@pytest.mark.parametrize("leader_ago", [0.0, 0.5, FA - 0.1, FA, 60.0])
def test_a_warm_leader_judges_at_once_what_its_standby_history_covers(leader_ago: float) -> None:
    # Its broker connections have been up for a full window (as a standby): no blind window.
    warm = LeaderFacts(100, 100 - leader_ago, 100 - FA, warm=True)
    assert run(fleet(5, dead=1), warm).fence == ["w0"]
    cold = LeaderFacts(100, 100 - leader_ago, 100 - FA)
    assert run(fleet(5, dead=1), cold).fence == ([] if leader_ago < FA else ["w0"])


def test_more_than_max_unhealthy_nodes_freeze_every_decision_and_raise_a_storm_alert() -> None:
    d = run(fleet(10, dead=3, suspect=2), max_unhealthy="40%")
    assert d.fence == [] and d.frozen
    assert set(d.held) == {"w0", "w1", "w2"} and "storm guard: 5 of 10" in d.held["w0"]
    assert [(a.kind, a.node) for a in d.alerts] == [(AlertKind.STORM, None)]


def test_exactly_max_unhealthy_nodes_do_not_trip_the_storm_guard() -> None:
    assert run(fleet(10, dead=2, suspect=2), max_unhealthy="40%").fence == ["w0", "w1"]
    assert run(fleet(10, dead=2, suspect=1), max_unhealthy=3).fence == ["w0", "w1"]
    assert run(fleet(10, dead=2, suspect=2), max_unhealthy=3).frozen


def test_agent_lost_nodes_count_as_unhealthy_but_maintenance_nodes_do_not() -> None:
    verdicts = [v("lost", NodeHealth.AGENT_LOST), *fleet(4, dead=1)]
    assert run(verdicts, max_unhealthy=1).frozen
    assert not run(verdicts, max_unhealthy=1, maintenance=frozenset({"lost"})).frozen


def test_the_percentage_refers_to_the_expected_node_count_when_given() -> None:
    verdicts = fleet(4, dead=2)
    assert run(verdicts, max_unhealthy="50%").fence == ["w0", "w1"]
    assert run(verdicts, max_unhealthy="50%", expected_nodes=2).frozen


@pytest.mark.parametrize(
    ("text", "total", "limit"),
    [("40%", 10, 4), ("40%", 9, 3), ("0%", 10, 0), ("100%", 7, 7), (3, 10, 3), ("3", 1, 3)],
)
def test_max_unhealthy_reads_counts_and_percentages_rounding_down(
    text: int | str, total: int, limit: int
) -> None:
    assert MaxUnhealthy.parse(text).limit(total) == limit


@pytest.mark.parametrize("bad", ["", "x", "40 %%", "-1", "101%", "1.5", -1, True])
def test_max_unhealthy_rejects_anything_else_naming_the_field(bad: int | str) -> None:
    with pytest.raises(ValueError, match="max_unhealthy"):
        MaxUnhealthy.parse(bad)


# --- invariants --------------------------------------------------------------------------

healths = st.sampled_from(list(NodeHealth))
verdict_lists = st.lists(healths, max_size=30).map(
    lambda hs: [v(f"n{i}", h) for i, h in enumerate(hs)]
)
max_unhealthy = st.one_of(st.integers(0, 30), st.integers(0, 100).map(lambda p: f"{p}%"))


@given(
    verdicts=verdict_lists,
    now=st.floats(0, 1000),
    leader_ago=st.none() | st.floats(0, 2 * FA) | st.floats(0, 1000),
    broker_ago=st.none() | st.floats(0, 2 * FA) | st.floats(0, 1000),
    warm=st.booleans(),
)
def test_no_fence_while_the_broker_is_down_or_within_a_window_of_reconnect_or_election(
    verdicts: list[NodeVerdict],
    now: float,
    leader_ago: float | None,
    broker_ago: float | None,
    warm: bool,
) -> None:
    """A fencible DEAD node and no storm ("100%"): only the leader's own situation decides."""
    leader = LeaderFacts(
        now,
        None if leader_ago is None else now - leader_ago,
        None if broker_ago is None else now - broker_ago,
        warm=warm,
    )
    d = run([v("target", NodeHealth.DEAD), *verdicts], leader, max_unhealthy="100%")
    blind = (
        leader.leader_since is None
        or leader.broker_up_since is None
        or (not warm and now - leader.leader_since < FA)
        or now - leader.broker_up_since < FA
    )
    if blind:
        assert d.fence == [] and d.frozen and "target" in d.held
    else:
        assert "target" in d.fence


@given(verdicts=verdict_lists, mu=max_unhealthy)
def test_more_unhealthy_nodes_than_max_unhealthy_means_no_fence_at_all(
    verdicts: list[NodeVerdict], mu: int | str
) -> None:
    d = run(verdicts, max_unhealthy=mu)
    unhealthy = sum(x.unhealthy for x in verdicts)
    if unhealthy > MaxUnhealthy.parse(mu).limit(len(verdicts)):
        assert d.fence == [] and d.frozen
        assert any(a.kind is AlertKind.STORM for a in d.alerts)


@given(
    verdicts=verdict_lists,
    mu=max_unhealthy,
    maint=st.sets(st.integers(0, 29)),
    uninventoried=st.sets(st.integers(0, 29)),
)
def test_every_fenced_node_is_dead_with_inventory_and_out_of_maintenance(
    verdicts: list[NodeVerdict], mu: int | str, maint: set[int], uninventoried: set[int]
) -> None:
    names = [x.node for x in verdicts]
    cluster = ClusterFacts(
        MaxUnhealthy.parse(mu),
        maintenance=frozenset(f"n{i}" for i in maint),
        inventory=frozenset(names) - {f"n{i}" for i in uninventoried},
    )
    d = decide(verdicts, FIT, cluster, DEFAULT)
    health = {x.node: x.health for x in verdicts}
    for node in d.fence:
        assert health[node] is NodeHealth.DEAD
        assert node in cluster.inventory and node not in cluster.maintenance
    dead = {n for n, h in health.items() if h is NodeHealth.DEAD}
    assert set(d.fence) | set(d.held) == dead and not set(d.fence) & set(d.held)


# --- profiles ----------------------------------------------------------------------------


def test_named_profiles_exist_with_the_documented_thresholds() -> None:
    assert set(PROFILES) == {"fast", "default", "conservative"}
    assert (FAST.interval, FAST.suspect_after, FAST.fence_after) == (0.5, 1.0, 2.0)
    assert (DEFAULT.interval, DEFAULT.suspect_after, DEFAULT.fence_after) == (1.0, 2.5, 4.0)
    assert (CONSERVATIVE.interval, CONSERVATIVE.suspect_after) == (2.0, 10.0)
    assert CONSERVATIVE.fence_after == 30.0 and CONSERVATIVE.kubelet_stale_after == 40.0


def test_the_default_profile_requires_peers_and_lets_the_kubelet_veto() -> None:
    assert DEFAULT.require == {Signal.PEERS} and DEFAULT.veto == {Signal.KUBELET}
    assert DEFAULT.peer_quorum == 2 and DEFAULT.on_no_peers is NoPeers.KUBELET
    assert CONSERVATIVE.require == {Signal.PEERS, Signal.KUBELET}


def test_a_default_dead_verdict_is_possible_within_six_seconds() -> None:
    # Peers probe from suspect_after and answer within the probe timeout, before fence_after.
    assert DEFAULT.suspect_after + DEFAULT.peer_probe_timeout <= DEFAULT.fence_after <= 6.0


def test_overrides_start_from_the_named_profile() -> None:
    p = profile_from_mapping(
        {"profile": "fast", "fence_after": 3, "require": ["peers", "kubelet"], "veto": []}
    )
    assert p.fence_after == 3.0 and p.interval == FAST.interval
    assert p.require == {Signal.PEERS, Signal.KUBELET} and p.veto == frozenset()
    assert profile_from_mapping({}) == DEFAULT
    assert profile_from_mapping({"on_no_peers": "hold"}).on_no_peers is NoPeers.HOLD


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"profile": "turbo"}, "profile"),
        ({"profile": ["fast"]}, "profile"),
        ({"fence_afterr": 3}, "fence_afterr"),
        ({"fence_after": "4s"}, "fence_after"),
        ({"interval": True}, "interval"),
        ({"interval": 0}, "interval"),
        ({"interval": 61, "suspect_after": 70, "fence_after": 80}, "interval"),
        ({"suspect_after": float("nan")}, "suspect_after"),
        ({"suspect_after": 1.0}, "suspect_after"),  # not above the 1 s interval
        ({"fence_after": 2.0}, "fence_after"),  # below suspect_after
        ({"peer_quorum": 0}, "peer_quorum"),
        ({"peer_quorum": 1.5}, "peer_quorum"),
        ({"kubelet_stale_after": -1}, "kubelet_stale_after"),
        ({"require": []}, "require"),
        ({"require": "peers"}, "require"),
        ({"require": ["peers", "peers"]}, "require"),
        ({"veto": ["ping"]}, "veto"),
        ({"on_no_peers": "panic"}, "on_no_peers"),
    ],
)
def test_bad_overrides_raise_an_error_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ProfileError) as e:
        profile_from_mapping(data)
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


# --- maintenance (issue 21) ----------------------------------------------------------------


def test_nodes_in_maintenance_leave_the_storm_guards_denominator() -> None:
    # 5 nodes, 2 in maintenance (powered off for work), 2 of the 3 others dead: 40 % of 3 is
    # 1 node, so this is a storm, not two fences.
    verdicts = fleet(5, dead=2)
    off = [replace(x, health=NodeHealth.DEAD) for x in verdicts[3:]]
    d = run([*verdicts[:3], *off], max_unhealthy="40%", maintenance=frozenset({"w3", "w4"}))
    assert d.frozen and d.fence == []
    assert "2 of 3 nodes" in d.held["w0"]


@pytest.mark.parametrize(
    ("marked", "unschedulable", "alert"),
    [
        (True, False, True),  # `d8 k uncordon` left the mark: never fenced, VMs may land
        (True, True, False),  # in maintenance as it should be
        (False, False, False),
        (False, True, False),  # someone's cordon: not ours to judge
    ],
)
def test_a_node_marked_for_maintenance_but_schedulable_raises_an_alert(
    marked: bool, unschedulable: bool, alert: bool
) -> None:
    from nodefence.agent.detection.policy import marked_schedulable_alerts

    alerts = marked_schedulable_alerts({"w1": (marked, unschedulable), "w2": (False, False)})
    assert [(a.kind, a.node) for a in alerts] == (
        [(AlertKind.MAINTENANCE_SCHEDULABLE, "w1")] if alert else []
    )
    if alert:
        assert "schedulable" in alerts[0].message and "maintenance exit w1" in alerts[0].message


# --- down while cordoned, Deckhouse maintenance, kept out of service ----------------------

NOTHING = NodeWorkload()
VMS = NodeWorkload(vms=("prod/db",))
VOLUMES = NodeWorkload(volumes=("pvc-prod-cache",))
DH_DISABLE = "node-manager.deckhouse.io/fencing-disable"


@pytest.mark.parametrize(
    ("cordoned", "annotation", "workload", "fenced", "says"),
    [
        (False, "", None, True, ""),  # an ordinary node: not this guard's business
        (False, "", NOTHING, True, ""),
        (True, "", NOTHING, False, "runs no ColdStandby VM and holds no volume: not fenced"),
        (True, "", VMS, True, "still runs ColdStandby VMs prod/db: fenced as any other node"),
        (True, "", VOLUMES, True, "still runs volumes pvc-prod-cache: fenced"),
        (True, "", None, True, "could not be read: fenced as any other node"),
        (False, DH_DISABLE, NOTHING, False, f"while annotated {DH_DISABLE} and runs no"),
        (False, DH_DISABLE, VMS, True, "fenced as any other node"),
        (True, DH_DISABLE, NOTHING, False, f"while cordoned and annotated {DH_DISABLE}"),
    ],
    ids=[
        "ordinary-unknown",
        "ordinary-empty",
        "cordoned-empty",
        "cordoned-vms",
        "cordoned-volumes",
        "cordoned-unknown",
        "deckhouse-disabled-empty",
        "deckhouse-disabled-vms",
        "both-empty",
    ],
)
def test_the_maintenance_guard_fences_a_cordoned_node_only_when_fencing_frees_something(
    cordoned: bool, annotation: str, workload: NodeWorkload | None, fenced: bool, says: str
) -> None:
    may, message = maintenance_guard("w0", "silent 4 s", cordoned, annotation, workload)
    assert may is fenced
    assert says in message and (message == "") == (says == "")


def test_a_drained_node_that_goes_silent_is_held_with_a_down_while_cordoned_alert() -> None:
    d = run(fleet(5, dead=1), cordoned=frozenset({"w0"}), workloads={"w0": NOTHING})
    assert d.fence == [] and "w0" in d.held
    [alert] = d.alerts
    assert alert.kind is AlertKind.DOWN_WHILE_CORDONED and alert.node == "w0"
    assert "not fenced" in alert.message


def test_a_cordoned_node_still_running_coldstandby_vms_is_fenced_and_the_alert_says_so() -> None:
    d = run(fleet(5, dead=1), cordoned=frozenset({"w0"}), workloads={"w0": VMS})
    assert d.fence == ["w0"]
    [alert] = d.alerts
    assert alert.kind is AlertKind.DOWN_WHILE_CORDONED and "fenced as any other" in alert.message


def test_a_cordoned_node_that_is_alive_raises_nothing() -> None:
    d = run(fleet(5), cordoned=frozenset({"w0"}), workloads={"w0": NOTHING})
    assert d.fence == [] and d.alerts == []


def test_a_node_fenced_and_kept_out_of_service_is_not_fenced_again_until_it_returns() -> None:
    d = run(fleet(5, dead=1), kept_out_of_service={"w0": "op-1"})
    assert d.fence == [] and "operation op-1" in d.held["w0"] and d.alerts == []


def test_every_inventory_node_deckhouse_also_fences_is_named_in_an_alert() -> None:
    verdicts = fleet(5)
    d = decide(
        verdicts,
        FIT,
        facts(verdicts, deckhouse_fencing={"w1": "Watchdog", "x9": "Watchdog"}),
        DEFAULT,
    )
    [alert] = d.alerts  # x9 has no BMC inventory entry: nodefence would not act on it
    assert alert.kind is AlertKind.DECKHOUSE_FENCING and alert.node == "w1"
    assert "mode Watchdog" in alert.message and "choose one" in alert.message


def test_a_node_kept_out_of_service_does_not_count_towards_the_storm_guard() -> None:
    verdicts = fleet(5, dead=3)  # 40% of 5 tolerates 2
    assert run(verdicts, max_unhealthy="40%").frozen
    d = run(verdicts, max_unhealthy="40%", kept_out_of_service={"w0": "op-1"})
    assert not d.frozen and d.fence == ["w1", "w2"]


# --- the cluster-wide pause (nodefence pause) -----------------------------------------------

PAUSED = "paused by alice since 2026-01-02T10:00:00Z: BMC firmware"
STORM_CASE = {"max_unhealthy": "1"}
PAUSE_CASES = [
    # (id, verdicts, leader, extra cluster facts, fenced, held, frozen)
    ("one_dead", fleet(5, dead=1), FIT, {}, [], ["w0"], False),
    ("nobody_dead", fleet(5), FIT, {}, [], [], False),
    ("two_dead", fleet(5, dead=2), FIT, {}, [], ["w0", "w1"], False),
    ("new_leader", fleet(5, dead=1), LeaderFacts(100, 99, 0), {}, [], ["w0"], True),
    ("storm", fleet(5, dead=2), FIT, STORM_CASE, [], ["w0", "w1"], True),
    (
        "in_maintenance",
        fleet(5, dead=1),
        FIT,
        {"maintenance": frozenset({"w0"})},
        [],
        ["w0"],
        False,
    ),
]


@pytest.mark.parametrize(
    ("verdicts", "leader", "extra", "fenced", "held", "frozen"),
    [c[1:] for c in PAUSE_CASES],
    ids=[c[0] for c in PAUSE_CASES],
)
def test_while_paused_nobody_is_fenced_and_one_alert_says_so(
    verdicts: list[NodeVerdict],
    leader: LeaderFacts,
    extra: dict[str, object],
    fenced: list[str],
    held: list[str],
    frozen: bool,
) -> None:
    d = run(verdicts, leader, paused=PAUSED, **extra)
    assert d.fence == fenced and sorted(d.held) == held and d.frozen is frozen
    [pause] = [a for a in d.alerts if a.kind is AlertKind.PAUSED]
    assert pause.node is None and "BMC firmware" in pause.message
    assert all(w in pause.message for w in held)  # the dead nodes it holds are named
    if not frozen:
        assert all("paused cluster-wide" in d.held[n] for n in held)


def test_the_other_guards_still_alert_while_paused() -> None:
    verdicts = [v("a", NodeHealth.AGENT_LOST), *fleet(5, dead=1)]
    d = run(verdicts, paused=PAUSED, inventory=frozenset({"a", "w1", "w2", "w3", "w4"}))
    kinds = sorted(a.kind.value for a in d.alerts)
    assert kinds == ["agent-lost", "no-inventory", "paused"]
    assert "no BMC inventory" in d.held["w0"] and "paused" in d.held["w0"]


def test_without_a_pause_nothing_changes() -> None:
    assert run(fleet(5, dead=1), paused=None) == run(fleet(5, dead=1))


@pytest.mark.parametrize(
    ("annotation", "reason", "by"),
    [
        (
            '{"reason": "BMC firmware", "by": "alice@ws", "since": "2026-01-02T10:00:00Z"}',
            "BMC firmware",
            "alice@ws",
        ),
        ("firmware work", "firmware work", ""),  # kubectl annotate by hand: text is the reason
        ('{"by": "x"}', '{"by": "x"}', ""),  # JSON without a reason: the text is the reason
        ('{"reason": ""}', "no reason given", ""),
    ],
)
def test_any_pause_annotation_pauses_and_says_why(annotation: str, reason: str, by: str) -> None:
    pause = Pause.parse(annotation)
    assert pause is not None and (pause.reason, pause.by) == (reason, by)
    assert Pause.parse(pause.annotation()) == pause


@pytest.mark.parametrize("annotation", [None, "", "   "])
def test_no_annotation_is_no_pause(annotation: str | None) -> None:
    assert Pause.parse(annotation) is None
