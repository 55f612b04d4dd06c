"""Maintenance mode and live migration without sockets: the pure decisions of
`nodefence.agent.maintenance.mode`, the commands of `nodefence.agent.maintenance.vmops_executor`
against an in-memory API with a tiny virtualization controller, the terminal reporter, and the fence
executor's maintenance abort."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.cli.maintenance import TerminalProgress
from nodefence.agent.kube.client import MAINTENANCE_LABEL, ClusterApi, ClusterError
from nodefence.agent.maintenance.mode import (
    NodeFacts,
    NodeState,
    did_you_mean,
    enter_verdict,
    maintenance_rows,
    node_state,
)
from nodefence.agent.maintenance.pod_drain import (
    PodAction,
    PodDrain,
    classify_pod,
    eviction_retry_delay,
)
from nodefence.agent.maintenance.vm_drain import (
    FINAL_STAGES,
    IN_FLIGHT,
    DrainStep,
    VmProgress,
    VmStage,
    plan_vm_drain,
)
from nodefence.agent.maintenance.vm_migration import (
    MigrationState,
    OpRef,
    VmRef,
    follow_migration,
    op_ref,
    vm_ref,
    vmop_body,
    vmop_name,
)
from nodefence.agent.maintenance.vmops_executor import (
    UnknownObject,
    VmopsError,
    enter_maintenance,
    exit_maintenance,
    migrate_vm,
)
from tests.support.clock import FakeClock
from tests.support.maintenance_fakes import FakeApi, N, Recorder, as_api, cluster, enter


def vm(name: str, phase: str = "Running", node: str = N, target: str = "") -> VmRef:
    return VmRef("default", name, phase, node, target)


def op(name: str, phase: str = "", reason: str = "", message: str = "") -> OpRef:
    return OpRef("default", f"migrate-{name}-1", name, phase, reason, message)


def stages(step: DrainStep) -> dict[str, VmStage]:
    return {p.vm.split("/")[1]: p.stage for p in step.progress}


# ---- parsing API objects --------------------------------------------------------------------


def test_vm_ref_reads_phase_node_and_the_migration_target() -> None:
    obj = {
        "metadata": {"namespace": "ns", "name": "a"},
        "status": {
            "phase": "Migrating",
            "nodeName": "n1",
            "migrationState": {"target": {"node": "n2"}},
        },
    }
    assert vm_ref(obj) == VmRef("ns", "a", "Migrating", "n1", "n2")
    obj["status"]["phase"] = "Running"  # an old migrationState is not a target
    assert vm_ref(obj).target == ""
    assert vm_ref({"metadata": {"name": "x"}}) == VmRef("", "x", "", "", "")


def test_op_ref_takes_the_failure_reason_from_the_completed_condition() -> None:
    obj = {
        "metadata": {"namespace": "ns", "name": "migrate-a-1"},
        "spec": {"type": "Evict", "virtualMachineName": "a"},
        "status": {
            "phase": "Failed",
            "conditions": [
                {"type": "SignalSent", "status": "True", "reason": "SignalSentSuccess"},
                {
                    "type": "Completed",
                    "status": "False",
                    "reason": "TargetUnschedulable",
                    "message": "0/2 nodes are available",
                },
            ],
        },
    }
    ref = op_ref(obj)
    assert ref.failed and not ref.completed and ref.vm == "a"
    assert ref.why == "TargetUnschedulable: 0/2 nodes are available"


def test_operation_names_follow_the_seed_and_stay_valid() -> None:
    assert vmop_name("linux-vm", 1700000000.7) == "migrate-linux-vm-1700000000"
    assert vmop_name("linux-vm", 1700000000, attempt=2) == "migrate-linux-vm-1700000000-2"
    assert len(vmop_name("v" * 260, 1, attempt=3)) == 253
    body = vmop_body("ns", "linux-vm", "migrate-linux-vm-1", node="node-1")
    assert body["apiVersion"] == "virtualization.deckhouse.io/v1alpha2"
    assert body["spec"] == {"type": "Evict", "virtualMachineName": "linux-vm"}
    assert body["metadata"]["labels"] == {"nodefence.io/maintenance-node": "node-1"}
    assert "labels" not in vmop_body("ns", "a", "m")["metadata"]


# ---- one migration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "operation", "state"),
    [
        (vm("a"), op("a", ""), MigrationState.PENDING),
        (vm("a"), op("a", "Pending"), MigrationState.PENDING),
        (vm("a", "Migrating", target="node-2"), op("a", "InProgress"), MigrationState.MIGRATING),
        (vm("a", node="node-2"), op("a", "Completed"), MigrationState.DONE),
        (vm("a"), op("a", "Completed"), MigrationState.MIGRATING),  # status not caught up yet
        (vm("a"), op("a", "Failed", "TargetUnschedulable", "no node"), MigrationState.FAILED),
        (vm("a"), op("a", "Terminating"), MigrationState.FAILED),
        (None, op("a", "InProgress"), MigrationState.FAILED),
        (vm("a"), None, MigrationState.FAILED),
    ],
)
def test_a_migration_is_done_only_when_completed_and_running_elsewhere(
    now: VmRef | None, operation: OpRef | None, state: MigrationState
) -> None:
    view = follow_migration(N, now, operation)
    assert view.state is state
    assert view.final == (state in (MigrationState.DONE, MigrationState.FAILED))


def test_a_failed_migration_says_why_in_the_controllers_words() -> None:
    view = follow_migration(N, vm("a"), op("a", "Failed", "TargetUnschedulable", "0/2 nodes"))
    assert view.reason == "TargetUnschedulable: 0/2 nodes"
    assert "TargetUnschedulable" in view.describe()
    moving = follow_migration(N, vm("a", "Migrating", target="node-2"), op("a", "InProgress"))
    assert "node-1 -> node-2" in moving.describe()


# ---- moving every VM off a node --------------------------------------------------------------


def test_at_most_parallel_vms_are_evicted_at_once_the_rest_queue() -> None:
    vms = [vm(f"v{i}") for i in range(5)] + [vm("elsewhere", node="node-2")]
    step = plan_vm_drain(N, vms, {}, (), parallel=2)
    assert [v.name for v in step.start] == ["v0", "v1"]
    assert stages(step) == {
        "v0": VmStage.REQUESTED,
        "v1": VmStage.REQUESTED,
        "v2": VmStage.QUEUED,
        "v3": VmStage.QUEUED,
        "v4": VmStage.QUEUED,
    }
    assert not step.done


def test_migrations_in_flight_hold_their_slots() -> None:
    vms = [vm("v0", "Migrating", target="node-2"), vm("v1"), vm("v2")]
    ops = {"default/v0": op("v0", "InProgress"), "default/v1": op("v1", "Pending")}
    step = plan_vm_drain(N, vms, ops, ["default/v0", "default/v1", "default/v2"], parallel=2)
    assert step.start == ()
    assert stages(step)["v0"] is VmStage.MIGRATING and stages(step)["v2"] is VmStage.QUEUED


def test_a_failed_operation_frees_its_slot_is_not_retried_and_is_reported() -> None:
    vms = [vm("v0"), vm("v1")]
    ops = {"default/v0": op("v0", "Failed", "TargetUnschedulable", "0/2 nodes are available")}
    step = plan_vm_drain(N, vms, ops, ["default/v0", "default/v1"], parallel=1)
    assert [v.name for v in step.start] == ["v1"]
    assert [p.vm for p in step.failed] == ["default/v0"]
    assert "TargetUnschedulable" in step.failed[0].detail


def test_a_vm_changing_by_itself_is_waited_for_not_evicted() -> None:
    vms = [vm("mig", "Migrating", target="node-3"), vm("boot", "Starting"), vm("stop", "Stopping")]
    step = plan_vm_drain(N, vms, {}, (), parallel=5)
    assert step.start == ()
    assert set(stages(step).values()) == {VmStage.SETTLING}
    assert not step.done


def test_vms_that_left_are_moved_when_ours_and_left_otherwise() -> None:
    vms = [vm("ours", node="node-2"), vm("stopped", "Stopped", node=""), vm("other", node="node-3")]
    ops = {"default/ours": op("ours", "Completed")}
    seen = ["default/ours", "default/stopped", "default/other", "default/deleted"]
    step = plan_vm_drain(N, vms, ops, seen)
    assert stages(step) == {
        "ours": VmStage.MOVED,
        "stopped": VmStage.LEFT,
        "other": VmStage.LEFT,
        "deleted": VmStage.LEFT,
    }
    assert step.done and step.remaining == () and step.count(VmStage.MOVED) == 1
    assert "moved node-1 -> node-2" in step.progress[2].describe(N)


def test_a_completed_operation_with_the_vm_still_here_is_not_done() -> None:
    step = plan_vm_drain(N, [vm("a")], {"default/a": op("a", "Completed")}, ["default/a"])
    assert stages(step) == {"a": VmStage.MIGRATING} and not step.done


def test_an_empty_node_is_done_at_once() -> None:
    step = plan_vm_drain(N, [vm("x", node="node-2")], {}, ())
    assert step.done and step.progress == () and step.summary() == "0 VMs: none"


phases = st.sampled_from(["Running", "Migrating", "Starting", "Stopped", "Pause", "Degraded"])
op_phases = st.sampled_from(["", "Pending", "InProgress", "Completed", "Failed"])


@given(
    vms=st.lists(st.tuples(phases, st.sampled_from([N, "node-2", ""])), max_size=12),
    ops=st.dictionaries(st.integers(0, 11), op_phases),
    parallel=st.integers(1, 4),
)
def test_the_plan_never_exceeds_parallel_and_never_evicts_twice(
    vms: list[tuple[str, str]], ops: dict[int, str], parallel: int
) -> None:
    refs = [vm(f"v{i}", phase, node) for i, (phase, node) in enumerate(vms)]
    ours = {f"default/v{i}": op(f"v{i}", p) for i, p in ops.items() if i < len(refs)}
    step = plan_vm_drain(N, refs, ours, (), parallel)
    started = {v.key for v in step.start}
    prior = sum(1 for p in step.progress if p.stage in IN_FLIGHT and p.vm not in started)
    waiting = [p for p in step.progress if p.stage is VmStage.QUEUED]
    assert len(step.start) <= max(0, parallel - prior)  # never more than parallel at once
    assert not waiting or prior + len(step.start) >= parallel  # no idle slot while VMs wait
    for vm_ in step.start:
        assert vm_.node == N and vm_.key not in ours  # evicted once, and only from this node
        assert vm_.phase not in ("Migrating", "Starting", "Stopping", "Terminating")
    on_node = {r.key for r in refs if r.node == N}
    assert on_node <= {p.vm for p in step.progress}  # every VM on the node is accounted for
    assert len({p.vm for p in step.progress}) == len(step.progress)
    assert step.done == (not step.start and all(p.stage in FINAL_STAGES for p in step.progress))


# ---- pods ----------------------------------------------------------------------------------


def pod(
    name: str,
    owner: str | None = "ReplicaSet",
    phase: str = "Running",
    **meta: Any,
) -> dict[str, Any]:
    refs = [{"kind": owner, "name": "x", "controller": True}] if owner else []
    return {
        "metadata": {"namespace": "default", "name": name, "ownerReferences": refs, **meta},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("the_pod", "force", "action"),
    [
        (pod("web"), False, PodAction.EVICT),
        (pod("launcher", "VirtualMachine"), False, PodAction.EVICT),
        (pod("ds", "DaemonSet"), False, PodAction.SKIP_DAEMONSET),
        (pod("ds", "DaemonSet"), True, PodAction.SKIP_DAEMONSET),
        (
            pod("static", None, annotations={"kubernetes.io/config.mirror": "x"}),
            False,
            PodAction.SKIP_MIRROR,
        ),
        (pod("going", deletionTimestamp="2024-01-01T00:00:00Z"), False, PodAction.WAIT_DELETING),
        (pod("bare", None), False, PodAction.REFUSE_UNMANAGED),
        (pod("bare", None), True, PodAction.EVICT),
        (pod("done", None, "Succeeded"), False, PodAction.EVICT),
    ],
)
def test_pods_are_drained_as_kubectl_drain_ignore_daemonsets_does(
    the_pod: dict[str, Any], force: bool, action: PodAction
) -> None:
    assert classify_pod(the_pod, force) is action


def test_refused_evictions_back_off_doubling_up_to_five_seconds() -> None:
    assert [eviction_retry_delay(a) for a in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


# ---- node state and verdicts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("marked", "cordoned", "vms", "state"),
    [
        ("", False, 3, NodeState.SCHEDULABLE),
        ("", True, 0, NodeState.CORDONED),
        ("true", False, 0, NodeState.MARKED_SCHEDULABLE),
        ("draining", True, 2, NodeState.DRAINING),
        ("draining", True, 0, NodeState.DRAINING),
        ("true", True, 0, NodeState.IN_MAINTENANCE),
        ("true", True, 1, NodeState.MARKED_WITH_VMS),
    ],
)
def test_node_state_comes_from_mark_cordon_and_vms_left(
    marked: str, cordoned: bool, vms: int, state: NodeState
) -> None:
    assert node_state(marked, cordoned, vms) is state


def test_maintenance_rows_show_marked_nodes_and_their_vms() -> None:
    nodes = [
        NodeFacts("node-2", "draining", True, True),
        NodeFacts("node-1", "", False, True),
        NodeFacts("node-3", "true", True, None),
    ]
    vms = [vm("a", node="node-2"), vm("b", node="node-1"), vm("c", "Stopped", node="")]
    rows = maintenance_rows(nodes, vms)
    assert [(r.node, r.state, r.vms) for r in rows] == [
        ("node-2", NodeState.DRAINING, 1),
        ("node-3", NodeState.IN_MAINTENANCE, 0),
    ]
    assert [r.node for r in maintenance_rows(nodes, vms, every_node=True)] == [
        "node-1",
        "node-2",
        "node-3",
    ]


def test_a_run_that_left_vms_fails_names_them_and_says_the_node_stays_marked() -> None:
    failed = VmProgress("default/a", VmStage.FAILED, N, detail="TargetUnschedulable: no node")
    moved = VmProgress("default/b", VmStage.MOVED, "node-2", "node-2")
    ok, lines = enter_verdict(N, DrainStep((failed, moved), ()), None)
    assert not ok
    text = "\n".join(lines)
    assert "default/a: TargetUnschedulable: no node" in text and "default/b" not in text
    assert "stays cordoned and marked" in text


def test_a_run_that_timed_out_says_so() -> None:
    waiting = VmProgress("default/a", VmStage.MIGRATING, N, "node-2")
    ok, lines = enter_verdict(N, DrainStep((waiting,), ()), None, timed_out=True)
    assert not ok and "within the timeout" in lines[0] and "default/a: migrating" in lines[1]


def test_pods_that_stayed_fail_the_run_and_unmanaged_ones_ask_for_force() -> None:
    moved = DrainStep((VmProgress("default/b", VmStage.MOVED, "node-2", "node-2"),), ())
    pods = PodDrain(unmanaged=("default/bare",), stuck=(("default/web", "budget says no"),))
    ok, lines = enter_verdict(N, moved, pods)
    text = "\n".join(lines)
    assert not ok and "--evict-unmanaged" in text and "default/web: budget says no" in text
    ok, lines = enter_verdict(N, moved, PodDrain(evicted=("default/web",), skipped=("d/ds",)))
    assert ok and "1 VMs moved, 1 pods evicted, 1 DaemonSet or static pods left" in lines[0]
    ok, lines = enter_verdict(N, moved, None)
    assert ok and "--vms-only" in lines[0]


def test_a_typo_gets_a_suggestion() -> None:
    assert did_you_mean("node-l", ["node-1", "node-2", "master"]).startswith(" (did you mean node-")
    assert did_you_mean("zzz", ["node-1"]) == ""


# ---- the terminal reporter -------------------------------------------------------------------


def test_off_a_terminal_steps_are_lines_and_status_is_left_out() -> None:
    out = io.StringIO()
    p = TerminalProgress(out, tty=False)
    p.step("Running node-1")
    p.status("3 VMs: 1 moved")
    p.line("done")
    p.close()
    assert out.getvalue() == "Running node-1\ndone\n"


def test_on_a_terminal_steps_are_redrawn_in_place_and_the_last_one_stays() -> None:
    out = io.StringIO()
    p = TerminalProgress(out, tty=True)
    p.step("Running node-1")
    p.step("Migrating node-1 -> node-2")
    p.line("migrated")
    p.status("summary")
    p.line("vm a: moved")
    p.close()
    text = out.getvalue()
    assert text.startswith("\r\x1b[KRunning node-1\r\x1b[KMigrating node-1 -> node-2\nmigrated\n")
    assert text.endswith("\r\x1b[Ksummary\r\x1b[Kvm a: moved\n\r\x1b[Ksummary\r\x1b[K")


# ---- the commands against an in-memory API ---------------------------------------------------


async def test_enter_marks_and_cordons_in_one_write_before_any_vm_moves() -> None:
    api = cluster()
    ok, lines, _ = await enter(api, vms_only=True)
    assert ok, lines
    assert api.calls[0] == (
        f"patch {N} {MAINTENANCE_LABEL}=draining @nodefence.io/maintenance-cordon=true "
        "unschedulable=True"
    )
    assert api.calls[1].startswith("create migrate-vm-")
    assert api.calls[-1] == f"patch {N} {MAINTENANCE_LABEL}=true"  # empty: now never fenced
    assert all(v["status"]["nodeName"] != N for v in api.vms.values())


async def test_enter_keeps_at_most_parallel_migrations_in_flight() -> None:
    api = cluster(vms_on_node=7)
    ok, _, rec = await enter(api, vms_only=True, parallel=2)
    assert ok and 0 < api.max_in_flight <= 2
    assert sum("moved node-1 -> " in line for line in rec.lines) == 7


async def test_a_vm_that_cannot_move_fails_the_run_by_name_and_the_node_stays_guarded() -> None:
    api = cluster()
    api.unmovable = {"vm-1"}
    ok, lines, _ = await enter(api)
    assert not ok
    assert "default/vm-1: TargetUnschedulable: no room" in "\n".join(lines)
    assert api.nodes[N]["unschedulable"]
    assert api.nodes[N]["labels"][MAINTENANCE_LABEL] == "draining"
    assert not any(c.startswith("evict") for c in api.calls)  # pods left alone


async def test_an_unknown_node_is_a_clear_error_and_changes_nothing() -> None:
    api = cluster()
    with pytest.raises(UnknownObject, match=r"no node named 'node-l' \(did you mean node-1"):
        await enter_maintenance(as_api(api), "node-l", timeout=5, reporter=Recorder())
    assert api.calls == []


async def test_the_pods_drain_retries_a_disruption_budget_until_it_allows() -> None:
    api = cluster(vms_on_node=1)
    api.pods = {
        "web": pod("web"),
        "ds": pod("ds", "DaemonSet"),
        "done": pod("done", None, "Succeeded"),
    }
    api.refusals = {"web": 2}
    ok, lines, rec = await enter(api)
    assert ok, lines
    assert api.calls.count("evict web") == 3 and "evict ds" not in api.calls
    refused = [line for line in rec.lines if "eviction refused" in line]
    assert len(refused) == 1 and "disruption budget" in refused[0]  # said once, not per retry
    assert "2 pods evicted, 1 DaemonSet or static pods left" in lines[0]


async def test_a_budget_that_never_allows_fails_at_the_timeout_naming_the_pod() -> None:
    api = cluster(vms_on_node=0)
    api.pods = {"web": pod("web")}
    api.refusals = {"web": 10**6}
    ok, lines, _ = await enter(api, timeout=3)
    assert not ok and "default/web: The disruption budget web" in "\n".join(lines)


async def test_a_pod_no_controller_manages_stops_the_drain_before_any_eviction() -> None:
    api = cluster(vms_on_node=0)
    api.pods = {"web": pod("web"), "bare": pod("bare", None)}
    ok, lines, _ = await enter(api)
    assert not ok and "default/bare" in "\n".join(lines)
    assert not any(c.startswith("evict") for c in api.calls)
    ok, _, _ = await enter(api, evict_unmanaged=True)
    assert ok and api.pods == {}


class FlakyApi(FakeApi):
    """The drain's first `failures` looks at the node's pods fail, as an API server that is
    restarting."""

    failures: int = 0

    async def list_node_pods(self, node: str, label_selector: str = "") -> list[dict[str, Any]]:
        if self.failures > 0:
            self.failures -= 1
            raise ClusterError(f"list pods on node {node}: 503 Service Unavailable", 503)
        return await super().list_node_pods(node, label_selector)


async def test_an_api_hiccup_is_retried_and_reported_once() -> None:
    api = FlakyApi()
    api.__dict__.update(cluster().__dict__)
    api.failures = 3
    ok, lines, rec = await enter(api)
    assert ok, lines
    assert sum("cannot read the cluster, retrying" in line for line in rec.lines) == 1


async def test_an_api_that_never_answers_fails_the_run_and_evicts_nothing() -> None:
    api = FlakyApi()
    api.__dict__.update(cluster().__dict__)
    api.failures = 10**6
    api.pods = {"web": pod("web")}
    with pytest.raises(VmopsError, match="stays cordoned and guarded"):
        await enter(api, timeout=2)
    assert api.nodes[N]["unschedulable"] and "evict web" not in api.calls


async def test_migrate_follows_the_vm_to_its_new_node() -> None:
    api = cluster(vms_on_node=1)
    rec = Recorder()
    out = await migrate_vm(
        as_api(api), "default", "vm-0", wait=True, timeout=10, reporter=rec, poll=0,
        clock=FakeClock(step=0.1), wall=lambda: 1700000000,
    )  # fmt: skip
    assert out.ok and "from node-1 to node-2" in out.lines[0]
    assert "migrate-vm-0-1700000000" in rec.lines[0]
    assert any("Migrating" in line for line in rec.lines)


async def test_migrate_a_vm_that_cannot_move_exits_with_the_reason() -> None:
    api = cluster(vms_on_node=1)
    api.unmovable = {"vm-0"}
    out = await migrate_vm(
        as_api(api), "default", "vm-0", wait=True, timeout=10, reporter=Recorder(), poll=0,
        clock=FakeClock(step=0.1),
    )  # fmt: skip
    assert not out.ok and "TargetUnschedulable: no room" in out.lines[0]


async def test_migrate_an_unknown_or_stopped_vm_creates_nothing() -> None:
    api = cluster(vms_on_node=1)
    api.add_vm("off", "", "Stopped")
    with pytest.raises(UnknownObject, match="did you mean vm-0"):
        await migrate_vm(as_api(api), "default", "vm-9", wait=True, timeout=1, reporter=Recorder())
    with pytest.raises(VmopsError, match="only a running VM"):
        await migrate_vm(as_api(api), "default", "off", wait=True, timeout=1, reporter=Recorder())
    assert api.ops == {}


async def test_a_taken_operation_name_gets_a_suffix() -> None:
    api = cluster(vms_on_node=1)
    api.ops["migrate-vm-0-1700000000"] = {"spec": {"virtualMachineName": "other"}}
    out = await migrate_vm(
        as_api(api), "default", "vm-0", wait=False, timeout=1, reporter=Recorder(),
        wall=lambda: 1700000000,
    )  # fmt: skip
    assert out.ok and "migrate-vm-0-1700000000-1" in api.ops


async def test_exit_uncordons_and_clears_the_mark() -> None:
    api = cluster(vms_on_node=0)
    await enter(api)
    out = await exit_maintenance(as_api(api), N, reporter=Recorder())
    assert out.ok and not api.nodes[N]["unschedulable"] and api.nodes[N]["labels"] == {}


async def test_exit_refuses_a_node_that_is_not_ready_unless_forced() -> None:
    api = cluster(vms_on_node=0)
    await enter(api)
    api.nodes[N]["ready"] = None  # powered off for the work
    with pytest.raises(VmopsError, match="would let nodefence fence it"):
        await exit_maintenance(as_api(api), N, reporter=Recorder())
    assert api.nodes[N]["unschedulable"]
    out = await exit_maintenance(as_api(api), N, reporter=Recorder(), force=True)
    assert out.ok and api.nodes[N]["labels"] == {}


async def test_exit_leaves_a_node_cordoned_by_someone_else_alone() -> None:
    api = cluster(vms_on_node=0)
    api.nodes[N]["unschedulable"] = True
    out = await exit_maintenance(as_api(api), N, reporter=Recorder())
    assert out.ok and "kubectl uncordon" in out.lines[0] and api.nodes[N]["unschedulable"]


# ---- the leader side: a pending fence is aborted by maintenance ------------------------------


INVENTORY = """
nodes:
  node-1:
    levels:
      - devices:
          - type: ipmi
            address: 127.0.0.1
            port: 9
            username: admin
            password_env: PW
"""


@dataclass
class RecordsApi:
    """The fence executor's API surface: records and events only."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        return list(self.records.values())

    async def save_record(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        saved = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        self.records[body["metadata"]["name"]] = saved
        return saved

    async def node_event(self, node: str, uid: str, reason: str, message: str, *a: Any) -> None:
        self.events.append(reason)


async def test_a_pending_fence_of_a_node_entering_maintenance_is_aborted_before_power_off(
    tmp_path: Path,
) -> None:
    import yaml

    from nodefence.agent.config.inventory_file import parse_inventory
    from nodefence.agent.fencing.executor import FenceExecutor

    inventory = parse_inventory(
        yaml.safe_load(INVENTORY), path=tmp_path / "inv.yaml", env={"PW": "pw"}
    )
    api = RecordsApi()
    leader_checks: list[str] = []

    async def confirm_leader() -> None:
        leader_checks.append("checked")

    executor = FenceExecutor(
        cast(ClusterApi, api),
        "nodefence",
        "leader-1",
        inventory=lambda: inventory,
        confirm_leader=confirm_leader,
        alive_since=lambda node, since, certain=False: None,
        in_maintenance=lambda node: node == N,
    )
    executor.submit(N, decided_at=0.0)
    await executor.wait_idle()
    [record] = api.records.values()
    assert record["status"]["phase"] == "Aborted"
    assert record["status"]["reason"] == "node entered maintenance before the power-off was sent"
    assert not record["status"]["powerOffSent"]
    # stopped before any power request: the one Lease check was for writing the new record
    assert executor.stats.power_walks == 1 and leader_checks == ["checked"]
    assert api.events == ["FenceStarted", "FenceAborted"]
