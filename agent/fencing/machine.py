"""The fencing workflow of one node as a pure state machine (no I/O, no clock reads).

    Pending -> Fencing -> PoweredOff -> Recovering -> Recovered
                  |  ^                           \\-> RecoveryIncomplete
                  v  |                      (cleanup taint + reboot: -> Returning -> ...)
               FenceFailed (retry with backoff; the Node is never deleted from here)
    Pending/Fencing before the power-off request was sent -> Aborted (node came back)

Once Off is proven the node is released, step by step, each stored before the next:
SNAPSHOT_VMS -> TAINT (out-of-service) -> RELEASE_PODS (force-delete every pod bound to it) ->
RELEASE_ATTACHMENTS (delete its VolumeAttachments, wait until they and the Node's
`volumesAttached` are gone, at most `release_timeout`) -> DELETE_NODE (`cleanup: delete`) ->
CHECK_VMS. The taint comes first: the attach/detach controller detaches a volume still mounted
on a dead node at once only while it sees that taint on the Node. With `release` off the two
release steps are skipped (PodGC and the 6-minute detach timeout then free them).

With `reboot` (after_proof: reboot) the node is powered on again only after the cleanup is
stored (its Node deleted, or with `cleanup: taint` released): ... -> POWER_ON -> CHECK_VMS. With
`cleanup: taint` the Node is kept, tainted; after a reboot the operation waits (`Returning`,
at most `return_timeout`) until the node is Ready and its agent heartbeats again, removes the
taint (UNTAINT), and only then ends: the node is never fenced again for the same incident.

`next_action(op, now)` says what the executor must do next; `apply(op, event, now)` folds the
result back into a new `Operation`. Safety lives here and is tested exhaustively:
- taint, the release of pods and VolumeAttachments, delete, power-on and untaint are only ever
  planned after `off_proven`; the release only from a tainted Node, the untaint only from a
  node that came back;
- once `power_off_sent` is set (the point of no return) a node coming back does not abort the
  operation: it runs on to proof, cleanup and recovery;
- a node coming back, or entering maintenance, before that point aborts the operation;
- `PoweredOnAgain` ends an operation whose Off was proven but whose VMs were not let go yet
  (pods not released, Node not deleted), when the machine shows it runs again (powered on by
  someone, a BMC's power-restore policy): the proof is stale, and letting its VMs go would
  start them twice. The operation ends Aborted with the Node kept (its taint removed);
- `Cancelled` aborts any operation whose Off is not proven: the executor reports it only when
  it knows no power-off went out (its last check after storing PowerOffSending found the node
  alive or in maintenance), or when a new leader resumed the operation without deciding the
  node dead itself and then saw it alive with its own evidence;
- a watchdog self-fence (`SelfFenced`, see `nodefence.agent.node.watchdog_rules`) counts as proof
  only where a failed power walk left the operation (Fencing or FenceFailed), never instead of a
  walk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nodefence.agent.config.agent_options import Fencing
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
    VmsSeen,
    VmsSnapshotted,
)
from nodefence.agent.fencing.operation import Action, Cleanup, Operation, Phase
from nodefence.agent.fencing.outcome import vm_summary

__all__ = ["Timing", "apply", "next_action"]


@dataclass(frozen=True)
class Timing:
    """Retry backoff, the recovery deadline, how long released VolumeAttachments may take to
    go and (cleanup taint + reboot) a powered-on node to return, in seconds."""

    retry_base: float = Fencing.retry_base.default  # declared once, as `fencing.retry_base`
    retry_max: float = Fencing.retry_max.default
    recovery_timeout: float = Fencing.recovery_timeout.default
    release_timeout: float = Fencing.release_timeout.default
    return_timeout: float = Fencing.return_timeout.default

    def retry_delay(self, attempts: int) -> float:
        """Pause after the `attempts`-th failed walk (1-based)."""
        return float(min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1)))


def next_action(op: Operation, now: float) -> Action:
    """What to do next for `op` at `now`."""
    if op.final:
        return Action.NONE
    if op.phase in (Phase.PENDING, Phase.FENCING):
        return Action.POWER_OFF
    if op.phase is Phase.FENCE_FAILED:
        return Action.POWER_OFF if op.retry_at is None or now >= op.retry_at else Action.WAIT_RETRY
    # PoweredOff or later: off is proven.
    if op.vms is None:
        return Action.SNAPSHOT_VMS
    if not op.tainted:
        return Action.TAINT
    if op.release and not op.pods_released:
        return Action.RELEASE_PODS
    if op.release and not op.attachments_released:
        return Action.RELEASE_ATTACHMENTS
    if op.cleanup is Cleanup.DELETE and not op.node_deleted:
        return Action.DELETE_NODE
    if op.reboot and op.powered_on is None:
        return Action.POWER_ON
    if op.phase is Phase.RETURNING:
        return Action.UNTAINT if op.returned else Action.AWAIT_RETURN
    return Action.CHECK_VMS


def apply(op: Operation, event: Event, now: float, timing: Timing = Timing()) -> Operation:
    """Fold one event into the operation (pure)."""
    if op.final:
        return op
    if isinstance(event, NodeAlive | Maintenance):
        if op.power_off_sent or op.off_proven:
            # Past the point of no return: the node may be alive only because the off has
            # not landed yet (or power came back after a proven Off, when the Node may already
            # be tainted or deleted). Record, and carry on to proof, cleanup and recovery.
            what = "node alive" if isinstance(event, NodeAlive) else "maintenance entered"
            return replace(op, errors=(*op.errors, f"{what} after the power-off was sent"))
        reason = (
            f"node came back before the power-off was sent ({event.evidence})"
            if isinstance(event, NodeAlive)
            else "node entered maintenance before the power-off was sent"
        )
        return replace(op, phase=Phase.ABORTED, reason=reason)
    if isinstance(event, Cancelled):
        if op.off_proven:
            return op  # proof is proof: cleanup and recovery go on
        return replace(op, phase=Phase.ABORTED, power_off_sent=False, reason=event.reason)
    if isinstance(event, PoweredOnAgain):
        if not op.off_proven or op.vms_let_go:
            return op  # nothing proven to void, or too late: its VMs were let go already
        return replace(
            op,
            phase=Phase.ABORTED,
            reason=(
                f"powered on again after the proof, before its VMs were released"
                f" ({event.evidence}): the Node is kept and its VMs stay where they run"
            ),
        )
    if isinstance(event, SendWithdrawn):
        if op.off_proven or op.phase is not Phase.FENCING:
            return op  # only right after PowerOffSending (which always leads to Fencing)
        attempts = op.attempts + 1
        return replace(
            op,
            phase=Phase.FENCE_FAILED,
            power_off_sent=False,
            attempts=attempts,
            errors=(*op.errors, event.reason),
            retry_at=now + timing.retry_delay(attempts),
            reason=f"fencing failed (attempt {attempts}): {event.reason}",
        )
    if isinstance(event, PowerOffSending):
        if op.phase not in (Phase.PENDING, Phase.FENCING, Phase.FENCE_FAILED):
            return op
        return replace(op, phase=Phase.FENCING, power_off_sent=True)
    if isinstance(event, FenceDone):
        if op.off_proven:
            return op
        if event.off_proven:
            return replace(
                op,
                phase=Phase.POWERED_OFF,
                off_proven=True,
                level=event.level,
                attempts=op.attempts + 1,
                errors=(*op.errors, *event.errors),
                retry_at=None,
                reason="power off proven by read-back",
                proof="read-back",
                proven_at=now,
            )
        attempts = op.attempts + 1
        last = event.errors[-1] if event.errors else "no level succeeded"
        return replace(
            op,
            phase=Phase.FENCE_FAILED,
            attempts=attempts,
            errors=(*op.errors, *event.errors),
            retry_at=now + timing.retry_delay(attempts),
            reason=f"fencing failed (attempt {attempts}): {last}",
        )
    if isinstance(event, SelfFenced):
        if op.off_proven or op.phase not in (Phase.FENCING, Phase.FENCE_FAILED):
            return op
        return replace(
            op,
            phase=Phase.POWERED_OFF,
            off_proven=True,
            retry_at=None,
            reason=event.evidence,
            proof="watchdog",
            proven_at=now,
        )
    if not op.off_proven:
        return op  # nothing past the proof can happen before it
    if isinstance(event, VmsSnapshotted):
        if op.vms is not None and (op.node_deleted or op.pods_released or op.released_at):
            return op  # once its pods are gone a snapshot cannot be better; keep the outcomes
        return replace(op, vms=event.vms, capacity_warning=event.capacity_warning)
    if isinstance(event, Tainted):
        if op.tainted:
            return op  # never back from Recovering
        return _maybe_released(replace(op, tainted=True), now, timing)
    if isinstance(event, PodsReleased | AttachmentsReleased):
        return _maybe_released(_fold_release(op, event, now, timing), now, timing)
    if isinstance(event, NodeDeleted):
        if op.node_deleted:
            return op  # a resumed or second leader: keep deleted_at and the deadline
        if not op.tainted:
            op = replace(op, tainted=True)
        op = replace(op, node_deleted=True, deleted_at=now)
        if op.recovery_deadline is not None:
            return op  # cleanup taint, released already: the clock runs from the release
        return replace(
            op,
            phase=Phase.RECOVERING,
            recovery_deadline=now + timing.recovery_timeout,
            reason="node deleted; waiting for its ColdStandby VMs",
        )
    if isinstance(event, PoweredOn):
        if not op.reboot or op.recovery_start is None or op.powered_on is not None:
            return op
        if event.ok:
            deadline = now + timing.return_timeout if op.cleanup is Cleanup.TAINT else None
            return replace(op, powered_on=True, powered_on_at=now, return_deadline=deadline)
        return replace(
            op, powered_on=False, errors=(*op.errors, f"power-on after the fence: {event.error}")
        )
    if isinstance(event, VmsSeen):
        # VMs are only judged once they were snapshotted and the cleanup is done (CHECK_VMS).
        if op.phase is Phase.RETURNING or op.recovery_start is None or op.vms is None:
            return op
        return _fold_vms(op, event, now)
    if isinstance(event, ReturnChecked | Untainted):
        return _fold_return(op, event, now, timing)
    return op


def _fold_release(
    op: Operation, event: PodsReleased | AttachmentsReleased, now: float, timing: Timing
) -> Operation:
    """Count a release step; attachments still present only end it at `release_deadline`."""
    if not op.release or not op.tainted:
        return op  # releasing comes after the taint, and only when asked for
    deadline = op.release_deadline
    if deadline is None:
        deadline = now + timing.release_timeout
    if isinstance(event, PodsReleased):
        if op.pods_released:
            return op
        total = op.pods_deleted + event.deleted
        return replace(op, pods_released=True, pods_deleted=total, release_deadline=deadline)
    if op.attachments_released or not op.pods_released:
        return op
    op = replace(op, attachments_removed=op.attachments_removed + event.removed)
    op = replace(op, release_deadline=deadline)
    if not event.remaining:
        return replace(op, attachments_released=True)
    if now < deadline:
        return op
    left = ", ".join(event.remaining)
    note = f"still attached {timing.release_timeout:g} s after the release: {left}"
    return replace(op, attachments_released=True, errors=(*op.errors, note))


def _maybe_released(op: Operation, now: float, timing: Timing) -> Operation:
    """cleanup taint: the release is complete: the VMs' recovery clock starts now."""
    if op.cleanup is not Cleanup.TAINT or not op.released or op.released_at is not None:
        return op
    if op.recovery_deadline is not None:  # somebody deleted the Node: that clock runs already
        return replace(op, released_at=now)
    return replace(
        op,
        released_at=now,
        phase=Phase.RECOVERING,
        recovery_deadline=now + timing.recovery_timeout,
        reason="node kept out of service and released; waiting for its ColdStandby VMs",
    )


def _fold_return(
    op: Operation, event: ReturnChecked | Untainted, now: float, timing: Timing
) -> Operation:
    if op.phase is not Phase.RETURNING or op.verdict is None:
        return op
    if isinstance(event, Untainted):
        if not op.returned:
            return op
        why = f"{op.reason}: out-of-service taint removed"
        return replace(op, untainted=True, phase=op.verdict, reason=why)
    if op.returned:
        return op
    if event.back:
        return replace(op, returned=True, reason=f"{op.reason}; {op.node} back ({event.evidence})")
    if op.return_deadline is not None and now >= op.return_deadline:
        why = (
            f"{op.reason}; {op.node} not back {timing.return_timeout:g} s after the power-on:"
            " out-of-service taint kept (remove it once the node is repaired)"
        )
        return replace(op, phase=op.verdict, reason=why)
    return op


def _fold_vms(op: Operation, event: VmsSeen, now: float) -> Operation:
    vms = []
    start = op.recovery_start
    heard = op.last_heartbeat
    for vm in op.vms or ():
        where = event.running.get(vm.key, vm.running_on)
        waiting = vm.running_on is None or vm.running_on == op.node  # the snapshot's nodeName
        if vm.expected_restart and waiting and where and where != op.node:
            since = max(0.0, now - start) if start is not None else None
            outage = max(0.0, now - heard) if heard is not None else None
            vm = replace(vm, running_on=where, recovered_after=since, outage=outage)
        vms.append(vm)
    op = replace(op, vms=tuple(vms))
    pending = [v for v in vms if v.expected_restart and v.running_on in (None, op.node)]
    if not pending:
        verdict = Phase.RECOVERED
        reason = vm_summary(vms, op.node)
    elif op.recovery_deadline is not None and now >= op.recovery_deadline:
        verdict = Phase.RECOVERY_INCOMPLETE
        reason = f"not running elsewhere before the deadline: {', '.join(v.key for v in pending)}"
        stopped = [v for v in vms if not v.expected_restart]
        if stopped:
            reason += f"; {len(stopped)} left stopped by their runPolicy"
    else:
        return op
    if op.cleanup is Cleanup.TAINT and op.reboot and op.powered_on and not op.untainted:
        # The node was powered on again: wait for it, then lift the taint, then end.
        return replace(op, phase=Phase.RETURNING, verdict=verdict, reason=reason)
    return replace(op, phase=verdict, reason=reason)
