"""The failure detector as pure logic: facts with leader-clock stamps in, verdicts out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodefence.agent.detection.detector import (
    Evidence,
    FailureDetector,
    KubeletFacts,
    NodeHealth,
    NodeVerdict,
    PeerReport,
    kubelet_reading,
    peer_reading,
)
from nodefence.agent.detection.profiles import (
    CONSERVATIVE,
    DEFAULT,
    FAST,
    DetectionProfile,
    NoPeers,
    Signal,
)
from nodefence.agent.heartbeat.codec import Heartbeat

Event = Callable[[FailureDetector], None]


def hb(node: str, interval: float = 1.0) -> Heartbeat:
    return Heartbeat(node=node, seq=0, boot="b", interval=interval, agent="t")


def HB(t: float, node: str = "n1") -> Event:
    return lambda d: d.observe(hb(node), t)


def KUBE(renewed: float | None, ready: bool | None, t: float, node: str = "n1") -> Event:
    return lambda d: d.observe_kubelet(node, renewed, ready, t)


def PEER(peer: str, reachable: bool, t: float, node: str = "n1") -> Event:
    return lambda d: d.observe_peer_report(node, peer, reachable, t)


def EXPECT(t: float, node: str = "n1") -> Event:
    return lambda d: d.expect(node, t)


DOWN = False
UP = True


def verdict(
    events: list[Event],
    at: float,
    profile: DetectionProfile = DEFAULT,
    peers: tuple[str, ...] = ("p1", "p2", "p3"),
) -> NodeVerdict:
    """n1's verdict at `at`, with `peers` heartbeating right up to `at` (healthy probers)."""
    d = FailureDetector(profile)
    for e in events:
        e(d)
    for p in peers:
        d.observe(hb(p), at)
    return {v.node: v for v in d.evaluate(at)}["n1"]


@dataclass(frozen=True)
class Case:
    id: str
    events: list[Event]
    at: float
    health: NodeHealth
    reason: str = ""
    profile: DetectionProfile = DEFAULT
    peers: tuple[str, ...] = ("p1", "p2", "p3")


HOLD = replace(DEFAULT, on_no_peers=NoPeers.HOLD)
KUBELET_ONLY = replace(DEFAULT, require=frozenset({Signal.KUBELET}), veto=frozenset())
NO_VETO = replace(DEFAULT, veto=frozenset())

CASES = [
    Case("heartbeating_node_is_healthy", [HB(10)], 11, NodeHealth.HEALTHY, "last heartbeat 1.0"),
    Case("silent_for_suspect_after_is_suspect", [HB(10)], 12.5, NodeHealth.SUSPECT, "suspect"),
    Case(
        "silent_past_fence_after_without_peer_reports_awaits_a_second_signal",
        [HB(10)],
        14,
        NodeHealth.SUSPECT,
        "awaiting second signal: 0 of 2",
    ),
    Case(
        "silent_past_fence_after_with_a_peer_quorum_unreachable_is_dead",
        [HB(10), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13.1)],
        14,
        NodeHealth.DEAD,
        "peers p1, p2 cannot reach the agent",
    ),
    Case(
        "one_unreachable_report_is_not_a_quorum",
        [HB(10), PEER("p1", DOWN, 13)],
        14,
        NodeHealth.SUSPECT,
        "1 of 2 needed",
    ),
    Case(
        "a_peer_reaching_the_agent_more_recently_means_agent_lost_not_dead",
        [HB(10), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13.1), PEER("p3", UP, 13.2)],
        14,
        NodeHealth.AGENT_LOST,
        "agent lost, node alive: peer p3 reached the agent",
    ),
    Case(
        "a_reachable_report_older_than_the_unreachable_quorum_does_not_save_the_node",
        [HB(10), PEER("p3", UP, 12), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13.1)],
        14,
        NodeHealth.DEAD,
    ),
    Case(
        "only_unreachable_reports_newer_than_every_reachable_one_count",
        [HB(10), PEER("p1", DOWN, 12), PEER("p3", UP, 12.5), PEER("p2", DOWN, 13)],
        14,
        NodeHealth.SUSPECT,
        "1 of 2 needed",
    ),
    Case(
        "a_peer_s_latest_report_replaces_its_earlier_one",
        [HB(10), PEER("p1", DOWN, 12), PEER("p1", UP, 12.5), PEER("p2", DOWN, 12.6)],
        14,
        NodeHealth.SUSPECT,
    ),
    Case(
        "reports_from_before_the_last_heartbeat_are_not_evidence",
        [PEER("p1", DOWN, 9), PEER("p2", DOWN, 9.5), HB(10)],
        14,
        NodeHealth.SUSPECT,
    ),
    Case(
        "reports_older_than_one_window_are_not_evidence",
        [HB(10), PEER("p1", DOWN, 11), PEER("p2", DOWN, 11)],
        15.5,
        NodeHealth.SUSPECT,
    ),
    Case(
        "a_node_reporting_on_itself_is_ignored",
        [HB(10), PEER("n1", DOWN, 13), PEER("p1", DOWN, 13)],
        14,
        NodeHealth.SUSPECT,
    ),
    Case(
        "with_one_peer_in_the_cluster_the_quorum_is_lowered_and_the_reason_says_so",
        [HB(10), PEER("p1", DOWN, 13)],
        14,
        NodeHealth.DEAD,
        "quorum 2 lowered to 1",
        peers=("p1",),
    ),
    Case(
        "a_kubelet_renewal_seen_after_the_next_heartbeat_was_due_vetoes_death",
        [HB(10), KUBE(11.5, True, 11.5), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13)],
        14,
        NodeHealth.AGENT_LOST,
        "kubelet Lease renewed 2.5 s ago, after the last heartbeat",
    ),
    Case(
        "a_kubelet_renewal_within_one_interval_of_the_last_heartbeat_does_not_veto",
        [HB(10), KUBE(10.6, True, 10.6), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13)],
        14,
        NodeHealth.DEAD,
    ),
    Case(
        "a_kubelet_renewal_before_the_last_heartbeat_does_not_veto",
        [KUBE(9, True, 9), HB(10), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13)],
        14,
        NodeHealth.DEAD,
    ),
    Case(
        "the_kubelet_veto_lapses_once_the_renewal_is_stale",
        [HB(10), KUBE(11, True, 11), PEER("p1", DOWN, 31.5), PEER("p2", DOWN, 31.5)],
        31.5,
        NodeHealth.DEAD,
    ),
    Case(
        "a_profile_without_kubelet_veto_ignores_the_renewal",
        [HB(10), KUBE(11, True, 11), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13)],
        14,
        NodeHealth.DEAD,
        profile=NO_VETO,
    ),
    Case(
        "without_peers_the_default_falls_back_to_the_kubelet_which_must_be_stale",
        [KUBE(9, True, 9), HB(10)],
        14,
        NodeHealth.SUSPECT,
        "no peer available to probe it, the kubelet decides",
        peers=(),
    ),
    Case(
        "without_peers_a_stale_kubelet_confirms_death",
        [KUBE(9, True, 9), HB(10)],
        30,
        NodeHealth.DEAD,
        "stale after 20 s",
        peers=(),
    ),
    Case(
        "without_peers_a_not_ready_node_with_no_renewal_since_its_last_heartbeat_is_dead",
        [KUBE(9, False, 9), HB(10), KUBE(None, False, 13)],
        14,
        NodeHealth.DEAD,
        "Ready=False",
        peers=(),
    ),
    Case(
        "without_peers_a_hold_profile_never_declares_death",
        [KUBE(9, False, 9), HB(10)],
        100,
        NodeHealth.SUSPECT,
        "held (on_no_peers: hold)",
        profile=HOLD,
        peers=(),
    ),
    Case(
        "a_kubelet_only_profile_waits_for_the_lease_to_go_stale",
        [KUBE(9, True, 9), HB(10)],
        14,
        NodeHealth.SUSPECT,
        "kubelet Lease fresh",
        profile=KUBELET_ONLY,
    ),
    Case(
        "a_kubelet_only_profile_without_any_lease_observation_never_declares_death",
        [HB(10)],
        100,
        NodeHealth.SUSPECT,
        "kubelet Lease not observed yet",
        profile=KUBELET_ONLY,
    ),
    Case(
        "conservative_needs_peers_and_a_stale_kubelet",
        [KUBE(9, True, 9), HB(10), PEER("p1", DOWN, 39), PEER("p2", DOWN, 39)],
        40,
        NodeHealth.SUSPECT,
        "kubelet Lease fresh",
        profile=CONSERVATIVE,
    ),
    Case(
        "conservative_declares_death_when_both_agree",
        [KUBE(9, True, 9), HB(10), PEER("p1", DOWN, 49), PEER("p2", DOWN, 49)],
        50,
        NodeHealth.DEAD,
        "stale after 40 s",
        profile=CONSERVATIVE,
    ),
    Case("an_expected_node_is_unknown_during_the_window", [EXPECT(0)], 3.9, NodeHealth.UNKNOWN),
    Case(
        "an_expected_node_that_never_sends_is_judged_after_the_window",
        [EXPECT(0), PEER("p1", DOWN, 3), PEER("p2", DOWN, 3)],
        4,
        NodeHealth.DEAD,
        "never heard in 4.0 s",
    ),
    Case(
        "a_resumed_heartbeat_makes_a_dead_node_healthy",
        [HB(10), PEER("p1", DOWN, 13), PEER("p2", DOWN, 13), HB(14.5)],
        15,
        NodeHealth.HEALTHY,
    ),
    Case(
        "a_late_stamp_never_moves_the_last_heartbeat_back",
        [HB(10), HB(5)],
        11,
        NodeHealth.HEALTHY,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_classification(case: Case) -> None:
    v = verdict(case.events, case.at, case.profile, case.peers)
    assert v.health is case.health, v.reason
    assert case.reason in v.reason


def test_a_powered_off_node_is_dead_within_six_seconds_of_its_last_heartbeat() -> None:
    """Simulated leader loop: peers probe suspects and answer after the probe timeout."""
    d = FailureDetector(DEFAULT)
    peers = ["p1", "p2", "p3", "p4"]
    last, t, probing_since = 100.0, 100.0, None
    dead_at = None
    while t < 110 and dead_at is None:
        for node in ["n1", *peers] if t <= last else peers:
            d.observe(hb(node), t)
        verdicts = {v.node: v for v in d.evaluate(t)}
        if verdicts["n1"].health is NodeHealth.DEAD:
            dead_at = t
        elif verdicts["n1"].unhealthy and probing_since is None:
            probing_since = t
        if probing_since is not None and t >= probing_since + DEFAULT.peer_probe_timeout:
            for p in peers[:2]:
                d.observe_peer_report("n1", p, False, t)
        t = round(t + 0.1, 6)
    assert dead_at is not None and dead_at - last <= 6.0
    assert dead_at - last == pytest.approx(DEFAULT.fence_after)


def test_a_verdict_reports_ages_and_the_peer_summary() -> None:
    v = verdict([KUBE(None, True, 5), HB(10), PEER("p1", DOWN, 13), PEER("p2", UP, 12)], 14)
    assert v.since_last_heartbeat == pytest.approx(4.0)
    assert v.kubelet_age == pytest.approx(9.0)  # watched since 5, no renewal seen
    assert v.kubelet_ready is True
    assert (v.peers.reachable, v.peers.unreachable, v.peers.available, v.peers.needed) == (
        1,
        1,
        3,
        2,
    )


def test_an_unknown_node_has_no_heartbeat_age() -> None:
    v = verdict([EXPECT(0)], 1)
    assert v.since_last_heartbeat is None and v.kubelet_age is None


def test_a_suspect_that_announces_a_too_long_interval_gets_a_hint() -> None:
    d = FailureDetector(DEFAULT)
    d.observe(hb("n1", interval=5.0), 10)
    assert "announces a 5 s interval" in d.evaluate(13)[0].reason


def test_evaluate_lists_expected_and_heard_nodes_sorted_but_not_kubelet_only_ones() -> None:
    d = FailureDetector(DEFAULT)
    d.observe(hb("b"), 0)
    d.expect("a", 0)
    d.expect("b", 0)
    d.observe_kubelet("c", 0, True, 0)
    assert [v.node for v in d.evaluate(1)] == ["a", "b"]


def test_a_forgotten_node_and_its_reports_are_gone() -> None:
    d = FailureDetector(DEFAULT)
    for n in ("n1", "p1"):
        d.observe(hb(n), 0)
    d.observe_peer_report("n1", "p1", False, 3)
    d.forget("p1")
    assert [v.node for v in d.evaluate(3.5)] == ["n1"]
    assert d.evaluate(3.5)[0].peers.unreachable == 0
    assert d.last_heartbeat("p1") is None


def test_a_kubelet_renewal_is_never_moved_back_or_forgotten() -> None:
    d = FailureDetector(DEFAULT)
    d.observe_kubelet("n1", 5, True, 5)
    d.observe_kubelet("n1", None, False, 6)
    d.observe_kubelet("n1", 3, False, 7)
    assert d._kubelet["n1"] == KubeletFacts(renewed_at=5, ready=False, watched_since=5)


def test_kubelet_and_peer_readings_are_unknown_without_facts() -> None:
    assert kubelet_reading(None, 0, 10, 20).evidence is Evidence.UNKNOWN
    r, s = peer_reading({}, 0, 10, window=4, available=0, quorum=2)
    assert r.evidence is Evidence.UNKNOWN and s.needed == 0
    r, _ = peer_reading({"p": PeerReport(True, 5)}, 0, 6, window=4, available=1, quorum=2)
    assert r.evidence is Evidence.ALIVE


# --- invariants --------------------------------------------------------------------------

Step = Callable[[FailureDetector, float], None]


def _other_heartbeat(node: str) -> Step:
    return lambda d, now: d.observe(hb(node), now)


def _peer_report(peer: str, reachable: bool) -> Step:
    return lambda d, now: d.observe_peer_report("n1", peer, reachable, now)


def _kubelet(renewed_frac: float | None, ready: bool | None) -> Step:
    def step(d: FailureDetector, now: float) -> None:
        renewed = None if renewed_frac is None else now * renewed_frac
        d.observe_kubelet("n1", renewed, ready, now)

    return step


def _expect(node: str) -> Step:
    return lambda d, now: d.expect(node, now)


other_events = st.one_of(
    st.builds(_other_heartbeat, st.sampled_from(["p1", "p2", "p3"])),
    st.builds(_peer_report, st.sampled_from(["p1", "p2", "p3", "n1"]), st.booleans()),
    st.builds(_kubelet, st.none() | st.floats(0, 1), st.none() | st.booleans()),
    st.builds(_expect, st.sampled_from(["n1", "p4"])),
)


@settings(max_examples=300)
@given(
    profile=st.sampled_from([FAST, DEFAULT, CONSERVATIVE, HOLD, KUBELET_ONLY]),
    steps=st.lists(st.tuples(st.floats(0, 0.99), other_events), max_size=60),
)
def test_a_node_whose_heartbeats_keep_arriving_is_always_healthy(
    profile: DetectionProfile, steps: list[tuple[float, Step]]
) -> None:
    """Gaps below suspect_after keep n1 HEALTHY whatever peers, kubelet and others say."""
    d = FailureDetector(profile)
    now = last = 0.0
    d.observe(hb("n1"), now)
    for frac, event in steps:
        now += frac * profile.suspect_after
        if now - last >= 0.99 * profile.suspect_after:
            d.observe(hb("n1"), now)
            last = now
        event(d, now)
        v = {v.node: v for v in d.evaluate(now)}["n1"]
        assert v.health is NodeHealth.HEALTHY, v.reason


@settings(max_examples=300)
@given(
    last=st.floats(0, 100),
    renewed_after=st.floats(1.001, 10),  # after the next heartbeat (interval 1 s) was due
    # Within `kubelet_stale_after` of the renewal, clear of the bound itself: at exactly 20.0 s
    # `now - renewed` rounds to 20.000000000000004 s, past it (found by a fresh example database).
    eval_after_renewal=st.floats(0, DEFAULT.kubelet_stale_after - 1e-6),
    reports=st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.booleans(), st.floats(0, 200)),
        max_size=20,
    ),
    ready=st.none() | st.booleans(),
    peers=st.integers(0, 3),
)
def test_a_node_whose_kubelet_renewed_after_its_next_heartbeat_was_due_is_never_dead(
    last: float,
    renewed_after: float,
    eval_after_renewal: float,
    reports: list[tuple[str, bool, float]],
    ready: bool | None,
    peers: int,
) -> None:
    d = FailureDetector(DEFAULT)
    renewed = last + renewed_after
    now = renewed + eval_after_renewal
    d.observe_kubelet("n1", None, True, 0)
    d.observe(hb("n1"), last)
    d.observe_kubelet("n1", renewed, ready, renewed)
    for peer, reachable, at in sorted(reports, key=lambda r: r[2]):
        d.observe_peer_report("n1", peer, reachable, min(at, now))
    for p in ["p1", "p2", "p3"][:peers]:
        d.observe(hb(p), now)
    v = {v.node: v for v in d.evaluate(now)}["n1"]
    assert v.health is not NodeHealth.DEAD, v.reason
    if now - last >= DEFAULT.fence_after:
        assert v.health is NodeHealth.AGENT_LOST
