"""The fence executor's ordering rules, with in-memory edges (tests/support/executor_fakes.py):
what is stored, read and checked before a power-off goes out; what a new leader does with operations
it did not decide; what picks a stopped operation up again; a write that timed out but landed;
the Node object a fence may touch; after_proof reboot. End-to-end versions of the leader-change
cases run on the simulated cluster (tests/e2e/test_e2e_safety.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodefence.agent.fencing.executor import FenceExecutor
from nodefence.agent.fencing.operation import Cleanup, Operation, Phase
from nodefence.agent.fencing.records import to_record
from nodefence.agent.fencing.stop import StopKind, StopReason
from nodefence.agent.kube.client import ClusterError
from tests.support.executor_fakes import (
    FakeApi,
    FakeMachine,
    FakeNode,
    Leader,
    N,
    make,
    record,
    settle,
    submitted,
    world,
)
from tests.support.wait import eventually


def phase_of(ex: FenceExecutor) -> Phase | None:
    op = ex.operations.get(N)
    return None if op is None else op.phase


def stored_phase(api: FakeApi) -> str | None:
    return next((r["status"]["phase"] for r in api.records.values()), None)


def assert_aborted_before_the_power_off(api: FakeApi, machine: FakeMachine, why: str) -> None:
    """The operation ended Aborted for a reason naming `why`, no power-off sent or done."""
    st = record(api)["status"]
    assert st["phase"] == "Aborted" and why in st["reason"]
    assert not st["powerOffSent"] and machine.offs == 0


# -- the last look before the power-off ----------------------------------------------------------


async def test_the_point_of_no_return_is_stored_before_the_last_looks_and_then_the_request(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    first_off = api.calls.index("power_off")
    before = api.calls[:first_off]
    # Lease renewed, PowerOffSending stored, maintenance and identity read fresh, life looked
    # for since the decision: in this order, and nothing else before the request.
    tail = before[before.index("save Fencing+sent") - 1 :]
    assert tail == ["confirm_leader", "save Fencing+sent", "get_node", "alive_check"]
    # and a new record is only ever written by the Lease holder
    assert before[before.index("save Pending") - 1] == "confirm_leader"
    assert record(api)["status"]["phase"] == "Recovered"


async def test_heartbeats_received_while_the_dead_verdict_was_being_reported_abort_the_fence(
    tmp_path: Path,
) -> None:
    # Declared dead at 10.0; a heartbeat stamped 10.0 (received while the NodeDeclaredDead
    # Event was being written, before the executor started) is life after the decision.
    api, machine, leader = world()
    leader.heartbeat_at = 10.0
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Aborted"
    assert machine.offs == 0


async def test_a_power_off_never_goes_out_when_the_point_of_no_return_cannot_be_stored(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    api.fail_saves.append(("Fencing+sent", ClusterError("update: 500 Internal Server Error", 500)))
    ex = submitted(tmp_path, api, machine, leader)
    await eventually("a failed attempt", lambda: phase_of(ex) is Phase.FENCE_FAILED)
    assert machine.offs == 0
    assert not ex.operations[N].power_off_sent  # nothing was sent, and it says so
    await settle(ex)  # the retry stores it and goes on
    assert machine.offs == 1 and record(api)["status"]["phase"] == "Recovered"


async def test_maintenance_is_read_from_the_api_right_before_the_power_off(tmp_path: Path) -> None:
    # The leader's cached Node list still says "no maintenance"; the API already says so.
    api, machine, leader = world()
    api.nodes[N].maintenance = True
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert_aborted_before_the_power_off(api, machine, "maintenance")


async def test_life_seen_after_the_point_of_no_return_was_stored_still_stops_the_request(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    leader.heartbeat_after_save = True  # arrives during the Lease renewal and the record write
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert_aborted_before_the_power_off(api, machine, "came back")


async def test_an_unreadable_node_before_the_request_is_a_failed_attempt_not_a_power_off(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    api.fail_get_node = 1
    ex = submitted(tmp_path, api, machine, leader)
    await eventually("a failed attempt", lambda: phase_of(ex) is Phase.FENCE_FAILED)
    assert machine.offs == 0 and not ex.operations[N].power_off_sent
    await settle(ex)
    assert machine.offs == 1


async def test_a_node_registered_again_since_the_decision_is_not_powered_off(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    api.nodes[N] = FakeNode("uid-2")  # the machine rebooted and its kubelet registered again
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Aborted" and machine.offs == 0


# -- a new leader and the operations it did not decide ----------------------------------------


def stored_op(api: FakeApi, op: Operation, leader: str = "leader-old_9") -> None:
    body = to_record(op, "nodefence", leader)
    body["metadata"]["resourceVersion"] = "1"
    api.records[body["metadata"]["name"]] = body


async def test_a_resumed_operation_without_a_proof_waits_for_this_leaders_own_verdict(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    stored_op(api, Operation(N, "old1", node_uid="uid-1"))
    ex = make(tmp_path, api, machine, leader)
    assert await ex.resume() == 1
    await asyncio.sleep(0.1)
    assert machine.offs == 0 and ex.held() == {N}  # nothing before this leader judged it
    ex.submit(N, decided_at=50.0, uid="uid-1")  # declared dead with its own evidence
    await settle(ex)
    assert machine.offs == 1 and record(api)["status"]["phase"] == "Recovered"
    assert len(api.records) == 1  # the old operation, finished; not a second one


async def test_a_resumed_operation_is_aborted_when_this_leader_sees_the_node_alive(
    tmp_path: Path,
) -> None:
    # Even if the old leader stored PowerOffSending: this leader cannot know whether that
    # request went out, and the node answers.
    api, machine, leader = world()
    sent = Operation(N, "old1", phase=Phase.FENCING, power_off_sent=True, node_uid="uid-1")
    stored_op(api, sent)
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    why = "node alive by the new leader's own evidence (heartbeats)"
    await ex.cancel_held(N, StopReason(StopKind.NODE_ALIVE, why))
    st = record(api)["status"]
    assert st["phase"] == "Aborted" and "own evidence" in st["reason"]
    assert machine.offs == 0 and not ex.held()


async def test_a_taint_that_landed_after_its_operation_was_aborted_is_taken_off(
    tmp_path: Path,
) -> None:
    # Simulation seed 901184: a stale leader's taint landed after the operation was aborted
    # (the record never says "tainted"); the node, kept out of service as fenced, was then
    # never judged again and stayed unfenced when it died.
    api, machine, leader = world()
    stored_op(api, Operation(N, "old1", phase=Phase.ABORTED, node_uid="uid-1"))
    api.nodes[N].tainted, api.nodes[N].fenced_by = True, "old1"
    api.nodes["node-b"] = FakeNode("uid-b", tainted=True, fenced_by="live-op")  # not aborted
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    await ex.clear_orphan_taints(await api.list_nodes(), now=10.0)
    assert not api.nodes[N].tainted and api.nodes["node-b"].tainted
    api.nodes[N].tainted, api.nodes[N].fenced_by = True, "old1"  # landed once more
    await ex.clear_orphan_taints(await api.list_nodes(), now=10.01)
    assert api.nodes[N].tainted  # paced: one try per reconcile interval
    await ex.clear_orphan_taints(await api.list_nodes(), now=10.1)
    assert not api.nodes[N].tainted and machine.offs == 0


async def test_a_deposed_leader_leaves_an_orphan_taint_to_its_successor(tmp_path: Path) -> None:
    api, machine, leader = world()
    stored_op(api, Operation(N, "old1", phase=Phase.ABORTED, node_uid="uid-1"))
    api.nodes[N].tainted, api.nodes[N].fenced_by = True, "old1"
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    leader.leader = False  # the Lease went to another process meanwhile
    await ex.clear_orphan_taints(await api.list_nodes(), now=10.0)
    assert api.nodes[N].tainted and "confirm_leader" in api.calls


async def test_a_resumed_operation_with_a_proven_off_goes_on_without_a_new_verdict(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    machine.on = False
    proven = Operation(
        N, "old1", phase=Phase.POWERED_OFF, power_off_sent=True, off_proven=True, node_uid="uid-1"
    )
    stored_op(api, proven)
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    assert ex.held() == {N}  # until this leader has judged for a window: no life, no stale proof
    ex.go_on(N)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Recovered" and N not in api.nodes
    assert machine.offs == 0  # no new power-off: cleanup needs none


async def test_a_machine_running_again_after_its_proof_is_never_cleaned_up(
    tmp_path: Path,
) -> None:
    # Proven off, then powered on again (someone, a BMC's power-restore policy) before the
    # taint: deleting its Node now would start its VMs a second time.
    api, machine, leader = world()
    machine.on = True
    proven = Operation(
        N, "old1", phase=Phase.POWERED_OFF, power_off_sent=True, off_proven=True, level=1,
        node_uid="uid-1",
    )  # fmt: skip
    stored_op(api, proven)
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    ex.go_on(N)
    await settle(ex)
    st = record(api)["status"]
    assert st["phase"] == "Aborted" and "powered on again" in st["reason"]
    assert N in api.nodes and not api.nodes[N].tainted and "taint" not in api.calls


async def test_a_proof_voided_after_the_taint_takes_the_taint_off_again(tmp_path: Path) -> None:
    api, machine, leader = world()
    machine.on = True  # runs again; the node was tainted already
    api.nodes[N].tainted = True
    tainted = Operation(
        N, "old1", phase=Phase.POWERED_OFF, power_off_sent=True, off_proven=True, level=1,
        tainted=True, vms=(), node_uid="uid-1",
    )  # fmt: skip
    stored_op(api, tainted)
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    ex.go_on(N)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Aborted"
    assert N in api.nodes and not api.nodes[N].tainted and "delete_node" not in api.calls


async def test_a_resumed_recovering_operation_ends_by_its_deadline(tmp_path: Path) -> None:
    api, machine, leader = world()
    api.vms = []  # its VM never comes back
    del api.nodes[N]
    recovering = Operation(
        N,
        "old1",
        phase=Phase.RECOVERING,
        power_off_sent=True,
        off_proven=True,
        tainted=True,
        node_deleted=True,
        vms=(),
        node_uid="uid-1",
    )
    body = to_record(recovering, "nodefence", "leader-old_9")
    body["metadata"]["resourceVersion"] = "1"
    body["status"]["vms"] = [
        {"namespace": "prod", "name": "a", "runPolicy": "AlwaysOn", "expectedRestart": True}
    ]
    api.records[body["metadata"]["name"]] = body
    ex = make(tmp_path, api, machine, leader)
    await ex.resume()
    await settle(ex, timeout=3.0)  # recovery_timeout 0.5 s: never "forever"
    assert record(api)["status"]["phase"] == "RecoveryIncomplete"


# -- operations that stopped are picked up again ------------------------------------------------


async def test_an_operation_stopped_by_a_failed_lease_check_is_resumed_on_the_leaders_schedule(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    ex = submitted(tmp_path, api, machine, leader)
    # Fail the Lease check once, right at the taint (past the proof); nobody submits again
    # (the node will vanish from the detector once its Node is deleted).
    original = leader.confirm
    failed: list[bool] = []

    async def flaky() -> None:
        if not failed and "save PoweredOff+sent" in api.calls:
            failed.append(True)
            leader.lease_failures = 1
        await original()

    ex.confirm_leader = flaky
    loop_task = asyncio.create_task(ex.reconcile_loop())
    try:
        await eventually("recovered", lambda: stored_phase(api) == "Recovered")
    finally:
        loop_task.cancel()
    assert machine.offs == 1 and failed


async def test_a_record_write_that_timed_out_but_landed_is_not_taken_for_another_leader(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    api.land_then_fail.append("PoweredOff+sent")  # applied, but the client saw a timeout
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Recovered"  # not "stepping back" at the 409


async def test_a_record_changed_by_another_leader_makes_this_one_step_back(tmp_path: Path) -> None:
    api, machine, leader = world()
    ex = submitted(tmp_path, api, machine, leader)
    await eventually("stored", lambda: api.records)
    rec = record(api)
    rec["status"]["leader"] = "leader-b_2"
    rec["metadata"]["resourceVersion"] = "999"  # someone else wrote it
    await settle(ex)
    assert record(api)["status"]["leader"] == "leader-b_2"


# -- the Node object, rejoining, after_proof reboot ---------------------------------------------


async def test_a_node_that_rejoined_and_died_again_is_fenced_again(tmp_path: Path) -> None:
    api, machine, leader = world()
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert record(api)["status"]["phase"] == "Recovered"
    ex.submit(N, decided_at=11.0, uid="uid-1")  # a stale verdict about the same Node
    await settle(ex)
    assert len(api.records) == 1
    api.nodes[N] = FakeNode("uid-2")  # repaired, registered again, then died again
    machine.on = True
    ex.submit(N, decided_at=90.0, uid="uid-2")
    await settle(ex)
    assert len(api.records) == 2 and machine.offs == 2 and N not in api.nodes


async def test_after_proof_reboot_powers_on_only_after_the_deletion_is_stored(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    ex = make(tmp_path, api, machine, leader, after_proof="reboot")
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await settle(ex)
    deleted_saved = next(i for i, c in enumerate(api.calls) if c.startswith("save Recovering"))
    power_on = api.calls.index("power_on")
    assert api.calls.index("delete_node") < deleted_saved < power_on
    assert api.calls[power_on - 1] == "confirm_leader"  # the Lease, right before
    st = record(api)["status"]
    assert st["poweredOn"] is True and record(api)["spec"]["action"] == "reboot"


# -- releasing the node: its pods, its VolumeAttachments, its taint -----------------------------


def with_workload(api: FakeApi) -> None:
    """The fenced node runs a launcher pod and a web pod; its VM's disk is attached there."""
    api.pods += [("prod", "virt-launcher-a-x1", "p1", N), ("web", "web-1", "p2", N)]
    api.pods.append(("web", "web-2", "p3", "w2"))  # another node's: never touched
    api.attachments.append(["csi-a", N, "pvc-prod-a", False])
    api.attachments.append(["csi-b", "w2", "pvc-web-b", False])


def after(calls: list[str], step: str) -> list[str]:
    return calls[calls.index(step) :]


async def test_after_the_proof_it_taints_then_force_deletes_the_pods_then_removes_attachments(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    with_workload(api)
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    released = [
        c
        for c in after(api.calls, "power_off")
        if c in ("confirm_leader", "taint", "list_pods", "list_attachments", "delete_node")
        or c.startswith(("delete_pod", "delete_attachment"))
    ]
    assert released == [
        "confirm_leader",
        "taint",
        "confirm_leader",
        "list_pods",
        "delete_pod virt-launcher-a-x1",
        "delete_pod web-1",
        "confirm_leader",
        "list_attachments",
        "delete_attachment csi-a",
        "confirm_leader",
        "list_attachments",  # gone now: the CSI attacher let go of it
        "confirm_leader",
        "delete_node",
    ]
    assert api.pods == [("web", "web-2", "p3", "w2")]
    assert [a[0] for a in api.attachments] == ["csi-b"]
    st = record(api)["status"]
    assert (st["phase"], st["podsDeleted"], st["attachmentsRemoved"]) == ("Recovered", 2, 1)
    assert st["podsReleasedAt"] and st["attachmentsReleasedAt"] and st["deletedAt"]
    assert api.nodes == {} and "FenceReleasedPods" in api.events


async def test_the_node_is_deleted_only_once_its_attachments_are_gone(tmp_path: Path) -> None:
    api, machine, leader = world()
    with_workload(api)
    api.detach_after = 3  # the CSI attacher takes a few looks to unpublish the volume
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    looks = after(api.calls, "delete_attachment csi-a")
    assert looks.count("list_attachments") == 4
    assert looks.index("delete_node") > max(
        i for i, c in enumerate(looks) if c == "list_attachments"
    )


async def test_with_release_off_no_pod_or_attachment_is_touched(tmp_path: Path) -> None:
    api, machine, leader = world()
    with_workload(api)
    ex = make(tmp_path, api, machine, leader, release=False)
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await settle(ex)
    assert not [c for c in api.calls if c.startswith(("delete_pod", "delete_attachment"))]
    assert "list_pods" not in api.calls and record(api)["spec"]["release"] is False
    assert record(api)["status"]["phase"] == "Recovered"  # (the fake restarts VMs on deletion)


async def test_no_pod_is_released_once_the_lease_is_lost_after_the_taint(tmp_path: Path) -> None:
    api, machine, leader = world()
    with_workload(api)
    confirm = leader.confirm

    async def lose_after_taint() -> None:
        if "taint" in api.calls:
            raise RuntimeError("not the leader")
        await confirm()

    leader.confirm = lose_after_taint  # type: ignore[method-assign]
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert "taint" in api.calls and "list_pods" not in api.calls
    assert len([p for p in api.pods if p[3] == N]) == 2
    assert record(api)["status"]["podsReleased"] is False


async def test_cleanup_taint_keeps_the_node_and_untaints_it_once_ready_and_heartbeating(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    with_workload(api)
    heard: dict[str, float] = {}
    clock = [100.0]
    ex = make(
        tmp_path,
        api,
        machine,
        leader,
        cleanup=Cleanup.TAINT,
        after_proof="reboot",
        last_heartbeat=heard.get,
        clock=lambda: clock[0],
    )
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await eventually("powered on", lambda: machine.ons == 1)
    await eventually("waiting for the node", lambda: stored_phase(api) == "Returning")
    assert api.nodes[N].tainted and api.nodes[N].fenced_by  # kept, tainted, marked
    assert "delete_node" not in api.calls
    api.nodes[N].ready = True  # the kubelet is back, but no heartbeat of the agent yet
    for _ in range(5):
        await asyncio.sleep(0.02)
    assert stored_phase(api) == "Returning" and "untaint" not in api.calls
    clock[0] = 120.0
    heard[N] = 119.5  # the agent heartbeats again
    await settle(ex)
    st = record(api)["status"]
    assert (st["phase"], st["returned"], st["untainted"]) == ("Recovered", True, True)
    assert not api.nodes[N].tainted and not api.nodes[N].fenced_by
    assert api.calls[api.calls.index("untaint") - 1] == "confirm_leader"
    assert "FenceUntainted" in api.events


async def test_attachments_someone_else_is_deleting_are_waited_for_at_the_check_pace(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    api.attachments.append(["csi-a", N, "pvc-prod-a", True])  # already being deleted
    api.detach_after = 2
    loop = asyncio.get_running_loop()
    looks: list[float] = []
    listing = api.list_volume_attachments

    async def timed(node: str) -> Any:
        looks.append(loop.time())
        return await listing(node)

    api.list_volume_attachments = timed  # type: ignore[method-assign]
    ex = submitted(tmp_path, api, machine, leader)
    await settle(ex)
    assert len(looks) == 3
    assert not [c for c in api.calls if c.startswith("delete_attachment")]  # not ours to delete
    assert all(b - a >= 0.01 for a, b in itertools.pairwise(looks))  # check_interval


# -- fencing paused cluster-wide (nodefence pause) ------------------------------------------------


async def test_while_fencing_is_paused_no_power_off_goes_out_and_the_resume_fences_at_once(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()
    pause: list[str | None] = ["paused by alice: BMC firmware"]
    ex = make(tmp_path, api, machine, leader, paused=lambda: pause[0])
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await eventually("the record of the waiting operation", lambda: stored_phase(api) == "Pending")
    await asyncio.sleep(0.2)  # many rounds of the executor's loop
    assert machine.offs == 0 and "save Fencing+sent" not in api.calls
    assert ex.busy(N) and phase_of(ex) is Phase.PENDING  # waiting, not failed, not aborted
    pause[0] = None
    await settle(ex)
    assert machine.offs == 1 and record(api)["status"]["phase"] == "Recovered"


def paused_at_a_renewal(
    leader: Leader, when: Callable[[], bool] = lambda: True
) -> list[str | None]:
    """A pause for the executor's `paused` (`lambda: pause[0]`, the test lifts it by setting
    None) that the leader's Lease renewal reads: set at the first renewal where `when()`."""
    pause: list[str | None] = [None]
    confirm = leader.confirm
    paused_once: list[bool] = []

    async def renew_and_read_the_pause() -> None:
        await confirm()
        if when() and not paused_once:
            paused_once.append(True)
            pause[0] = "paused: read with the renewal"

    leader.confirm = renew_and_read_the_pause  # type: ignore[method-assign]
    return pause


async def test_a_pause_read_with_the_lease_renewal_before_the_first_request_stores_nothing(
    tmp_path: Path,
) -> None:
    # Not paused when the walk starts; the Lease renewal right before the point of no return
    # reads the pause: nothing stored, nothing sent, the operation waits.
    api, machine, leader = world()
    pause = paused_at_a_renewal(leader, when=lambda: "save Pending" in api.calls)
    ex = make(tmp_path, api, machine, leader, paused=lambda: pause[0])
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await eventually("the walk stopped by the pause", lambda: pause[0] is not None)
    await asyncio.sleep(0.2)
    assert machine.offs == 0 and "save Fencing+sent" not in api.calls
    assert phase_of(ex) is Phase.PENDING
    pause[0] = None
    await settle(ex)
    assert machine.offs == 1


async def test_a_walk_past_the_point_of_no_return_sends_nothing_more_once_paused(
    tmp_path: Path,
) -> None:
    # Simulation seed 376: an inherited operation (PowerOffSending stored by an older term)
    # went on; the pause, read with the Lease renewal right before its request, did not stop
    # it, because only a first power-off looked at the pause.
    api, machine, leader = world()
    stored_op(api, Operation(N, "old1", phase=Phase.FENCING, power_off_sent=True, node_uid="uid-1"))
    pause = paused_at_a_renewal(leader)
    ex = make(tmp_path, api, machine, leader, paused=lambda: pause[0])
    await ex.resume()
    ex.submit(N, decided_at=10.0, uid="uid-1")  # this leader's own verdict: dead
    await eventually("the walk stopped by the pause", lambda: pause[0] is not None)
    await asyncio.sleep(0.2)
    assert machine.offs == 0 and phase_of(ex) is Phase.FENCING
    pause[0] = None
    await settle(ex)
    assert machine.offs == 1 and record(api)["status"]["phase"] == "Recovered"


async def test_an_operation_proven_off_goes_on_with_its_cleanup_while_paused(
    tmp_path: Path,
) -> None:
    api, machine, leader = world()

    def paused_once_the_request_went_out() -> str | None:
        return "paused: right after the power-off" if machine.offs else None

    ex = make(tmp_path, api, machine, leader, paused=paused_once_the_request_went_out)
    ex.submit(N, decided_at=10.0, uid="uid-1")
    await settle(ex)  # released, deleted, its VMs checked: the node is off, the pause holds
    assert machine.offs == 1 and record(api)["status"]["phase"] == "Recovered"


async def test_each_vm_outage_is_counted_from_the_nodes_last_heartbeat(tmp_path: Path) -> None:
    api, machine, leader = world()
    clock = itertools.count(100.0, 0.5)
    ex = make(
        tmp_path,
        api,
        machine,
        leader,
        clock=lambda: next(clock),
        last_heartbeat=lambda node: 90.0,  # heard 10 s before the executor started
    )
    ex.submit(N, decided_at=99.0, uid="uid-1")
    await settle(ex)
    st = record(api)["status"]
    [vm] = st["vms"]
    assert st["lastHeartbeatAt"] is not None
    # outage: from the last heartbeat; the time after the Node's deletion is the detail
    assert vm["outageSeconds"] > vm["recoveredAfterSeconds"] + 10.0 - 0.01
    assert st["reason"] == "1 restarted on other nodes"
