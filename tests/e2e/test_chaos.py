"""`nodefence-hwsim chaos`: the schedule is a pure function of the seed, each invariant check
catches the history that breaks it, and one short fixed-seed run on a real simulated cluster
ends with no violation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nodefence.hwsim.chaos.invariants import InvariantChecker, RecordView, Snapshot, VmView
from nodefence.hwsim.chaos.schedule import (
    CLASSIC_KINDS,
    START_KIND,
    Action,
    ChaosSettings,
    FaultKind,
    make_schedule,
    open_episodes_at,
)
from tests.support.chaos import assert_every_episode_ends_in_the_run

NODES = [f"node-{i}" for i in range(1, 7)]

# ---- the schedule ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    one = make_schedule(7, 300, NODES)
    assert one == make_schedule(7, 300, list(reversed(NODES)))
    assert one != make_schedule(8, 300, NODES)


@pytest.mark.parametrize("max_faulty", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_never_more_than_max_faulty_episodes_nor_two_on_one_node(
    seed: int, max_faulty: int
) -> None:
    settings = ChaosSettings(max_faulty=max_faulty, mean_gap=1.0)
    steps = make_schedule(seed, 400, NODES, settings)
    for t in sorted({s.at for s in steps} | {s.at + 0.001 for s in steps}):
        open_now = open_episodes_at(steps, t)
        assert len(open_now) <= max_faulty, (t, open_now)
        nodes = [s.node for s in open_now if s.node]
        assert len(nodes) == len(set(nodes)), (t, open_now)


def test_every_episode_ends_before_the_run_does_and_after_it_starts() -> None:
    settings = ChaosSettings()
    for seed in range(10):
        steps = make_schedule(seed, 120, NODES, settings)
        for start, end in assert_every_episode_ends_in_the_run(steps, settings, 120).values():
            assert end.node == start.node


def test_every_classic_fault_kind_appears_over_enough_seeds() -> None:
    seen: set[FaultKind] = set()
    for seed in range(20):
        seen |= {
            START_KIND[s.action] for s in make_schedule(seed, 120, NODES) if s.action in START_KIND
        }
    assert seen == CLASSIC_KINDS  # repairs end power losses; the issue-12 kinds need --watchdog
    power_loss = [s for s in make_schedule(3, 120, NODES) if s.action is Action.POWER_LOSS]
    assert all(
        any(
            e.action is Action.REPAIR and e.episode == s.episode
            for e in make_schedule(3, 120, NODES)
        )
        for s in power_loss
    )


def test_bmc_faults_carry_machine_fault_fields_and_leader_kills_no_node() -> None:
    from nodefence.hwsim.machine import Faults

    steps = [s for seed in range(10) for s in make_schedule(seed, 200, NODES)]
    for s in steps:
        if s.action is Action.BMC_FAULT:
            Faults(**s.params)  # every field is a real fault
            assert s.params
        if s.action in (Action.LEADER_KILL, Action.BROKER_RESTART):
            assert s.node is None


# ---- the invariants on synthetic histories --------------------------------------------------


def snap(
    t: float,
    *,
    nodes: Mapping[str, str] | None = None,
    power: Mapping[str, str] | None = None,
    changes: Mapping[str, int] | None = None,
    maintenance: frozenset[str] = frozenset(),
    renew: Mapping[str, str] | None = None,
    records: Mapping[str, RecordView] | None = None,
    vms: Mapping[str, VmView] | None = None,
    running: Mapping[str, frozenset[str]] | None = None,
) -> Snapshot:
    names = ["node-1", "node-2", "node-3"]
    return Snapshot(
        t,
        nodes if nodes is not None else {n: f"uid-{n}" for n in names},
        maintenance,
        power if power is not None else dict.fromkeys(names, "on"),
        changes if changes is not None else dict.fromkeys(names, 0),
        renew or {},
        records or {},
        vms or {},
        running or {},
    )


def feed(checker: InvariantChecker, *snaps: Snapshot) -> list[str]:
    for s in snaps:
        checker.observe(s)
    return [v.invariant for v in checker.violations]


ALL_NODES = {"node-1": "uid-node-1", "node-2": "uid-node-2", "node-3": "uid-node-3"}
WITHOUT_3 = {"node-1": "uid-node-1", "node-2": "uid-node-2"}
OFF_3 = {"node-1": "on", "node-2": "on", "node-3": "off"}
VM_ON_3 = {"default/vm-1": VmView("Running", "node-3", "AlwaysOn")}
VM_ON_1 = {"default/vm-1": VmView("Running", "node-1", "AlwaysOn")}
PROVEN = {"fence-node-3-a": RecordView("node-3", "PoweredOff", True, True, False)}
RECOVERED = {"fence-node-3-a": RecordView("node-3", "Recovered", True, True, True)}


def clean_fence() -> list[Snapshot]:
    """node-3 loses power, is fenced (proven off), deleted; its VM runs on node-1 2 s later."""
    sending = {"fence-node-3-a": RecordView("node-3", "Fencing", True, False, False)}
    return [
        snap(0.0, vms=VM_ON_3, running={"default/vm-1": frozenset({"node-3"})}),
        snap(1.0, power=OFF_3, changes={"node-3": 1}, vms=VM_ON_3),
        snap(5.0, power=OFF_3, changes={"node-3": 1}, records=sending, vms=VM_ON_3),
        snap(5.5, power=OFF_3, changes={"node-3": 1}, records=PROVEN, vms=VM_ON_3),
        snap(5.6, nodes=WITHOUT_3, power=OFF_3, changes={"node-3": 1}, records=PROVEN, vms=VM_ON_3),
        snap(7.6, nodes=WITHOUT_3, power=OFF_3, records=RECOVERED, vms=VM_ON_1),
    ]


def test_a_clean_fence_and_recovery_breaks_no_invariant() -> None:
    checker = InvariantChecker(recovery_deadline=30)
    assert feed(checker, *clean_fence()) == []
    # counted from the proof (5.5 s), after which the release restarts the VM
    assert checker.recoveries == [("default/vm-1", "node-3", 2.1)]
    assert checker.proven == {"fence-node-3-a"} and checker.deleted_nodes == [(5.6, "node-3")]
    assert checker.finish(100.0) == []


def test_a_vm_running_on_two_powered_machines_is_a_split_brain_once() -> None:
    both = {"default/vm-1": frozenset({"node-1", "node-3"})}
    checker = InvariantChecker()
    assert feed(checker, snap(0, running=both), snap(0.05, running=both)) == ["split-brain"]
    assert "node-1, node-3" in checker.violations[0].detail
    # A process on a machine without power runs nowhere: no split brain.
    assert feed(InvariantChecker(), snap(0, running=both, power=OFF_3)) == []


def test_a_node_deleted_while_its_machine_ran_is_an_unproven_delete() -> None:
    checker = InvariantChecker()
    found = feed(checker, snap(0, records=PROVEN), snap(1, nodes=WITHOUT_3, records=PROVEN))
    assert found == ["unproven-delete"]
    assert "machine ran" in checker.violations[0].detail


def test_a_node_deleted_without_an_off_proven_record_is_an_unproven_delete() -> None:
    sent = {"fence-node-3-a": RecordView("node-3", "Fencing", True, False, False)}
    checker = InvariantChecker()
    first = snap(0, power=OFF_3, changes={"node-3": 1}, records=sent)
    gone = replace(first, t=1.0, nodes=WITHOUT_3)
    assert feed(checker, first, gone) == ["unproven-delete"]
    assert "without offProven (Fencing)" in checker.violations[0].detail
    # An old record of an earlier fence of the same node proves nothing about this deletion.
    old = {"fence-node-3-old": RecordView("node-3", "Recovered", True, True, True)}
    checker = InvariantChecker()
    feed(checker, replace(first, records=old), replace(gone, records=old))
    assert [v.invariant for v in checker.violations] == ["unproven-delete"]


def test_a_record_saying_node_deleted_without_off_proven_is_an_unproven_delete() -> None:
    bad = {"fence-node-3-a": RecordView("node-3", "Recovering", True, False, True)}
    assert feed(InvariantChecker(), snap(0, records=bad)) == ["unproven-delete"]


def test_a_node_switched_off_between_two_looks_may_be_deleted() -> None:
    # Power went off and on again between two looks (a repair racing the watcher).
    first = snap(0, records=PROVEN)
    gone = snap(1, nodes=WITHOUT_3, records=PROVEN, changes={"node-3": 2})
    assert feed(InvariantChecker(), first, gone) == []


def test_a_coldstandby_vm_not_running_again_by_the_deadline_is_not_recovered() -> None:
    steps = clean_fence()[:-1]
    stuck = {"default/vm-1": VmView("Pending", None, "AlwaysOn")}
    late = snap(36.0, nodes=WITHOUT_3, power=OFF_3, records=PROVEN, vms=stuck)
    checker = InvariantChecker(recovery_deadline=30)
    assert feed(checker, *steps, replace(late, t=20.0)) == []
    assert feed(checker, late) == ["not-recovered"]
    assert "30 s after node-3" in checker.violations[0].detail
    # Also at the end of a run that stopped watching before the deadline passed.
    checker = InvariantChecker(recovery_deadline=30)
    feed(checker, *steps)
    assert checker.finish(10.0) == [] and len(checker.finish(40.0)) == 1


def test_a_manual_vm_is_not_expected_to_restart() -> None:
    manual = {"default/vm-1": VmView("Running", "node-3", "Manual")}
    steps = [replace(s, vms=manual) if s.vms else s for s in clean_fence()[:-1]]
    checker = InvariantChecker(recovery_deadline=1)
    feed(checker, *steps, snap(40, nodes=WITHOUT_3, power=OFF_3, records=PROVEN))
    assert checker.violations == [] and checker.finish(50) == []


def test_a_power_off_sent_to_a_node_in_maintenance_is_a_wrong_fence() -> None:
    sent = {"fence-node-3-a": RecordView("node-3", "Fencing", True, False, False)}
    marked = frozenset({"node-3"})
    checker = InvariantChecker(maintenance_grace=1.0)
    found = feed(checker, snap(0, maintenance=marked), snap(5, maintenance=marked, records=sent))
    assert found == ["wrong-fence"]
    assert "into maintenance" in checker.violations[0].detail
    # Marked a moment before: the leader could not have known yet.
    quick = InvariantChecker(maintenance_grace=1.0)
    assert (
        feed(quick, snap(4.8, maintenance=marked), snap(5, maintenance=marked, records=sent)) == []
    )


def test_a_power_off_sent_while_the_kubelet_kept_renewing_is_a_wrong_fence() -> None:
    sent = {"fence-node-3-a": RecordView("node-3", "Fencing", True, False, False)}
    renewals = [snap(t, renew={"node-3": f"r{t}"}) for t in (0.0, 2.0, 4.0, 6.0)]
    checker = InvariantChecker(kubelet_alive_window=4.5)
    found = feed(checker, *renewals, snap(6.5, renew={"node-3": "r6.0"}, records=sent))
    assert found == ["wrong-fence"]
    assert "kubelet renewed" in checker.violations[0].detail


def test_a_kubelet_whose_last_renewal_came_before_the_silence_is_not_alive() -> None:
    sent = {"fence-node-3-a": RecordView("node-3", "Fencing", True, False, False)}
    renewals = [snap(t, renew={"node-3": f"r{t}"}) for t in (0.0, 2.0, 4.0)]
    # Partitioned at 4.1 s: no renewal since; the power-off goes out 4.5 s later.
    checker = InvariantChecker(kubelet_alive_window=4.5)
    assert feed(checker, *renewals, snap(8.6, renew={"node-3": "r4.0"}, records=sent)) == []


# ---- the command ----------------------------------------------------------------------------


async def test_the_chaos_command_refuses_too_few_nodes_or_too_many_faulty_ones() -> None:
    from tests.conftest import run_cli

    few = await run_cli("chaos", "--nodes", "3", module="nodefence.hwsim.cli")
    assert few.code == 2 and "at least 4 nodes" in few.err
    many = await run_cli("chaos", "--nodes", "6", "--max-faulty", "4", module="nodefence.hwsim.cli")
    assert many.code == 2 and "--max-faulty" in many.err
    bad = await run_cli("chaos", "--duration", "0", module="nodefence.hwsim.cli")
    assert bad.code == 2 and "positive" in bad.err


# ---- one real run ---------------------------------------------------------------------------


def test_a_short_fixed_seed_chaos_run_breaks_no_invariant(tmp_path: Path) -> None:
    from nodefence.hwsim.chaos.run import ChaosOptions, run_chaos

    opts = ChaosOptions(seed=CI_SEED, duration=CI_DURATION, workdir=tmp_path / "chaos", echo=False)
    result = run_chaos(opts)
    report: dict[str, Any] = result.report
    timeline = "\n".join(
        f"{e['t']:8.2f}s {e['kind']} {e['node']} {e['detail']}" for e in report["timeline"]
    )
    assert result.ok, f"{report['violations']}\n{timeline}"
    counts = report["counts"]
    assert len(counts["faults"]) >= 3, timeline
    assert counts["fences"]["proven_off"] >= 1 and counts["fences"]["nodes_deleted"] >= 1, timeline
    assert counts["recoveries"] >= 1, timeline
    assert result.path.exists() and result.path.read_text().startswith("{")


CI_SEED = 8  # maintenance, BMC faults, a broker restart, a power loss (fenced), a leader kill
CI_DURATION = 50.0


def test_a_vm_running_on_a_node_in_maintenance_when_its_power_is_cut_is_lost() -> None:
    # `maintenance enter` said done while vm-1 was still arriving at node-3: the planned power
    # cut kills it, and no fence will ever restart it elsewhere.
    marked = frozenset({"node-3"})
    there = {"default/vm-1": frozenset({"node-3"})}
    checker = InvariantChecker()
    found = feed(
        checker,
        snap(0, maintenance=marked, vms=VM_ON_3, running=there),
        snap(1, maintenance=marked, power=OFF_3, changes={"node-3": 1}, vms=VM_ON_3),
    )
    assert found == ["lost-in-maintenance"]
    assert "default/vm-1" in checker.violations[0].detail
    # An empty node in maintenance may be powered off; so may a node not in maintenance
    # (fencing recovers its VMs, checked by the other invariants).
    assert feed(InvariantChecker(), snap(0, maintenance=marked), snap(1, maintenance=marked,
                power=OFF_3, changes={"node-3": 1})) == []  # fmt: skip
    assert feed(InvariantChecker(), snap(0, vms=VM_ON_3, running=there),
                snap(1, power=OFF_3, changes={"node-3": 1}, vms=VM_ON_3)) == []  # fmt: skip


def test_some_power_losses_aim_at_the_leaders_machine_without_changing_other_steps() -> None:
    from dataclasses import replace

    aimed = [
        s
        for seed in range(10)
        for s in make_schedule(seed, 200, NODES)
        if s.params.get("victim") == "leader"
    ]
    assert aimed and all(s.action is Action.POWER_LOSS and s.node for s in aimed)
    # Its own random stream: without it, every seed plays the very same steps.
    for seed in range(10):
        never = replace(ChaosSettings(), leader_victims=0.0)
        plain = make_schedule(seed, 200, NODES, never)
        with_aim = make_schedule(seed, 200, NODES)
        assert [(s.at, s.action, s.node, s.episode) for s in plain] == [
            (s.at, s.action, s.node, s.episode) for s in with_aim
        ]
