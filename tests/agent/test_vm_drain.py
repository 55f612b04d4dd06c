"""The pure decisions of a maintenance run (issue 21), table by table: which VMs belong to a
drain and when it is done, which operation of a VM to follow, whether the VMs fit elsewhere,
which mark `enter` sets and what `exit` writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.maintenance.mode import (
    DRAINING_VALUE,
    MAINTENANCE_VALUE,
    capacity_refusal,
    enter_refusal,
    exit_patch,
    mark_patch,
    start_mark,
)
from nodefence.agent.maintenance.vm_capacity import (
    Need,
    Room,
    free_rooms,
    quantity,
    unplaceable,
    vm_need,
)
from nodefence.agent.maintenance.vm_drain import FINAL_STAGES, VmStage, plan_vm_drain
from nodefence.agent.maintenance.vm_migration import (
    MigrationState,
    OpRef,
    VmRef,
    existing_operation,
    follow_migration,
    vm_ref,
    vmop_body,
)

N = "node-1"


def vm(name: str, phase: str = "Running", node: str = N, target: str = "") -> VmRef:
    return VmRef("default", name, phase, node, target)


def op(vm_: str, phase: str, op_type: str = "Evict", created: str = "1", **kw: Any) -> OpRef:
    return OpRef("default", f"op-{vm_}-{created}", vm_, phase, type=op_type, created=created, **kw)


def stages(step: Any) -> dict[str, VmStage]:
    return {p.vm.split("/")[1]: p.stage for p in step.progress}


# ---- one VM ------------------------------------------------------------------------------


def test_a_migration_under_way_names_its_target_even_before_the_phase_says_migrating() -> None:
    state = {"startTimestamp": "t0", "source": {"node": "n1"}, "target": {"node": "n2"}}
    obj = {"metadata": {"name": "a"}, "status": {"phase": "Running", "nodeName": "n1"}}
    obj["status"]["migrationState"] = state
    assert vm_ref(obj).target == "n2" and vm_ref(obj).arriving_at("n2")
    obj["status"]["migrationState"] = {**state, "endTimestamp": "t1", "result": "Failed"}
    assert vm_ref(obj).target == "" and not vm_ref(obj).arriving_at("n2")


@pytest.mark.parametrize(
    ("ops", "follow", "wait"),
    [
        ([], None, []),
        ([op("a", "Completed"), op("a", "Failed", created="2")], None, []),
        ([op("a", "Pending", created="2"), op("a", "InProgress")], "op-a-1", ["op-a-2"]),
        ([op("a", "InProgress", "Restart")], None, ["op-a-1"]),
        ([op("a", "Terminating")], None, ["op-a-1"]),  # still counted by the webhook
        ([op("a", "Pending", deleting=True)], None, ["op-a-1"]),
        ([op("a", "Pending", "Migrate"), op("a", "Pending", "Stop", "2")], "op-a-1", ["op-a-2"]),
        ([op("b", "Pending")], None, []),
    ],
)
def test_the_drain_follows_an_unfinished_evict_and_waits_for_other_operations(
    ops: list[OpRef], follow: str | None, wait: list[str]
) -> None:
    found, waiting = existing_operation("a", ops)
    assert (found.name if found else None) == follow
    assert [o.name for o in waiting] == wait


def test_superseded_ends_a_migration_and_says_by_what() -> None:
    superseded = op(
        "a", "Superseded", reason="Superseded", message="Superseded by s with type Stop"
    )
    view = follow_migration(N, vm("a"), superseded)
    assert view.state is MigrationState.FAILED and "Superseded by s" in view.reason


def test_while_it_waits_the_controllers_reason_and_progress_are_shown() -> None:
    pending = op("a", "Pending", reason="MigrationPending", message="Waiting.", progress="0%")
    assert (
        "Pending 0%, MigrationPending: Waiting." in follow_migration(N, vm("a"), pending).describe()
    )


def test_force_is_sent_only_when_asked() -> None:
    assert "force" not in vmop_body("ns", "a", "m")["spec"]
    assert vmop_body("ns", "a", "m", force=True)["spec"]["force"] is True
    assert vmop_body("ns", "a", "m", force=False)["spec"]["force"] is False


# ---- the drain -----------------------------------------------------------------------------


def test_a_vm_arriving_at_the_node_keeps_the_drain_open_until_it_lands_and_leaves() -> None:
    arriving = vm("in", "Migrating", node="node-2", target=N)
    step = plan_vm_drain(N, [arriving], {}, ())
    assert stages(step) == {"in": VmStage.ARRIVING} and not step.done
    landed = plan_vm_drain(N, [vm("in")], {}, ["default/in"])
    assert [v.name for v in landed.start] == ["in"]
    failed_here = plan_vm_drain(N, [vm("in", node="node-2")], {}, ["default/in"])
    assert failed_here.done  # its migration here failed: it never came


def test_a_launcher_pod_on_the_node_keeps_the_drain_open() -> None:
    step = plan_vm_drain(N, [vm("a", node="node-2")], {}, (), hosted=["default/a"])
    assert stages(step) == {"a": VmStage.SETTLING} and not step.done


def test_a_vm_with_another_operation_waits_and_is_not_evicted() -> None:
    step = plan_vm_drain(N, [vm("a")], {}, (), waiting={"default/a": (op("a", "Pending", "Stop"),)})
    assert stages(step) == {"a": VmStage.WAITING} and step.start == () and not step.done
    assert "op-a-1 (Stop, Pending)" in step.progress[0].detail


vm_states = st.tuples(
    st.sampled_from(["Running", "Migrating", "Starting", "Stopped"]),
    st.sampled_from([N, "node-2", ""]),
    st.sampled_from(["", N, "node-3"]),
)


@given(
    vms=st.lists(vm_states, max_size=10),
    ops=st.dictionaries(
        st.integers(0, 9), st.sampled_from(["", "Pending", "InProgress", "Failed"])
    ),
    hosted=st.sets(st.integers(0, 9)),
)
def test_a_drain_is_never_done_while_a_vm_is_on_or_arriving_at_the_node(
    vms: list[tuple[str, str, str]], ops: dict[int, str], hosted: set[int]
) -> None:
    refs = [vm(f"v{i}", phase, node, target) for i, (phase, node, target) in enumerate(vms)]
    followed = {f"default/v{i}": op(f"v{i}", p) for i, p in ops.items() if i < len(refs)}
    pods = [f"default/v{i}" for i in hosted if i < len(refs)]
    step = plan_vm_drain(N, refs, followed, (), hosted=pods)
    busy = [r for r in refs if r.node == N or r.arriving_at(N) or r.key in pods]
    failed = {p.vm for p in step.progress if p.stage is VmStage.FAILED}
    if step.done:
        assert all(r.key in failed for r in busy)  # only a VM that could not move remains
    for p in step.progress:
        if p.stage in FINAL_STAGES - {VmStage.FAILED}:
            assert p.vm not in {r.key for r in busy}


# ---- room elsewhere ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("4", 4), ("500m", 0.5), ("16Gi", 16 * 2**30), ("1G", 10**9), ("1e3", 1000), ("x", None)],
)
def test_quantities_read_as_kubernetes_writes_them(text: str, value: float | None) -> None:
    got = quantity(text)
    assert (got if got is None else float(got)) == value


def test_a_vm_needs_its_cores_times_their_fraction_and_its_memory() -> None:
    obj = {
        "metadata": {"namespace": "d", "name": "a"},
        "spec": {"cpu": {"cores": 4, "coreFraction": "25%"}, "memory": {"size": "2Gi"}},
    }
    assert vm_need(obj) == Need("d/a", 1000, 2 * 2**30)
    assert vm_need({"metadata": {"name": "b"}, "spec": {}}) is None


def test_vms_are_placed_largest_first_where_most_memory_is_free() -> None:
    gib = 2**30
    rooms = free_rooms(
        {"n2": ("4", "8Gi"), "n3": ("4", "8Gi"), "n4": ("", "")},
        [("n2", Need("x", 1000, 4 * gib))],
    )
    assert [(r.node, r.cpu, r.memory) for r in rooms] == [
        ("n2", 3000, 4 * gib),
        ("n3", 4000, 8 * gib),
    ]
    fits = [Need("a", 1000, 6 * gib), Need("b", 1000, 3 * gib)]
    assert unplaceable(fits, rooms) == []
    too_many = [*fits, Need("c", 1000, 3 * gib)]
    assert [n.vm for n in unplaceable(too_many, rooms)] == ["c"]
    assert rooms[0].memory == 4 * gib  # the rooms given are not changed
    why = capacity_refusal(N, too_many, rooms)
    assert why is not None and "1 of the 3 VMs" in why and "c needs 1 CPU / 3 GiB" in why
    assert capacity_refusal(N, too_many, []) is None  # nothing known: not checked
    assert capacity_refusal(N, [], [Room("n2", 0, 0)]) is None


# ---- marks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mark", "ready", "first"),
    [
        ("", True, DRAINING_VALUE),
        (MAINTENANCE_VALUE, True, DRAINING_VALUE),  # VMs may have landed: guard it again
        (MAINTENANCE_VALUE, False, MAINTENANCE_VALUE),  # off for the work: never guard it now
        (MAINTENANCE_VALUE, None, MAINTENANCE_VALUE),
        (DRAINING_VALUE, True, DRAINING_VALUE),
    ],
)
def test_enter_marks_draining_first_except_a_node_already_off_for_its_work(
    mark: str, ready: bool | None, first: str
) -> None:
    assert start_mark(mark, ready) == first


def test_a_node_that_is_not_ready_is_refused_unless_allowed() -> None:
    assert enter_refusal(N, True, False) is None
    assert "not Ready (NotReady)" in (enter_refusal(N, False, False) or "")
    assert "--allow-not-ready" in (enter_refusal(N, None, False) or "")
    assert enter_refusal(N, False, True) is None


def test_enter_and_exit_change_the_mark_and_their_own_cordon_in_one_write() -> None:
    assert mark_patch("draining", cordon=True) == {
        "metadata": {
            "labels": {"nodefence.io/maintenance": "draining"},
            "annotations": {"nodefence.io/maintenance-cordon": "true"},
        },
        "spec": {"unschedulable": True},
    }
    assert exit_patch(cordoned_by_us=False) == {
        "metadata": {"labels": {"nodefence.io/maintenance": None}}
    }
    assert exit_patch(cordoned_by_us=True)["spec"] == {"unschedulable": None}
    assert exit_patch(cordoned_by_us=True)["metadata"]["annotations"] == {
        "nodefence.io/maintenance-cordon": None
    }
