"""The issue-12 faults of `nodefence-hwsim chaos --watchdog` (pure): their place in the
schedule, the record-write traps that time a leader kill or a late save, and the invariants
that catch what they expose. No sockets: the emulators and the API hook have their own tests
(tests/hwsim/test_hwsim_pdu.py, tests/hwsim/test_hwsim_kube_writefaults.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from nodefence.hwsim.chaos.episodes import LEADER_SLOT, slots_of
from nodefence.hwsim.chaos.invariants import InvariantChecker, RecordView, Snapshot
from nodefence.hwsim.chaos.schedule import (
    ISSUE_12_ACTIONS,
    PHASE_KILLS,
    Action,
    Step,
    make_schedule,
    watchdog_settings,
)
from nodefence.hwsim.chaos.traps import MOMENTS, RecordTraps, Trap, moments_of
from nodefence.hwsim.kube.writefaults import AppliedWrite, WriteFault
from nodefence.hwsim.machine import Faults
from nodefence.hwsim.simcluster import node_of_identity
from tests.support.chaos import assert_every_episode_ends_in_the_run, episodes

NODES = [f"node-{i}" for i in range(1, 7)]
PDU = ("node-6",)
WATCHDOG = watchdog_settings(PDU)

# ---- the schedule ---------------------------------------------------------------------------


def test_the_default_schedule_is_the_one_the_ci_seed_always_had() -> None:
    # Seed 8 for 50 s as the schedule made it before the issue-12 faults (commit d2bb40f).
    steps = [(round(s.at, 3), s.action.value, s.node) for s in make_schedule(8, 50, NODES)]
    assert steps == [
        (5.0, "maintenance-enter", "node-6"),
        (10.567, "bmc-fault", "node-3"),
        (16.485, "bmc-clear", "node-3"),
        (18.517, "bmc-fault", "node-5"),
        (24.131, "broker-restart", None),
        (25.399, "bmc-clear", "node-5"),
        (26.978, "maintenance-exit", "node-6"),
        (28.22, "power-loss", "node-3"),
        (33.255, "leader-kill", None),
        (41.863, "agent-restart", None),
        (44.74, "repair", "node-3"),
    ]


@pytest.mark.parametrize("seed", [*range(60), 21, 22, 23])
def test_a_watchdog_run_of_180_s_has_every_issue_12_fault_at_least_once(seed: int) -> None:
    actions = {s.action for s in make_schedule(seed, 180, NODES, WATCHDOG)}
    assert set(ISSUE_12_ACTIONS) <= actions


def test_without_a_pdu_node_there_is_no_pdu_fault() -> None:
    settings = watchdog_settings(())
    for seed in range(10):
        actions = {s.action for s in make_schedule(seed, 180, NODES, settings)}
        assert Action.PDU_NODE_DOWN not in actions
        assert set(ISSUE_12_ACTIONS) - {Action.PDU_NODE_DOWN} <= actions


def held_slots(steps: list[Step], t: float) -> list[tuple[int, frozenset[str]]]:
    """(episode, slots) of every episode open at `t`."""
    return [
        (ep, slots_of(start.action, start.node))
        for ep, (start, end) in episodes(steps).items()
        if start.at <= t < end.at
    ]


@pytest.mark.parametrize("seed", range(25))
def test_watchdog_schedules_hold_at_most_max_faulty_slots_each_by_one_episode(seed: int) -> None:
    steps = make_schedule(seed, 240, NODES, WATCHDOG)
    for t in sorted({s.at for s in steps} | {s.at + 0.001 for s in steps}):
        open_now = held_slots(steps, t)
        slots = [slot for _, held in open_now for slot in held]
        assert len(slots) <= WATCHDOG.max_faulty, (t, open_now)
        assert len(slots) == len(set(slots)), (t, open_now)


@pytest.mark.parametrize("seed", range(25))
def test_every_watchdog_episode_ends_in_time_and_the_right_way(seed: int) -> None:
    steps = make_schedule(seed, 180, NODES, WATCHDOG)
    found = assert_every_episode_ends_in_the_run(steps, WATCHDOG, 180)
    assert len(steps) == 2 * len(found) + sum(s.action is Action.BROKER_RESTART for s in steps)
    for s in steps:
        if s.action is Action.AGENT_STOP and "cut_off_after" in s.params:
            assert s.at + s.params["cut_off_after"] < found[s.episode][1].at


def test_a_phase_kill_holds_its_victim_and_the_leader_slot() -> None:
    assert slots_of(Action.LEADER_KILL_SENT, "node-2") == {"node-2", LEADER_SLOT}
    assert slots_of(Action.LEADER_KILL, None) == {LEADER_SLOT}
    assert slots_of(Action.AGENT_STOP, "node-2") == {"node-2"}


def test_no_broker_restart_while_a_kill_a_late_save_or_an_agent_stop_plays_out() -> None:
    # A broker restart would freeze the leader's decisions (and void a watchdog claim) in the
    # middle of the moment these episodes wait for.
    quiet = PHASE_KILLS | {Action.RECORD_SAVE_TIMEOUT, Action.AGENT_STOP}
    for seed in range(40):
        steps = make_schedule(seed, 240, NODES, WATCHDOG)
        windows = [
            (s.at, next(e.at for e in steps if e.episode == s.episode and e is not s))
            for s in steps
            if s.action in quiet
        ]
        for s in steps:
            if s.action is Action.BROKER_RESTART:
                assert not any(a <= s.at < b for a, b in windows), (seed, s)


def test_issue_12_faults_carry_parameters_the_runner_understands() -> None:
    steps = [s for seed in range(30) for s in make_schedule(seed, 180, NODES, WATCHDOG)]
    seen: set[str] = set()
    for s in steps:
        p: dict[str, Any] = s.params
        if s.action in (Action.CHANNEL_ERROR, Action.CHANNEL_LIE):
            assert p["channel"] in ("ipmi", "redfish")
            Faults(**p["fault"])
            if s.action is Action.CHANNEL_LIE:  # the other channel lies Off, the victim is on
                assert p["liar"] in ("ipmi", "redfish") and p["liar"] != p["channel"]
                assert p["victim"] == "agent-stop+partition"
            else:
                assert p["victim"] == "power-loss" and "liar" not in p
        elif s.action is Action.BMC_PARTITION:
            Faults(**p["bmc"])
        elif s.action is Action.PDU_NODE_DOWN:
            assert s.node in PDU and p["how"] in ("power-loss", "cut-off")
        elif s.action is Action.RECORD_SAVE_TIMEOUT:
            assert p["mode"] in ("hang", "drop") and p["write"] in MOMENTS
            assert s.node not in PDU  # its fence must be able to complete
        elif s.action is Action.LEADER_KILL_SENT:
            assert p["when"] in ("before-answer", "in-walk")
            # in-walk: a victim that stays on, its power-off slowed so the kill lands mid-walk
            assert (p["when"] == "in-walk") == (p["victim"] == "agent-stop+partition")
        if s.action in PHASE_KILLS:
            assert p["victim"] in ("power-loss", "agent-stop+partition")
            assert s.node not in PDU
        seen.add(s.action.value + ":" + ",".join(f"{k}={v}" for k, v in sorted(p.items())))
    assert any(k.startswith("leader-kill-sent:") and "in-walk" in k for k in seen)
    assert any(k.startswith("leader-kill-sent:") and "before-answer" in k for k in seen)


def test_the_required_faults_take_their_most_telling_form() -> None:
    # Without the random draws, only the required episodes remain: each in its telling form.
    only_required = replace(WATCHDOG, weights={Action.BROKER_RESTART.value: 1.0}, broker_gap=1e9)
    for seed in range(20):
        steps = make_schedule(seed, 180, NODES, only_required)
        stop = next(s for s in steps if s.action is Action.AGENT_STOP)
        assert stop.params["cut_off_after"] > 0
        pending = next(s for s in steps if s.action is Action.LEADER_KILL_PENDING)
        assert pending.params == {"victim": "agent-stop+partition", "comes_back": True}


def test_a_run_too_short_for_the_required_faults_still_keeps_the_rules() -> None:
    steps = make_schedule(3, 60, NODES, WATCHDOG)
    assert all(s.at <= 60 - WATCHDOG.tail for s in steps)
    assert make_schedule(3, 60, NODES, WATCHDOG) == steps


# ---- the record-write traps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "before", "after", "moments"),
    [
        ("create", None, {"phase": "Pending"}, {"create"}),
        (
            "update",
            {"phase": "Pending"},
            {"phase": "Fencing", "powerOffSent": True},
            {"power-off-sending"},
        ),
        (
            "update",
            {"phase": "Fencing", "powerOffSent": True},
            {"phase": "FenceFailed", "powerOffSent": True},
            set(),
        ),
        (
            "update",
            {"phase": "Fencing", "powerOffSent": True},
            {"phase": "PoweredOff", "powerOffSent": True, "offProven": True},
            {"proven"},
        ),
        (
            "update",
            {"phase": "Cleaned", "powerOffSent": True, "offProven": True},
            {"phase": "Recovering", "powerOffSent": True, "offProven": True},
            {"recovering"},
        ),
        ("update", {"phase": "Recovering"}, {"phase": "Recovering"}, set()),
        # A record first seen past the point of no return (another leader wrote it before).
        ("update", None, {"phase": "Fencing", "powerOffSent": True}, {"power-off-sending"}),
    ],
)
def test_the_moment_of_an_operation_a_record_write_is(
    verb: str, before: dict[str, Any] | None, after: dict[str, Any], moments: set[str]
) -> None:
    assert moments_of(verb, before, after) == moments


def write(verb: str, node: str, name: str, **status: Any) -> AppliedWrite:
    obj = {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": status}
    return AppliedWrite(verb, "nodefence.io", "fenceoperations", "nodefence", name, "", obj)


def test_a_trap_springs_once_on_its_nodes_record_at_its_moment() -> None:
    sprung: list[tuple[int, str]] = []

    def spring(trap: Trap, w: AppliedWrite) -> WriteFault | None:
        sprung.append((trap.episode, w.name))
        return WriteFault(hold=1.0)

    traps = RecordTraps(spring)
    traps.arm(Trap(7, "node-3", "leader-kill-sent", "power-off-sending"))
    assert traps.hook(write("create", "node-3", "fence-node-3-a", phase="Pending")) is None
    other = write("update", "node-2", "fence-node-2-b", phase="Fencing", powerOffSent=True)
    assert traps.hook(other) is None  # another node's record
    hit = write("update", "node-3", "fence-node-3-a", phase="Fencing", powerOffSent=True)
    assert traps.hook(hit) == WriteFault(hold=1.0)
    again = write("update", "node-3", "fence-node-3-c", phase="Fencing", powerOffSent=True)
    assert traps.hook(again) is None  # sprung once only
    assert sprung == [(7, "fence-node-3-a")]
    trap = traps.disarm(7)
    assert trap is not None and trap.sprung and traps.disarm(7) is None


def test_a_trap_ignores_reads_of_other_resources_and_refuses_an_unknown_moment() -> None:
    traps = RecordTraps(lambda trap, w: pytest.fail("must not spring"))
    traps.arm(Trap(1, "node-3", "record-save-timeout", "create"))
    lease = replace(write("create", "node-3", "x"), resource="leases")
    assert traps.hook(lease) is None
    with pytest.raises(ValueError, match="unknown moment"):
        traps.arm(Trap(2, "node-3", "record-save-timeout", "deleted"))


@pytest.mark.parametrize(
    ("identity", "node"),
    [("node-1", "node-1"), ("node-1-4f2a", "node-1"), ("node-12/ab", "node-12"), ("node-x", None)],
)
def test_the_node_an_agent_identity_names(identity: str, node: str | None) -> None:
    assert node_of_identity(identity, ["node-1", "node-2", "node-12"]) == node


# ---- the invariants these faults need ---------------------------------------------------------

ALL = {"node-1": "uid-1", "node-2": "uid-2", "node-3": "uid-3"}
ON = {"node-1": "on", "node-2": "on", "node-3": "on"}


def look(
    t: float,
    *,
    nodes: Mapping[str, str] = ALL,
    power: Mapping[str, str] = ON,
    records: Mapping[str, RecordView] | None = None,
    heartbeats: Mapping[str, float] | None = None,
    offs: Mapping[str, int] | None = None,  # node -> power-off requests via ipmi
) -> Snapshot:
    return Snapshot(
        t,
        nodes,
        frozenset(),
        power,
        dict.fromkeys(power, 0),
        {},
        records or {},
        {},
        {},
        heartbeats or {},
        {node: {"ipmi": n} for node, n in (offs or {}).items()},
    )


def feed(checker: InvariantChecker, *snaps: Snapshot) -> list[str]:
    for s in snaps:
        checker.observe(s)
    return [v.invariant for v in checker.violations]


def test_a_node_deleted_by_a_watchdog_proof_while_its_machine_ran_is_an_unproven_delete() -> None:
    # The reproduced split brain: a cleanly stopped agent (watchdog disarmed), later cut off
    # with its BMC unreachable, deleted with proof "watchdog" while its machine ran.
    proven = {"fence-node-3-a": RecordView("node-3", "PoweredOff", True, True, False, "watchdog")}
    checker = InvariantChecker()
    gone = {k: v for k, v in ALL.items() if k != "node-3"}
    found = feed(checker, look(0, records=proven), look(1, nodes=gone, records=proven))
    assert found == ["unproven-delete"]
    assert "machine ran (proof: watchdog)" in checker.violations[0].detail


PENDING = {"fence-node-3-a": RecordView("node-3", "Pending")}
SENT = {"fence-node-3-a": RecordView("node-3", "Fencing", True)}


def test_a_power_off_sent_after_the_nodes_heartbeats_came_back_is_a_wrong_fence() -> None:
    # The record is stored at 1.0 s; the node heartbeats again from 2.0 s (it came back); a
    # resumed operation sends the power-off at 4.5 s anyway.
    checker = InvariantChecker(heartbeat_grace=1.0)
    found = feed(
        checker,
        look(0.5, heartbeats={"node-3": 0.2}),
        look(1.0, records=PENDING, heartbeats={"node-3": 0.2}),
        look(2.0, records=PENDING, heartbeats={"node-3": 2.0}),
        look(3.0, records=PENDING, heartbeats={"node-3": 3.0}),
        look(4.5, records=SENT, heartbeats={"node-3": 3.0}),
    )
    assert found == ["wrong-fence"]
    assert "heartbeats reached the broker at 3.00 s" in checker.violations[0].detail


def test_heartbeats_before_the_record_or_too_late_to_be_heard_are_no_wrong_fence() -> None:
    quiet = InvariantChecker(heartbeat_grace=1.0)
    assert (
        feed(
            quiet,
            look(0.5, heartbeats={"node-3": 0.4}),
            look(1.0, records=PENDING, heartbeats={"node-3": 0.4}),
            look(4.5, records=SENT, heartbeats={"node-3": 0.4}),
        )
        == []
    )
    late = InvariantChecker(heartbeat_grace=1.0)
    assert (
        feed(
            late,
            look(1.0, records=PENDING),
            look(4.3, records=PENDING, heartbeats={"node-3": 4.3}),
            look(4.5, records=SENT, heartbeats={"node-3": 4.3}),
        )
        == []
    )


def test_a_power_off_request_before_the_point_of_no_return_is_stored_is_unrecorded_off() -> None:
    checker = InvariantChecker()
    found = feed(
        checker,
        look(0, records=PENDING, offs={"node-3": 0}),
        look(1, records=PENDING, offs={"node-3": 1}),
    )
    assert found == ["unrecorded-off"]
    assert "(via ipmi)" in checker.violations[0].detail
    assert "fence-node-3-a Pending" in checker.violations[0].detail
    fine = InvariantChecker()
    assert (
        feed(
            fine,
            look(0, records=SENT, offs={"node-3": 0}),
            look(1, records=SENT, offs={"node-3": 2}),
        )
        == []
    )


def test_a_late_power_off_after_the_operation_finished_is_unrecorded_off() -> None:
    # An abandoned walk's request arriving once the node was fenced, deleted and came back.
    done = {"fence-node-3-a": RecordView("node-3", "Recovered", True, True, True, "read-back")}
    checker = InvariantChecker()
    found = feed(
        checker,
        look(0, records=done, offs={"node-3": 1}),
        look(1, records=done, offs={"node-3": 2}),
    )
    assert found == ["unrecorded-off"]


def test_a_fence_that_never_reaches_a_final_phase_is_stuck_once() -> None:
    failing = {"fence-node-3-a": RecordView("node-3", "FenceFailed", True)}
    checker = InvariantChecker(fence_deadline=90.0)
    assert feed(checker, look(0, records=failing), look(89, records=failing)) == []
    assert feed(checker, look(91, records=failing), look(95, records=failing)) == ["stuck-fence"]
    assert "still FenceFailed 91 s after it was stored" in checker.violations[0].detail
    # The end of a run checks it too, and a finished operation is never stuck.
    ending = InvariantChecker(fence_deadline=90.0)
    feed(ending, look(0, records=failing))
    assert [v.invariant for v in ending.finish(100.0)] == ["stuck-fence"]
    done = {"fence-node-3-a": RecordView("node-3", "Aborted")}
    assert (
        feed(InvariantChecker(fence_deadline=1.0), look(0, records=done), look(5, records=done))
        == []
    )


OFF_3 = {"node-1": "on", "node-2": "on", "node-3": "off"}


def test_a_machine_off_long_with_its_node_there_and_no_fence_is_not_fenced() -> None:
    # node-3 was fenced before (the Recovered record), came back and died again at 100 s: the
    # old operation is no fence of this death.
    old = {"fence-node-3-old": RecordView("node-3", "Recovered", True, True, True, "read-back")}
    checker = InvariantChecker(unfenced_after=20.0)
    found = feed(
        checker,
        look(99, records=old),
        look(100, records=old, power=OFF_3),
        look(119, records=old, power=OFF_3),
        look(120.5, records=old, power=OFF_3),
        look(125, records=old, power=OFF_3),
    )
    assert found == ["not-fenced"]
    assert "machine off since 100.00 s" in checker.violations[0].detail


def test_a_powered_node_cut_off_long_with_no_fence_is_not_fenced() -> None:
    # Cut off with its agent stopped (watchdog disarmed): it runs on, unreachable, for 25 s.
    checker = InvariantChecker(unfenced_after_cut=25.0)
    cut = replace(look(10), cut_off=frozenset({"node-3"}))
    found = feed(checker, look(9), cut, replace(cut, t=34.0), replace(cut, t=35.5))
    assert found == ["not-fenced"]
    assert "machine on but cut off since 10.00 s" in checker.violations[0].detail
    healed = InvariantChecker(unfenced_after_cut=25.0)
    assert feed(healed, cut, replace(cut, t=30.0), look(31.0), look(40.0)) == []


def test_a_lost_node_is_owed_a_fence_only_once_a_brokers_host_is_reachable_again() -> None:
    # node-3 (broker 1's host) loses power while node-2 (broker 0's) is cut off: no heartbeat
    # reaches any leader, silence proves nothing and nodefence fences nobody, by design. The
    # 20 s count from the first look with a broker back (chaos seed 41: not-fenced at 47.5 s).
    checker = InvariantChecker(unfenced_after=20.0, broker_hosts=("node-2", "node-3"))
    blind = replace(look(0, power=OFF_3), cut_off=frozenset({"node-2"}))
    assert feed(checker, blind, replace(blind, t=14.0), look(15, power=OFF_3)) == []
    assert feed(checker, look(30, power=OFF_3), look(34.9, power=OFF_3)) == []
    assert feed(checker, look(35.5, power=OFF_3)) == ["not-fenced"]
    assert "machine off since 0.00 s" in checker.violations[0].detail
    # One broker's host reachable is enough: the count runs from the power loss.
    heard = InvariantChecker(unfenced_after=20.0, broker_hosts=("node-1", "node-3"))
    assert feed(heard, blind, look(20.5, power=OFF_3)) == ["not-fenced"]


def test_a_machine_off_with_a_fence_under_way_or_in_maintenance_is_not_unfenced() -> None:
    failing = {"fence-node-3-a": RecordView("node-3", "FenceFailed", True)}
    fencing = InvariantChecker(unfenced_after=20.0)
    assert (
        feed(
            fencing,
            look(0, power=OFF_3),
            look(5, power=OFF_3, records=failing),
            look(30, power=OFF_3, records=failing),
        )
        == []
    )
    marked = InvariantChecker(unfenced_after=20.0)
    planned = replace(look(0, power=OFF_3), maintenance=frozenset({"node-3"}))
    assert feed(marked, planned, replace(planned, t=30.0)) == []
    # A fence that finished during the off time counts too (the Node is then gone anyway).
    done = {"fence-node-3-a": RecordView("node-3", "Recovered", True, True, True, "read-back")}
    quick = InvariantChecker(unfenced_after=20.0)
    assert (
        feed(
            quick,
            look(0, power=OFF_3),
            look(6, power=OFF_3, records=done),
            look(30, power=OFF_3, records=done),
        )
        == []
    )
