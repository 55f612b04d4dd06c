"""The fencing workflow as a pure state machine: every phase x event, the scenarios an operator
cares about, and properties over random event orders (no Node tainted, released or deleted
before a proven Off, no abort past the point of no return, no untaint before the node is back,
final phases absorb, nothing silently stuck, idempotent reports from two leaders), for both
`cleanup: delete` and `cleanup: taint`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodefence.agent.fencing.events import (
    AttachmentsReleased,
    Cancelled,
    Event,
    FenceDone,
    Maintenance,
    NodeAlive,
    NodeDeleted,
    PodsReleased,
    PoweredOn,
    PoweredOnAgain,
    PowerOffSending,
    ReturnChecked,
    SelfFenced,
    SendWithdrawn,
    Tainted,
    Untainted,
    VmOutcome,
    VmsSeen,
    VmsSnapshotted,
)
from nodefence.agent.fencing.machine import Timing, apply, next_action
from nodefence.agent.fencing.operation import (
    FINAL,
    RESTART_POLICIES,
    Action,
    Cleanup,
    Operation,
    Phase,
)

NODE = "w1"
OTHER = "w2"
NOW = 1000.0
T = Timing(
    retry_base=5.0,
    retry_max=60.0,
    recovery_timeout=300.0,
    release_timeout=60.0,
    return_timeout=900.0,
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vm(name: str, policy: str = "AlwaysOn", running_on: str | None = None) -> VmOutcome:
    """A snapshotted VM, restart expected exactly for the restarting run policies."""
    return VmOutcome("prod", name, policy, policy in RESTART_POLICIES, running_on)


def fold(op: Operation, steps: Iterable[tuple[Event, float]], timing: Timing = T) -> Operation:
    for event, at in steps:
        op = apply(op, event, at, timing)
    return op


# -- representative operations, one or more per phase ------------------------------------------

VM_A = vm("a", "AlwaysOn")
VM_M = vm("m", "Manual")
SNAPSHOT = (VM_A, VM_M)
# The verdict names what was restarted and what was left stopped (someone must start it).
ONE_RESTARTED = "1 restarted on other nodes; 1 left stopped (prod/m, Manual: start it by hand)"

PENDING = Operation(NODE, "op-1")
FENCING = replace(PENDING, phase=Phase.FENCING, power_off_sent=True)
FAILED_UNSENT = replace(
    PENDING,
    phase=Phase.FENCE_FAILED,
    attempts=1,
    retry_at=NOW + 5.0,
    errors=("bmc timeout",),
    reason="fencing failed (attempt 1): bmc timeout",
)
FAILED_SENT = replace(FAILED_UNSENT, power_off_sent=True)
PROVEN = replace(
    FENCING,
    phase=Phase.POWERED_OFF,
    off_proven=True,
    level=1,
    attempts=1,
    reason="power off proven by read-back",
)
SNAPSHOTTED = replace(PROVEN, vms=SNAPSHOT)
TAINTED = replace(SNAPSHOTTED, tainted=True)
PODS_RELEASED = replace(TAINTED, pods_released=True, pods_deleted=2, release_deadline=NOW + 60.0)
RELEASE_OVERDUE = replace(PODS_RELEASED, release_deadline=NOW - 1.0)
RELEASED = replace(PODS_RELEASED, attachments_released=True, attachments_removed=1)
RECOVERING = replace(
    RELEASED,
    phase=Phase.RECOVERING,
    node_deleted=True,
    deleted_at=NOW - 10.0,
    recovery_deadline=NOW + 290.0,
    reason="node deleted; waiting for its ColdStandby VMs",
)
# `apply` never produces Cleaned (NodeDeleted goes straight to Recovering), but DESIGN.md names it
# and a record may carry it: it must behave as "taint and delete done".
CLEANED = replace(RECOVERING, phase=Phase.CLEANED)
RECOVERED = replace(
    RECOVERING,
    phase=Phase.RECOVERED,
    vms=(replace(VM_A, running_on=OTHER, recovered_after=10.0), VM_M),
    reason=ONE_RESTARTED,
)
REBOOTING = replace(RECOVERING, reboot=True)  # after_proof reboot: deleted, not powered on
INCOMPLETE = replace(
    RECOVERING, phase=Phase.RECOVERY_INCOMPLETE, reason="not running elsewhere: prod/a"
)
ABORTED = replace(PENDING, phase=Phase.ABORTED, reason="node came back")
# `nodefence fence` by hand, recorded for the history: final from the start, never resumed.
MANUAL = replace(PROVEN, phase=Phase.MANUAL, reason="proven OFF by level 1")
# cleanup taint: the Node is kept, tainted; released, the recovery clock runs from there.
KEPT = replace(
    RELEASED,
    cleanup=Cleanup.TAINT,
    phase=Phase.RECOVERING,
    released_at=NOW - 10.0,
    recovery_deadline=NOW + 290.0,
    reason="node kept out of service and released; waiting for its ColdStandby VMs",
)
KEPT_REBOOTING = replace(KEPT, reboot=True)  # released, not powered on yet
KEPT_POWERED = replace(
    KEPT_REBOOTING, powered_on=True, powered_on_at=NOW - 5.0, return_deadline=NOW + 895.0
)
RETURNING = replace(
    KEPT_POWERED,
    phase=Phase.RETURNING,
    verdict=Phase.RECOVERED,
    vms=(replace(VM_A, running_on=OTHER, recovered_after=8.0), VM_M),
    reason=ONE_RESTARTED,
)
RETURN_OVERDUE = replace(RETURNING, return_deadline=NOW - 1.0)
RETURNED = replace(
    RETURNING, returned=True, reason=f"{RETURNING.reason}; w1 back (Ready, heartbeat 0.5 s ago)"
)

STATES: dict[str, Operation] = {
    "pending": PENDING,
    "fencing": FENCING,
    "failed-unsent": FAILED_UNSENT,
    "failed-sent": FAILED_SENT,
    "proven": PROVEN,
    "snapshotted": SNAPSHOTTED,
    "tainted": TAINTED,
    "pods-released": PODS_RELEASED,
    "release-overdue": RELEASE_OVERDUE,
    "released": RELEASED,
    "cleaned": CLEANED,
    "recovering": RECOVERING,
    "rebooting": REBOOTING,
    "kept": KEPT,
    "kept-rebooting": KEPT_REBOOTING,
    "kept-powered": KEPT_POWERED,
    "returning": RETURNING,
    "return-overdue": RETURN_OVERDUE,
    "returned": RETURNED,
    "recovered": RECOVERED,
    "incomplete": INCOMPLETE,
    "aborted": ABORTED,
    "manual": MANUAL,
}

EVENTS: dict[str, Event] = {
    "alive": NodeAlive("kubelet lease renewed"),
    "maintenance": Maintenance(),
    "sending": PowerOffSending(),
    "done-ok": FenceDone(off_proven=True, level=2, errors=("level 1: bmc timeout",)),
    "done-fail": FenceDone(off_proven=False, errors=("level 1: auth failed", "level 2: timeout")),
    "snapshot": VmsSnapshotted(SNAPSHOT, capacity_warning="no room for prod/a"),
    "tainted": Tainted(),
    "deleted": NodeDeleted(),
    "seen": VmsSeen({"prod/a": OTHER}),
    "self-fenced": SelfFenced("watchdog self-fence: deadline passed"),
    "cancelled": Cancelled("node alive by the new leader's own evidence"),
    "withdrawn": SendWithdrawn("cannot read the Node before the power-off"),
    "powered-on": PoweredOn(True),
    "on-again": PoweredOnAgain("ipmi read On again"),
    "pods-released": PodsReleased(2),
    "attachments-released": AttachmentsReleased(1),
    "attachments-pending": AttachmentsReleased(1, ("pvc-prod-a",)),
    "back": ReturnChecked(True, "Ready, heartbeat 0.5 s ago"),
    "not-back": ReturnChecked(False),
    "untainted": Untainted(),
}
RELEASE_EVENTS = ("pods-released", "attachments-released", "attachments-pending")
RETURN_EVENTS = ("back", "not-back", "untainted")


def _proof(op: Operation) -> dict[str, Any]:
    return {
        "phase": Phase.POWERED_OFF,
        "off_proven": True,
        "level": 2,
        "attempts": op.attempts + 1,
        "errors": (*op.errors, "level 1: bmc timeout"),
        "retry_at": None,
        "reason": "power off proven by read-back",
        "proof": "read-back",
        "proven_at": NOW,
    }


SELF_FENCED = {
    "phase": Phase.POWERED_OFF,
    "off_proven": True,
    "retry_at": None,
    "reason": "watchdog self-fence: deadline passed",
    "proof": "watchdog",
    "proven_at": NOW,
}


def _failure(op: Operation) -> dict[str, Any]:
    n = op.attempts + 1
    return {
        "phase": Phase.FENCE_FAILED,
        "attempts": n,
        "errors": (*op.errors, "level 1: auth failed", "level 2: timeout"),
        "retry_at": NOW + T.retry_delay(n),
        "reason": f"fencing failed (attempt {n}): level 2: timeout",
    }


ON_AGAIN = {
    "phase": Phase.ABORTED,
    "reason": "powered on again after the proof, before its VMs were released (ipmi read On"
    " again): the Node is kept and its VMs stay where they run",
}
CANCELLED = {
    "phase": Phase.ABORTED,
    "power_off_sent": False,
    "reason": "node alive by the new leader's own evidence",
}


def _withdrawn(op: Operation) -> dict[str, Any]:
    if op.phase is not Phase.FENCING:
        return UNCHANGED
    n = op.attempts + 1
    return {
        "phase": Phase.FENCE_FAILED,
        "power_off_sent": False,
        "attempts": n,
        "errors": (*op.errors, "cannot read the Node before the power-off"),
        "retry_at": NOW + T.retry_delay(n),
        "reason": f"fencing failed (attempt {n}): cannot read the Node before the power-off",
    }


def _abort(event: str) -> dict[str, Any]:
    reason = {
        "alive": "node came back before the power-off was sent (kubelet lease renewed)",
        "maintenance": "node entered maintenance before the power-off was sent",
    }[event]
    return {"phase": Phase.ABORTED, "reason": reason}


def _noted(op: Operation, event: str) -> dict[str, Any]:
    what = {"alive": "node alive", "maintenance": "maintenance entered"}[event]
    return {"errors": (*op.errors, f"{what} after the power-off was sent")}


def _deleted() -> dict[str, Any]:
    return {
        "phase": Phase.RECOVERING,
        "tainted": True,
        "node_deleted": True,
        "deleted_at": NOW,
        "recovery_deadline": NOW + T.recovery_timeout,
        "reason": "node deleted; waiting for its ColdStandby VMs",
    }


def _recovered(op: Operation, phase: Phase = Phase.RECOVERED) -> dict[str, Any]:
    assert op.recovery_start is not None
    found = {
        "phase": phase,
        "vms": (replace(VM_A, running_on=OTHER, recovered_after=NOW - op.recovery_start), VM_M),
        "reason": ONE_RESTARTED,
    }
    if phase is Phase.RETURNING:
        found["verdict"] = Phase.RECOVERED
    return found


def _deleted_later() -> dict[str, Any]:
    """cleanup taint, released already: somebody deleted the Node; the clock stays."""
    return {"node_deleted": True, "deleted_at": NOW}


def _release(op: Operation) -> dict[str, dict[str, Any]]:
    """The release reports: pods once tainted, attachments once the pods are released."""
    rows: dict[str, dict[str, Any]] = dict.fromkeys(RELEASE_EVENTS, UNCHANGED)
    if op.tainted and not op.pods_released:
        rows["pods-released"] = {
            "pods_released": True,
            "pods_deleted": op.pods_deleted + 2,
            "release_deadline": NOW + T.release_timeout,
        }
    if op.pods_released and not op.attachments_released:
        rows["attachments-released"] = {"attachments_released": True, "attachments_removed": 1}
        if op.release_deadline is not None and op.release_deadline <= NOW:
            note = "still attached 60 s after the release: pvc-prod-a"
            rows["attachments-pending"] = {
                "attachments_released": True,
                "attachments_removed": 1,
                "errors": (*op.errors, note),
            }
        else:
            rows["attachments-pending"] = {"attachments_removed": 1}
    return rows


SNAPPED = {"vms": SNAPSHOT, "capacity_warning": "no room for prod/a"}
UNCHANGED: dict[str, Any] = {}


def _before_proof(op: Operation) -> dict[str, dict[str, Any]]:
    sent = op.power_off_sent
    return {
        "alive": _noted(op, "alive") if sent else _abort("alive"),
        "maintenance": _noted(op, "maintenance") if sent else _abort("maintenance"),
        "sending": {"phase": Phase.FENCING, "power_off_sent": True},
        "done-ok": _proof(op),
        "done-fail": _failure(op),
        # nothing past the proof may happen before it
        "snapshot": UNCHANGED,
        "tainted": UNCHANGED,
        "deleted": UNCHANGED,
        "seen": UNCHANGED,
        # only where a walk left the operation, never before the first walk
        "self-fenced": UNCHANGED if op.phase is Phase.PENDING else SELF_FENCED,
        "cancelled": CANCELLED,  # the executor knows no request went out
        "withdrawn": _withdrawn(op),  # only right after PowerOffSending
        "powered-on": UNCHANGED,
        "on-again": UNCHANGED,  # nothing proven to void
        **dict.fromkeys((*RELEASE_EVENTS, *RETURN_EVENTS), UNCHANGED),
    }


def _after_proof(op: Operation, **rest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "alive": _noted(op, "alive"),
        "maintenance": _noted(op, "maintenance"),
        "sending": UNCHANGED,
        "done-ok": UNCHANGED,
        "done-fail": UNCHANGED,
        "self-fenced": UNCHANGED,
        "cancelled": UNCHANGED,  # proof is proof
        "withdrawn": UNCHANGED,
        "powered-on": UNCHANGED,  # only with after_proof reboot, once deleted
        # the machine runs again before its VMs were let go: the proof is stale
        "on-again": UNCHANGED if (op.node_deleted or op.pods_released) else ON_AGAIN,
        **_release(op),
        **dict.fromkeys(RETURN_EVENTS, UNCHANGED),  # only while Returning
        **rest,
    }


FINAL_ROW = dict.fromkeys(EVENTS, UNCHANGED)

# state -> event -> the fields that change (everything else must stay as it was)
TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "pending": _before_proof(PENDING),
    "fencing": _before_proof(FENCING),
    "failed-unsent": _before_proof(FAILED_UNSENT),
    "failed-sent": _before_proof(FAILED_SENT),
    "proven": _after_proof(
        PROVEN, snapshot=SNAPPED, tainted={"tainted": True}, deleted=_deleted(), seen=UNCHANGED
    ),
    "snapshotted": _after_proof(
        SNAPSHOTTED,
        snapshot={"capacity_warning": "no room for prod/a"},
        tainted={"tainted": True},
        deleted=_deleted(),
        seen=UNCHANGED,  # VMs are only checked once the Node is gone
    ),
    **{
        name: _after_proof(
            op,
            # once its pods are gone a snapshot cannot be better than the one before
            snapshot=UNCHANGED if op.pods_released else {"capacity_warning": "no room for prod/a"},
            tainted=UNCHANGED,
            deleted=_deleted(),  # (another leader deleted it: the release still goes on)
            seen=UNCHANGED,
        )
        for name, op in (
            ("tainted", TAINTED),
            ("pods-released", PODS_RELEASED),
            ("release-overdue", RELEASE_OVERDUE),
            ("released", RELEASED),
        )
    },
    "cleaned": _after_proof(
        CLEANED, snapshot=UNCHANGED, tainted=UNCHANGED, deleted=UNCHANGED, seen=_recovered(CLEANED)
    ),
    "recovering": _after_proof(
        RECOVERING,
        snapshot=UNCHANGED,  # a snapshot after the deletion cannot be better than the one before
        tainted=UNCHANGED,
        deleted=UNCHANGED,  # the deadline and deleted_at stay
        seen=_recovered(RECOVERING),
    ),
    "rebooting": _after_proof(
        REBOOTING,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=UNCHANGED,
        seen=_recovered(REBOOTING),
        **{"powered-on": {"powered_on": True, "powered_on_at": NOW}},
    ),
    "kept": _after_proof(
        KEPT,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=_recovered(KEPT),  # no reboot: Recovered, the Node stays tainted
    ),
    "kept-rebooting": _after_proof(
        KEPT_REBOOTING,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=_recovered(KEPT_REBOOTING),  # (CHECK_VMS comes after POWER_ON in practice)
        **{
            "powered-on": {
                "powered_on": True,
                "powered_on_at": NOW,
                "return_deadline": NOW + T.return_timeout,
            }
        },
    ),
    "kept-powered": _after_proof(
        KEPT_POWERED,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=_recovered(KEPT_POWERED, Phase.RETURNING),  # VMs judged: now wait for the node
    ),
    "returning": _after_proof(
        RETURNING,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=UNCHANGED,  # judged already
        back={"returned": True, "reason": RETURNED.reason},
    ),
    "return-overdue": _after_proof(
        RETURN_OVERDUE,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=UNCHANGED,
        back={"returned": True, "reason": RETURNED.reason},  # late, but back: untaint it
        **{
            "not-back": {
                "phase": Phase.RECOVERED,
                "reason": f"{RETURNING.reason}; w1 not back 900 s after the power-on:"
                " out-of-service taint kept (remove it once the node is repaired)",
            }
        },
    ),
    "returned": _after_proof(
        RETURNED,
        snapshot=UNCHANGED,
        tainted=UNCHANGED,
        deleted=_deleted_later(),
        seen=UNCHANGED,
        untainted={
            "untainted": True,
            "phase": Phase.RECOVERED,
            "reason": f"{RETURNED.reason}: out-of-service taint removed",
        },
    ),
    "recovered": FINAL_ROW,
    "incomplete": FINAL_ROW,
    "aborted": FINAL_ROW,
    "manual": FINAL_ROW,
}


def test_the_table_covers_every_phase_and_every_event() -> None:
    assert {op.phase for op in STATES.values()} == set(Phase)
    assert set(TABLE) == set(STATES)
    assert all(set(row) == set(EVENTS) for row in TABLE.values())
    assert {type(e) for e in EVENTS.values()} == set(Event.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("state", "event"), [(s, e) for s in STATES for e in EVENTS], ids=lambda x: str(x)
)
def test_every_phase_and_event_leads_to_the_specified_operation(state: str, event: str) -> None:
    op = STATES[state]
    assert apply(op, EVENTS[event], NOW, T) == replace(op, **TABLE[state][event])


@pytest.mark.parametrize(
    ("op", "now", "action"),
    [
        (PENDING, NOW, Action.POWER_OFF),
        (FENCING, NOW, Action.POWER_OFF),
        (FAILED_SENT, NOW, Action.WAIT_RETRY),
        (FAILED_SENT, NOW + 4.9, Action.WAIT_RETRY),
        (FAILED_SENT, NOW + 5.0, Action.POWER_OFF),
        (FAILED_UNSENT, NOW + 60.0, Action.POWER_OFF),
        (replace(FAILED_SENT, retry_at=None), NOW, Action.POWER_OFF),
        (PROVEN, NOW, Action.SNAPSHOT_VMS),
        (SNAPSHOTTED, NOW, Action.TAINT),
        (TAINTED, NOW, Action.RELEASE_PODS),
        (PODS_RELEASED, NOW, Action.RELEASE_ATTACHMENTS),
        (RELEASE_OVERDUE, NOW, Action.RELEASE_ATTACHMENTS),  # the next report ends it
        (RELEASED, NOW, Action.DELETE_NODE),
        (replace(TAINTED, release=False), NOW, Action.DELETE_NODE),
        (replace(TAINTED, node_deleted=True), NOW, Action.RELEASE_PODS),
        (CLEANED, NOW, Action.CHECK_VMS),
        (RECOVERING, NOW, Action.CHECK_VMS),
        (RECOVERING, NOW + 1e6, Action.CHECK_VMS),  # the deadline is judged on the next check
        (REBOOTING, NOW, Action.POWER_ON),  # only once the deletion is stored
        (replace(REBOOTING, powered_on=False), NOW, Action.CHECK_VMS),  # tried once
        (replace(TAINTED, cleanup=Cleanup.TAINT), NOW, Action.RELEASE_PODS),
        (KEPT, NOW, Action.CHECK_VMS),  # never DELETE_NODE
        (KEPT_REBOOTING, NOW, Action.POWER_ON),  # only once released
        (KEPT_POWERED, NOW, Action.CHECK_VMS),
        (RETURNING, NOW, Action.AWAIT_RETURN),
        (RETURN_OVERDUE, NOW, Action.AWAIT_RETURN),  # the next look ends it
        (RETURNED, NOW, Action.UNTAINT),
        (RECOVERED, NOW, Action.NONE),
        (INCOMPLETE, NOW, Action.NONE),
        (ABORTED, NOW, Action.NONE),
    ],
    ids=[
        "pending",
        "fencing",
        "failed-before-retry",
        "failed-just-before-retry",
        "failed-at-retry",
        "failed-after-retry",
        "failed-without-retry-time",
        "proven-snapshots-first",
        "snapshotted-taints",
        "tainted-releases-pods",
        "pods-released-releases-attachments",
        "release-overdue-looks-once-more",
        "released-deletes",
        "no-release-deletes",
        "deleted-by-another-still-releases",
        "cleaned-checks-vms",
        "recovering-checks-vms",
        "recovering-past-deadline",
        "rebooting-powers-on",
        "rebooting-tried",
        "taint-mode-releases-pods",
        "kept-checks-vms",
        "kept-rebooting-powers-on",
        "kept-powered-checks-vms",
        "returning-waits-for-the-node",
        "return-overdue-looks-once-more",
        "returned-untaints",
        "recovered",
        "incomplete",
        "aborted",
    ],
)
def test_next_action_for_each_phase(op: Operation, now: float, action: Action) -> None:
    assert next_action(op, now) is action


# -- scenarios ---------------------------------------------------------------------------------


def test_happy_path_fences_cleans_and_proves_the_restartable_vms_run_elsewhere() -> None:
    vms = (vm("a", "AlwaysOn"), vm("b", "AlwaysOnUnlessStoppedManually"), vm("m", "Manual"))
    op = PENDING
    seen: list[tuple[Phase, Action]] = []

    def step(event: Event, at: float) -> None:
        nonlocal op
        seen.append((op.phase, next_action(op, at)))
        op = apply(op, event, at, T)

    step(PowerOffSending(), 0.0)
    step(FenceDone(off_proven=True, level=1), 4.0)
    step(VmsSnapshotted(vms), 4.5)
    step(Tainted(), 5.0)
    step(PodsReleased(3), 5.2)
    step(AttachmentsReleased(2, ("pvc-a",)), 5.4)  # the attacher still holds one
    step(AttachmentsReleased(0), 5.6)
    step(NodeDeleted(), 6.0)
    step(VmsSeen({"prod/a": "w2", "prod/b": None, "prod/m": None}), 20.0)
    assert op.phase is Phase.RECOVERING
    step(VmsSeen({"prod/b": "w3"}), 36.0)

    assert seen == [
        (Phase.PENDING, Action.POWER_OFF),
        (Phase.FENCING, Action.POWER_OFF),
        (Phase.POWERED_OFF, Action.SNAPSHOT_VMS),
        (Phase.POWERED_OFF, Action.TAINT),
        (Phase.POWERED_OFF, Action.RELEASE_PODS),
        (Phase.POWERED_OFF, Action.RELEASE_ATTACHMENTS),
        (Phase.POWERED_OFF, Action.RELEASE_ATTACHMENTS),
        (Phase.POWERED_OFF, Action.DELETE_NODE),
        (Phase.RECOVERING, Action.CHECK_VMS),
        (Phase.RECOVERING, Action.CHECK_VMS),
    ]
    assert (op.pods_deleted, op.attachments_removed) == (3, 2)
    assert op.phase is Phase.RECOVERED and next_action(op, 37.0) is Action.NONE
    assert op.vms == (
        replace(vms[0], running_on="w2", recovered_after=14.0),
        replace(vms[1], running_on="w3", recovered_after=30.0),
        vms[2],  # Manual: expected to stay stopped, no outcome to wait for
    )
    assert (op.off_proven, op.tainted, op.node_deleted, op.level, op.attempts) == (
        True,
        True,
        True,
        1,
        1,
    )
    assert op.deleted_at == 6.0 and op.recovery_deadline == 306.0
    assert op.reason == (
        "2 restarted on other nodes; 1 left stopped (prod/m, Manual: start it by hand)"
    )
    assert op.errors == ()


def test_cleanup_taint_keeps_the_node_and_untaints_it_only_once_it_is_back() -> None:
    op = replace(PENDING, cleanup=Cleanup.TAINT, reboot=True)
    actions: list[Action] = []

    def step(event: Event, at: float) -> None:
        nonlocal op
        actions.append(next_action(op, at))
        op = apply(op, event, at, T)

    step(FenceDone(off_proven=True, level=1), 4.0)
    step(VmsSnapshotted((VM_A,)), 4.1)
    step(Tainted(), 4.2)
    step(PodsReleased(1), 4.3)
    step(AttachmentsReleased(1), 4.5)
    assert op.phase is Phase.RECOVERING and op.released_at == 4.5 and not op.node_deleted
    step(PoweredOn(True), 4.6)
    step(VmsSeen({"prod/a": OTHER}), 7.0)
    assert op.phase is Phase.RETURNING and op.verdict is Phase.RECOVERED and not op.final
    step(ReturnChecked(False), 60.0)
    step(ReturnChecked(True, "Ready, heartbeat 0.4 s ago"), 120.0)
    step(Untainted(), 120.1)
    assert actions == [
        Action.POWER_OFF,
        Action.SNAPSHOT_VMS,
        Action.TAINT,
        Action.RELEASE_PODS,
        Action.RELEASE_ATTACHMENTS,
        Action.POWER_ON,  # only once released, never a DELETE_NODE
        Action.CHECK_VMS,
        Action.AWAIT_RETURN,
        Action.AWAIT_RETURN,
        Action.UNTAINT,
    ]
    assert op.phase is Phase.RECOVERED and op.final and op.untainted
    assert op.vms == (replace(VM_A, running_on=OTHER, recovered_after=2.5),)
    assert op.reason.endswith("w1 back (Ready, heartbeat 0.4 s ago): out-of-service taint removed")


def test_cleanup_taint_without_reboot_ends_with_the_node_kept_tainted() -> None:
    op = fold(
        replace(PENDING, cleanup=Cleanup.TAINT),
        [
            (FenceDone(True, 1), 0.0),
            (VmsSnapshotted((VM_A,)), 0.0),
            (Tainted(), 0.0),
            (PodsReleased(1), 0.0),
            (AttachmentsReleased(1), 1.0),
            (VmsSeen({"prod/a": OTHER}), 3.0),
        ],
    )
    assert op.phase is Phase.RECOVERED and op.tainted and not op.untainted
    assert not op.node_deleted


def test_with_release_off_the_node_is_tainted_and_deleted_and_nothing_released() -> None:
    op = fold(
        replace(PENDING, release=False),
        [(FenceDone(True, 1), 0.0), (VmsSnapshotted((VM_A,)), 0.0), (Tainted(), 0.0)],
    )
    assert next_action(op, 0.0) is Action.DELETE_NODE
    assert apply(op, PodsReleased(3), 0.0, T) == op  # not asked for: not counted


def test_attachments_still_there_at_the_release_deadline_are_noted_and_the_fence_goes_on() -> None:
    op = fold(TAINTED, [(PodsReleased(2), NOW)])
    op = apply(op, AttachmentsReleased(2, ("pvc-a",)), NOW + 1.0, T)
    assert next_action(op, NOW + 1.0) is Action.RELEASE_ATTACHMENTS
    op = apply(op, AttachmentsReleased(0, ("pvc-a",)), NOW + 60.0, T)
    assert op.attachments_released and op.attachments_removed == 2
    assert op.errors[-1] == "still attached 60 s after the release: pvc-a"
    assert next_action(op, NOW + 60.0) is Action.DELETE_NODE


def test_a_powered_on_node_that_never_returns_keeps_its_taint_and_says_so() -> None:
    op = apply(RETURNING, ReturnChecked(False), RETURNING.return_deadline or 0.0, T)
    assert op.phase is Phase.RECOVERED and not op.untainted
    assert "not back 900 s after the power-on: out-of-service taint kept" in op.reason


def test_heartbeats_back_before_the_power_off_is_sent_abort_and_nothing_is_deleted() -> None:
    op = apply(PENDING, NodeAlive("heartbeat seq 42"), NOW, T)

    assert op.phase is Phase.ABORTED and op.final
    assert "heartbeat seq 42" in op.reason
    assert not (op.power_off_sent or op.off_proven or op.tainted or op.node_deleted)
    assert next_action(op, NOW) is Action.NONE
    # late reports of a walk that never happened change nothing
    assert fold(op, [(FenceDone(True, 1), NOW), (Tainted(), NOW), (NodeDeleted(), NOW)]) == op


def test_heartbeats_back_after_a_failed_walk_that_sent_nothing_still_abort() -> None:
    op = fold(PENDING, [(FenceDone(False, errors=("bmc unreachable",)), 0.0)])
    assert op.phase is Phase.FENCE_FAILED and not op.power_off_sent

    assert apply(op, NodeAlive("kubelet lease"), 1.0, T).phase is Phase.ABORTED


def test_heartbeats_back_after_the_power_off_was_sent_are_recorded_and_the_operation_goes_on() -> (
    None
):
    op = fold(PENDING, [(PowerOffSending(), 0.0), (NodeAlive("heartbeat seq 43"), 1.0)])

    assert op.phase is Phase.FENCING and op.power_off_sent
    assert op.errors == ("node alive after the power-off was sent",)
    assert next_action(op, 1.0) is Action.POWER_OFF
    op = fold(op, [(FenceDone(True, 1), 2.0), (NodeAlive("heartbeat seq 44"), 3.0)])
    assert op.phase is Phase.POWERED_OFF and next_action(op, 3.0) is Action.SNAPSHOT_VMS
    assert len(op.errors) == 2


def test_maintenance_before_the_point_of_no_return_aborts_the_operation() -> None:
    for op in (PENDING, FAILED_UNSENT):
        aborted = apply(op, Maintenance(), NOW, T)
        assert aborted.phase is Phase.ABORTED
        assert aborted.reason == "node entered maintenance before the power-off was sent"


def test_maintenance_after_the_point_of_no_return_is_recorded_and_ignored() -> None:
    for op in (FENCING, FAILED_SENT, PROVEN, TAINTED, RECOVERING):
        after = apply(op, Maintenance(), NOW, T)
        assert after == replace(
            op, errors=(*op.errors, "maintenance entered after the power-off was sent")
        )


def test_a_node_proven_off_without_a_request_is_past_the_point_of_no_return() -> None:
    # The walk can find the node already Off (a power loss) and send nothing; once the Off is
    # proven the Node may be tainted and deleted, so the operation must never turn "Aborted".
    already_off = apply(PENDING, FenceDone(off_proven=True, level=1), 0.0, T)
    deleted = fold(already_off, [(VmsSnapshotted(SNAPSHOT), 1.0), (NodeDeleted(), 2.0)])
    for op in (already_off, deleted):
        for event in (NodeAlive("power restored"), Maintenance()):
            assert apply(op, event, 3.0, T).phase is op.phase


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (6, 60.0), (50, 60.0)],
)
def test_retry_delay_doubles_from_retry_base_up_to_retry_max(attempts: int, delay: float) -> None:
    assert T.retry_delay(attempts) == delay


def test_fence_failed_retries_with_exponential_backoff_capped_at_retry_max() -> None:
    op, now, delays = PENDING, 0.0, []
    for attempt in range(1, 8):
        assert next_action(op, now) is Action.POWER_OFF
        op = fold(
            op, [(PowerOffSending(), now), (FenceDone(False, errors=(f"try {attempt}",)), now)]
        )
        assert op.phase is Phase.FENCE_FAILED and op.attempts == attempt
        assert op.reason == f"fencing failed (attempt {attempt}): try {attempt}"
        assert op.retry_at is not None and op.retry_at > now
        delays.append(op.retry_at - now)
        for wait in (now, (now + op.retry_at) / 2, op.retry_at - 0.001):
            assert next_action(op, wait) is Action.WAIT_RETRY
        now = op.retry_at
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert op.errors == tuple(f"try {i}" for i in range(1, 8))

    op = apply(op, FenceDone(True, level=2), now, T)
    assert op.phase is Phase.POWERED_OFF and op.attempts == 8 and op.retry_at is None


def test_fence_failed_never_plans_taint_or_delete_and_ignores_cleanup_reports() -> None:
    op = FAILED_SENT
    for at in (NOW, NOW + 4.0, NOW + 5.0, NOW + 1e6):
        assert next_action(op, at) in (Action.WAIT_RETRY, Action.POWER_OFF)
    for event in (VmsSnapshotted(SNAPSHOT), Tainted(), NodeDeleted(), VmsSeen({"prod/a": OTHER})):
        assert apply(op, event, NOW, T) == op


def test_recovery_deadline_ends_in_recovery_incomplete_naming_the_missing_vms() -> None:
    vms = (vm("a"), vm("b"), vm("c", "AlwaysOnUnlessStoppedManually"), vm("m", "Manual"))
    op = fold(
        PROVEN,
        [(VmsSnapshotted(vms), 0.0), (Tainted(), 0.0), (NodeDeleted(), 10.0)],
    )
    assert op.recovery_deadline == 310.0

    op = apply(op, VmsSeen({"prod/b": "w3"}), 309.9, T)
    assert op.phase is Phase.RECOVERING
    op = apply(op, VmsSeen({"prod/a": NODE, "prod/c": None}), 310.0, T)

    assert op.phase is Phase.RECOVERY_INCOMPLETE and op.final
    assert op.reason == (
        "not running elsewhere before the deadline: prod/a, prod/c;"
        " 1 left stopped by their runPolicy"
    )
    assert op.vms is not None
    outcomes = {v.name: (v.running_on, v.recovered_after) for v in op.vms}
    assert outcomes == {"a": (None, None), "b": ("w3", 299.9), "c": (None, None), "m": (None, None)}


def test_vms_with_manual_or_always_off_policies_are_not_waited_for() -> None:
    vms = (vm("m", "Manual"), vm("off", "AlwaysOff"))
    assert not any(v.expected_restart for v in vms)
    op = fold(PROVEN, [(VmsSnapshotted(vms), 0.0), (Tainted(), 0.0), (NodeDeleted(), 1.0)])

    op = apply(op, VmsSeen({}), 1.5, T)

    assert op.phase is Phase.RECOVERED
    assert op.vms == vms
    assert op.reason == ("2 left stopped (prod/m, prod/off, AlwaysOff/Manual: start them by hand)")


def test_a_vm_running_on_the_fenced_node_itself_is_not_recovered() -> None:
    op = apply(RECOVERING, VmsSeen({"prod/a": NODE}), NOW, T)
    assert op.phase is Phase.RECOVERING
    assert op.vms is not None and op.vms[0].running_on is None

    op = apply(op, VmsSeen({"prod/a": NODE}), NOW + 290.0, T)
    assert op.phase is Phase.RECOVERY_INCOMPLETE and "prod/a" in op.reason


def test_a_vm_snapshotted_on_the_fenced_node_is_still_waited_for() -> None:
    # A snapshot may say where the VM ran (its status.nodeName): that is the fenced node.
    on_node = vm("a", running_on=NODE)
    op = fold(PROVEN, [(VmsSnapshotted((on_node,)), 0.0), (Tainted(), 0.0), (NodeDeleted(), 1.0)])

    assert apply(op, VmsSeen({}), 2.0, T).phase is Phase.RECOVERING
    recovered = apply(op, VmsSeen({"prod/a": OTHER}), 3.0, T)
    assert recovered.phase is Phase.RECOVERED
    assert recovered.vms == (replace(on_node, running_on=OTHER, recovered_after=2.0),)


def test_vms_seen_before_the_node_is_deleted_do_not_finish_the_operation() -> None:
    for op in (PROVEN, SNAPSHOTTED, TAINTED):
        assert apply(op, VmsSeen({"prod/a": OTHER}), NOW, T) == op


def test_a_recovered_vm_keeps_its_outcome_when_later_checks_lose_sight_of_it() -> None:
    vms = (vm("a"), vm("b"))
    op = fold(RECOVERING, [(VmsSnapshotted(vms), NOW)])
    assert op.vms == SNAPSHOT  # the snapshot taken before the deletion stands
    op = replace(RECOVERING, vms=vms)
    op = apply(op, VmsSeen({"prod/a": "w2"}), NOW + 5.0, T)
    op = apply(op, VmsSeen({"prod/a": None, "prod/b": "w3"}), NOW + 9.0, T)
    assert op.phase is Phase.RECOVERED
    assert op.vms is not None
    assert [(v.running_on, v.recovered_after) for v in op.vms] == [("w2", 15.0), ("w3", 19.0)]


def test_two_leaders_tainting_and_deleting_in_either_order_agree() -> None:
    one = fold(SNAPSHOTTED, [(Tainted(), NOW), (NodeDeleted(), NOW)])
    other = fold(SNAPSHOTTED, [(NodeDeleted(), NOW), (Tainted(), NOW)])
    assert one == other
    assert one.phase is Phase.RECOVERING


# -- properties over random event orders ---------------------------------------------------------

FAST = Timing(
    retry_base=1.0, retry_max=8.0, recovery_timeout=20.0, release_timeout=10.0, return_timeout=30.0
)
STARTS = (
    PENDING,
    replace(PENDING, reboot=True),
    replace(PENDING, release=False),
    replace(PENDING, cleanup=Cleanup.TAINT),
    replace(PENDING, cleanup=Cleanup.TAINT, reboot=True),
)
starts = st.sampled_from(STARTS)
VM_NAMES = ("a", "b", "c", "d")
POLICIES = ("AlwaysOn", "AlwaysOnUnlessStoppedManually", "Manual", "AlwaysOff")
PLACES = (None, NODE, "w2", "w3")

vm_outcomes = st.lists(
    st.builds(
        vm, st.sampled_from(VM_NAMES), st.sampled_from(POLICIES), st.sampled_from((None, NODE))
    ),
    max_size=len(VM_NAMES),
    unique_by=lambda v: v.name,
).map(tuple)

noise = st.one_of(
    st.builds(NodeAlive, st.sampled_from(("heartbeat", "lease"))),
    st.just(Maintenance()),
    st.just(Cancelled("alive, and no request went out")),
    st.just(PoweredOnAgain("reads On again")),
)
walk_reports = st.builds(
    FenceDone,
    st.booleans(),
    st.sampled_from((None, 1, 2)),
    st.lists(st.sampled_from(("timeout", "auth failed")), max_size=2).map(tuple),
)
progress: st.SearchStrategy[Event] = st.one_of(
    st.just(PowerOffSending()),
    st.just(SendWithdrawn("the Node could not be read")),
    st.just(PoweredOn(True)),
    walk_reports,
    st.builds(VmsSnapshotted, vm_outcomes, st.sampled_from(("", "no room"))),
    st.just(Tainted()),
    st.just(NodeDeleted()),
    st.builds(
        VmsSeen,
        st.dictionaries(st.sampled_from([f"prod/{n}" for n in VM_NAMES]), st.sampled_from(PLACES)),
    ),
    st.builds(PodsReleased, st.integers(0, 3)),
    st.builds(
        AttachmentsReleased,
        st.integers(0, 2),
        st.lists(st.sampled_from(("pvc-a", "pvc-b")), max_size=2).map(tuple),
    ),
    st.builds(ReturnChecked, st.booleans(), st.just("Ready, heartbeat")),
    st.just(Untainted()),
)
# A node coming back ends most histories at once: keep it rare (1 in 10, and not on a bound,
# which hypothesis favours) so the deep phases get explored too.
events: st.SearchStrategy[Event] = st.integers(0, 9).flatmap(
    lambda n: noise if n == 7 else progress
)
advances = st.floats(min_value=0.0, max_value=30.0, allow_nan=False)
random_histories = st.lists(st.tuples(events, advances), max_size=40)


@st.composite
def shuffled_histories(draw: st.DrawFn) -> list[tuple[Event, float]]:
    """A whole successful run's reports, shuffled, with random (and repeated) reports mixed in."""
    vms = draw(vm_outcomes)
    whole: list[Event] = [
        PowerOffSending(),
        FenceDone(True, 1),
        VmsSnapshotted(vms),
        Tainted(),
        PodsReleased(2),
        AttachmentsReleased(1),
        NodeDeleted(),
        PoweredOn(True),
        VmsSeen({v.key: "w2" for v in vms}),
        ReturnChecked(True, "Ready"),
        Untainted(),
    ]
    mixed = draw(st.permutations([*whole, *draw(st.lists(events, max_size=20))]))
    return [(e, draw(advances)) for e in mixed]


histories = st.one_of(random_histories, shuffled_histories())

RANK = {
    Phase.PENDING: 0,
    Phase.FENCING: 1,
    Phase.FENCE_FAILED: 1,
    Phase.POWERED_OFF: 2,
    Phase.CLEANED: 3,
    Phase.RECOVERING: 4,
    Phase.RETURNING: 4.5,
    Phase.RECOVERED: 5,
    Phase.RECOVERY_INCOMPLETE: 5,
    Phase.ABORTED: 5,
}


def run(
    history: Iterable[tuple[Event, float]], timing: Timing = FAST, start: Operation = PENDING
) -> Iterator[Any]:
    """Yield (before, event, now, after) for each event of `history`, time moving forward."""
    op, now = start, 0.0
    for event, advance in history:
        now += advance
        after = apply(op, event, now, timing)
        yield op, event, now, after
        op = after


def replay(
    history: Iterable[tuple[Event, float]], start: Operation = PENDING
) -> tuple[Operation, float]:
    """The operation and the time after all of `history`."""
    op, now = start, 0.0
    for event, advance in history:
        now += advance
        op = apply(op, event, now, FAST)
    return op, now


def check_step(before: Operation, now: float, after: Operation, event: Event) -> None:
    """The invariants every single transition keeps, whatever the event."""
    # Only the executor's "no request went out" reports may undo the point of no return, and
    # only a machine seen running again may end a proven operation before its Node is gone.
    undoes = isinstance(event, Cancelled | SendWithdrawn)
    voids = isinstance(event, PoweredOnAgain)
    # (a) nothing irreversible on the Node before a proven Off: no taint, no release of its
    # pods or volumes, no deletion, no power-on, no untaint
    released = after.pods_released or after.attachments_released
    assert after.off_proven or not (after.tainted or after.node_deleted or released)
    irreversible = (
        Action.TAINT,
        Action.RELEASE_PODS,
        Action.RELEASE_ATTACHMENTS,
        Action.DELETE_NODE,
        Action.POWER_ON,
        Action.UNTAINT,
    )
    for at in (now, now + 1e9):
        if next_action(after, at) in irreversible:
            assert after.off_proven
    # pods and volumes are released only from a tainted Node, only when asked for, in order
    assert not after.pods_released or (after.tainted and after.release)
    assert not after.attachments_released or after.pods_released
    # cleanup taint keeps the Node; the taint goes only from a node that came back
    if after.cleanup is Cleanup.TAINT:
        assert next_action(after, now) is not Action.DELETE_NODE
    assert not after.untainted or (after.returned and after.powered_on)
    if after.cleanup is Cleanup.DELETE:
        assert after.phase is not Phase.RETURNING and not after.untainted
    # (b) the point of no return: a sent request or a proven Off is never aborted
    past_return = (before.off_proven and not voids) or (
        before.power_off_sent and not (undoes or voids)
    )
    if past_return and not before.final:
        assert after.phase is not Phase.ABORTED
    if after.phase is Phase.ABORTED and not after.off_proven:
        assert not (after.power_off_sent or after.tainted or after.node_deleted)
    if after.phase is Phase.ABORTED:
        assert not after.node_deleted  # a deleted Node is never "aborted": its VMs moved
    # (c) final phases absorb everything
    if before.final:
        assert after == before
    # the record only moves forward: flags stay set, phases never go back, times stay put
    flags = ("power_off_sent", "off_proven", "tainted", "node_deleted", "pods_released")
    for flag in (*flags, "attachments_released", "returned", "untainted"):
        if flag == "power_off_sent" and undoes:
            continue
        assert getattr(after, flag) or not getattr(before, flag), flag
    assert RANK[after.phase] >= RANK[before.phase]
    for stamp in ("deleted_at", "recovery_deadline", "released_at", "powered_on_at"):
        if getattr(before, stamp) is not None:
            assert getattr(after, stamp) == getattr(before, stamp), stamp
    if before.node_deleted and before.vms is not None:
        recovered = {v.key: v for v in before.vms if v.recovered_after is not None}
        assert recovered.items() <= {v.key: v for v in after.vms or ()}.items()
    # a finished recovery really happened: the Node is gone (or kept, released), VMs elsewhere
    if after.phase in (Phase.RECOVERED, Phase.RECOVERY_INCOMPLETE, Phase.RETURNING):
        assert after.off_proven and after.tainted
        assert after.node_deleted or after.released_at is not None
        assert after.vms is not None
    if after.phase is Phase.RECOVERED:
        assert after.vms is not None
        for v in after.vms:
            assert not v.expected_restart or v.running_on not in (None, NODE), v
    # (d) nothing silently stuck
    if not after.final:
        assert next_action(after, now) is not Action.NONE
    if after.phase is Phase.FENCE_FAILED:
        assert after.retry_at is not None and after.reason
        assert not (after.off_proven or after.tainted or after.node_deleted)


@PROPS
@given(starts, histories)
def test_any_event_order_keeps_the_safety_invariants(
    start: Operation, history: list[tuple[Event, float]]
) -> None:
    for before, event, now, after in run(history, start=start):
        check_step(before, now, after, event)
    hypothesis.event(f"{start.cleanup} ends in {replay(history, start)[0].phase}")


@PROPS
@given(starts, histories, walk_reports, advances)
def test_a_taint_release_deletion_or_proof_reported_twice_changes_nothing_the_second_time(
    start: Operation, history: list[tuple[Event, float]], walk: FenceDone, gap: float
) -> None:
    # Two leaders (or a leader resuming its predecessor's record) may report the same step.
    op, now = replay(history, start)
    repeated: list[Event] = [
        Tainted(),
        NodeDeleted(),
        PodsReleased(2),
        AttachmentsReleased(1),
        Untainted(),
    ]
    if op.off_proven or walk.off_proven:
        repeated.append(walk)  # before the proof, a failed walk is another attempt by design
    for event in repeated:
        once = apply(op, event, now, FAST)
        assert apply(once, event, now + gap, FAST) == once


@PROPS
@given(starts, histories)
def test_a_proven_off_ignores_every_further_walk_report(
    start: Operation, history: list[tuple[Event, float]]
) -> None:
    prefix = [(PowerOffSending(), 0.0), (FenceDone(True, 1), 1.0)]
    for before, event, now, after in run([*prefix, *history], start=start):
        check_step(before, now, after, event)
        if isinstance(event, FenceDone | PowerOffSending) and before.off_proven:
            assert after == before


# -- an executor-like driver ---------------------------------------------------------------------


def _bound(max_failures: int, timing: Timing, min_advance: float) -> int:
    """Steps a well-behaved executor needs at most: walks and waits, cleanup and release,
    recovery checks, a powered-on node's return."""
    per_failure = 1 + math.ceil(timing.retry_max / min_advance)
    waits = timing.release_timeout + timing.recovery_timeout + timing.return_timeout
    return max_failures * per_failure + 1 + 7 + math.ceil(waits / min_advance) + 3


@settings(PROPS, max_examples=200)  # long runs: each example drives up to ~100 steps
@given(st.data())
def test_a_driven_operation_ends_final_or_stays_visibly_pending_in_fence_failed(
    data: st.DataObject,
) -> None:
    start = data.draw(starts, "cleanup, reboot, release")
    bmc_reachable = data.draw(st.booleans(), "bmc reachable")
    max_failures = data.draw(st.integers(0, 6), "failures before the walk succeeds")
    vms = data.draw(vm_outcomes, "VMs on the node")
    no_room = data.draw(st.sets(st.sampled_from(VM_NAMES)), "VMs never started elsewhere")
    min_advance = 1.0
    bound = _bound(max_failures, FAST, min_advance)
    dt = st.floats(min_value=min_advance, max_value=10.0, allow_nan=False)
    rare = st.integers(0, 9).map(lambda n: n == 7)  # not a bound: hypothesis favours those

    op, now, failures, last = start, 0.0, 0, None
    for _ in range(bound):
        action = next_action(op, now)
        if op.final:
            assert action is Action.NONE
            break
        assert action is not Action.NONE, op
        batch: list[Event] = []
        if data.draw(rare, "noise"):
            batch.append(data.draw(st.sampled_from((NodeAlive("heartbeat"), Maintenance()))))
        if action is Action.POWER_OFF:
            if data.draw(rare, "node alive before sending"):
                batch.append(NodeAlive("checked before sending"))
            elif data.draw(st.booleans(), "a request is sent (not already Off)"):
                batch.append(PowerOffSending())
            ok = bmc_reachable and (failures >= max_failures or data.draw(st.booleans(), "ok"))
            failures += not ok
            batch.append(FenceDone(ok, 1 if ok else None, () if ok else ("bmc timeout",)))
        elif action is Action.WAIT_RETRY:
            now += data.draw(dt, "wait")
        elif action is Action.SNAPSHOT_VMS:
            batch.append(VmsSnapshotted(vms))
        elif action is Action.TAINT:
            batch.append(Tainted())
        elif action is Action.RELEASE_PODS:
            batch.append(PodsReleased(data.draw(st.integers(0, 3), "pods")))
        elif action is Action.RELEASE_ATTACHMENTS:
            now += data.draw(dt, "until the attachments are looked at")
            stuck = data.draw(st.booleans(), "an attachment is still there")
            batch.append(AttachmentsReleased(1, ("pvc-a",) if stuck else ()))
        elif action is Action.DELETE_NODE:
            batch.append(NodeDeleted())
        elif action is Action.POWER_ON:
            batch.append(PoweredOn(data.draw(st.booleans(), "power-on works")))
        elif action is Action.AWAIT_RETURN:
            now += data.draw(dt, "until the next look")
            batch.append(ReturnChecked(data.draw(st.booleans(), "node back"), "Ready"))
        elif action is Action.UNTAINT:
            batch.append(Untainted())
        else:
            assert action is Action.CHECK_VMS
            now += data.draw(dt, "until the check")
            places = st.sampled_from(PLACES)
            stopped = st.sampled_from((None, NODE))
            seen = {v.key: data.draw(stopped if v.name in no_room else places, v.key) for v in vms}
            batch.append(VmsSeen(seen))
        if last is not None and data.draw(rare, "a stale leader repeats its last report"):
            batch.append(last)
        for event in batch:
            before, op = op, apply(op, event, now, FAST)
            check_step(before, now, op, event)
            if op.phase is Phase.FENCE_FAILED and isinstance(event, FenceDone):
                assert op.retry_at is not None and op.retry_at > now  # visibly waiting
            last = event

    hypothesis.event(f"ends in {op.phase}")
    if not op.final:
        # only a node whose BMC never answers stays pending, and it says so
        assert not bmc_reachable
        assert op.phase is Phase.FENCE_FAILED and op.retry_at is not None
        assert next_action(op, now) in (Action.WAIT_RETRY, Action.POWER_OFF)
        assert "fencing failed" in op.reason
        assert not (op.tainted or op.node_deleted)
        return
    assert op.phase in FINAL
    if op.phase is Phase.ABORTED:
        assert not (op.power_off_sent or op.off_proven or op.node_deleted)
        return
    assert op.recovery_deadline is not None and op.vms is not None
    assert op.released and op.pods_released == op.release
    if op.cleanup is Cleanup.DELETE:
        assert op.node_deleted
    else:
        assert not op.node_deleted and op.released_at is not None
        if op.reboot and op.powered_on:  # it came back and was untainted, or said why not
            assert op.untainted or "not back" in op.reason
    assert [v.key for v in op.vms] == [v.key for v in vms]  # the snapshot, with outcomes
    for v in op.vms:
        if v.running_on not in (None, NODE):
            assert v.expected_restart and v.recovered_after is not None
            assert 0.0 < v.recovered_after <= FAST.recovery_timeout + 10.0
    if op.phase is Phase.RECOVERY_INCOMPLETE:
        assert now >= op.recovery_deadline
        missing = [v.key for v in op.vms if v.expected_restart and v.running_on in (None, NODE)]
        assert missing and ", ".join(missing) in op.reason
