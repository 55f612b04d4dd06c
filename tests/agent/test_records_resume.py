"""FenceOperation records: what a successor leader rebuilds from them, and which records tell a
node that it is being fenced."""

from __future__ import annotations

from dataclasses import replace

from nodefence.agent.fencing.events import VmOutcome, VmsSeen
from nodefence.agent.fencing.machine import Timing, apply, next_action
from nodefence.agent.fencing.operation import Cleanup, Operation, Phase
from nodefence.agent.fencing.records import from_record, is_open_mark, resumed, to_record

T = Timing(retry_base=1.0, retry_max=4.0, recovery_timeout=60.0)
WALL = 1_800_000_000.0  # the old leader's wall clock when it deleted the Node
VM = VmOutcome("prod", "a", "AlwaysOn", True)
RECOVERING = Operation(
    "w1",
    "op-1",
    phase=Phase.RECOVERING,
    power_off_sent=True,
    off_proven=True,
    tainted=True,
    pods_released=True,
    attachments_released=True,
    node_deleted=True,
    deleted_at=5.0,
    recovery_deadline=65.0,
    vms=(VM,),
    node_uid="uid-1",
)


def stored(op: Operation, wall: float = WALL) -> dict[str, object]:
    return to_record(op, "nodefence", "leader-a_1", wall=wall)


def test_a_resumed_recovering_operation_ends_at_its_deadline_instead_of_waiting_forever() -> None:
    # The successor read the record 20 s after the deletion (wall clocks), at its own
    # monotonic 1000: the deadline is what is left of recovery_timeout on its clock.
    op = resumed(from_record(stored(RECOVERING)), stored(RECOVERING), 1000.0, WALL + 20, T)
    assert op.recovery_deadline == 1040.0 and op.deleted_at == 980.0
    assert next_action(op, 1039.0).value == "check-vms"
    late = apply(op, VmsSeen({}), 1040.0, T)
    assert late.phase is Phase.RECOVERY_INCOMPLETE and "prod/a" in late.reason


def test_a_wall_clock_that_jumped_is_clamped_to_one_recovery_timeout() -> None:
    record = stored(RECOVERING)
    back = resumed(from_record(record), record, 1000.0, WALL - 3600, T)  # clock set back
    assert back.recovery_deadline == 1060.0
    ahead = resumed(from_record(record), record, 1000.0, WALL + 3600, T)  # clock jumped ahead
    assert ahead.recovery_deadline == 1000.0


def test_a_record_without_a_deletion_time_gets_the_whole_timeout() -> None:
    record = stored(RECOVERING)
    record["status"]["deletedAt"] = None  # type: ignore[index]
    assert resumed(from_record(record), record, 7.0, WALL, T).recovery_deadline == 67.0


def test_deleted_at_is_stamped_once_and_kept_by_later_writes() -> None:
    first = stored(RECOVERING, wall=WALL)
    again = to_record(RECOVERING, "nodefence", "leader-b_2", base=first, wall=WALL + 50)
    assert again["status"]["deletedAt"] == first["status"]["deletedAt"]  # type: ignore[index]
    assert stored(replace(RECOVERING, node_deleted=False))["status"]["deletedAt"] is None  # type: ignore[index]


def test_the_node_uid_and_the_reboot_progress_survive_a_round_trip() -> None:
    op = replace(RECOVERING, reboot=True, powered_on=False)
    back = from_record(stored(op))
    assert (back.node_uid, back.reboot, back.powered_on) == ("uid-1", True, False)
    assert from_record(stored(RECOVERING)).powered_on is None


def test_only_an_unfinished_record_of_the_current_incarnation_marks_the_node_as_fenced() -> None:
    pending = Operation("w1", "op-2")
    assert is_open_mark(pending)
    assert is_open_mark(replace(RECOVERING, node_deleted=False, phase=Phase.POWERED_OFF))
    # The Node of a Recovering record was deleted: a node that registered again since is a new
    # incarnation, not the one being fenced (its watchdog must keep being fed).
    assert not is_open_mark(RECOVERING)
    assert not is_open_mark(replace(pending, phase=Phase.ABORTED))


def test_a_kept_node_the_leader_powered_on_again_is_not_told_it_is_being_fenced() -> None:
    # cleanup taint + reboot: the leader powers the node on on purpose and waits for it; its
    # agent must not read the open record as "you are being fenced" and stop its watchdog.
    kept = replace(RECOVERING, node_deleted=False, cleanup=Cleanup.TAINT, reboot=True)
    assert is_open_mark(kept)
    returning = replace(kept, phase=Phase.RETURNING, powered_on=True, verdict=Phase.RECOVERED)
    assert not is_open_mark(returning)


def test_the_release_and_the_return_survive_a_round_trip_and_a_new_leader() -> None:
    op = replace(
        RECOVERING,
        node_deleted=False,
        deleted_at=None,
        cleanup=Cleanup.TAINT,
        reboot=True,
        pods_deleted=3,
        attachments_removed=2,
        released_at=5.0,
        powered_on=True,
        phase=Phase.RETURNING,
        verdict=Phase.RECOVERED,
    )
    record = stored(op)
    status = record["status"]
    assert status["podsReleasedAt"] and status["attachmentsReleasedAt"]  # type: ignore[index]
    assert status["releasedAt"] and status["deletedAt"] is None  # type: ignore[index]
    back = resumed(from_record(record), record, 1000.0, WALL + 20, T)
    assert (back.cleanup, back.release, back.pods_deleted, back.attachments_removed) == (
        Cleanup.TAINT,
        True,
        3,
        2,
    )
    assert back.verdict is Phase.RECOVERED and back.phase is Phase.RETURNING
    assert back.released_at == 980.0 and back.recovery_deadline == 1040.0
    # the powered-on node must heartbeat after the new leader took over, within return_timeout
    assert back.powered_on_at == 1000.0 and back.return_deadline == 1000.0 + T.return_timeout
    assert next_action(back, 1000.0).value == "await-return"


def test_a_successor_counts_the_vms_outage_from_the_same_last_heartbeat() -> None:
    # The old leader heard the node last 12 s before it stored the record; the successor
    # (another clock) takes over 30 s later and sees the VM run elsewhere 5 s after that.
    body = to_record(RECOVERING, "nodefence", "leader-a", wall=WALL, heard_at=WALL - 12.0)
    assert body["status"]["lastHeartbeatAt"] is not None
    again = to_record(RECOVERING, "nodefence", "leader-b", body, wall=WALL + 1, heard_at=WALL)
    assert again["status"]["lastHeartbeatAt"] == body["status"]["lastHeartbeatAt"]  # kept
    op = resumed(from_record(body), body, now=500.0, wall_now=WALL + 30.0, timing=T)
    assert op.last_heartbeat == 500.0 - 42.0
    done = apply(op, VmsSeen({"prod/a": "w2"}), 505.0, T)
    [vm] = done.vms or ()
    assert vm.outage == 47.0 and vm.recovered_after is not None and vm.recovered_after < 47.0
    assert from_record(to_record(done, "nodefence", "leader-b", body)).vms == done.vms
