"""FenceOperation records: an `Operation` as the custom resource stored in the cluster.

The record lets a new leader resume an operation the old one left half way. Times in the
record are wall-clock (for people, and to carry the recovery deadline over); the in-memory
deadlines are monotonic: `resumed` rebuilds them from the record's wall times, so a successor
neither waits forever nor longer than `recovery_timeout` after the deletion (a wall clock
that jumped is clamped to that range).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import replace
from typing import Any

from nodefence.agent.fencing.events import VmOutcome
from nodefence.agent.fencing.evidence import utc_text
from nodefence.agent.fencing.machine import Timing
from nodefence.agent.fencing.operation import Cleanup, Operation, Phase
from nodefence.agent.heartbeat.codec import valid_name
from nodefence.agent.kube.client import RECORD_GROUP, RECORD_VERSION
from nodefence.agent.kube.node_label import NODE_LABEL, node_label_value
from nodefence.agent.virt.names import Virt, virt_of_record

__all__ = ["NODE_LABEL", "from_record", "is_open_mark", "record_name", "resumed", "to_record"]
_DIGEST = 20  # hex digits of SHA-256(node, id) in a shortened name: 80 bits
# What decides whether a VM comes back, in its API's own words.
POLICY_FIELD = {Virt.DECKHOUSE: "runPolicy", Virt.KUBEVIRT: "runStrategy"}


def record_name(op: Operation) -> str:
    """The resource name: unique per operation, readable per node, always a valid name.

    `fence-<node>-<id>` when that is a DNS-1123 subdomain of at most 253 characters; else the
    start of `fence-<node>` and a hash of node and id, so a long node name never cuts the id
    away (two operations on one node never share a record).
    """
    plain = f"fence-{op.node}-{op.id}"
    if valid_name(plain):
        return plain
    digest = hashlib.sha256(f"{op.node}\0{op.id}".encode()).hexdigest()[:_DIGEST]
    head = f"fence-{op.node}"[: 253 - 1 - _DIGEST].rstrip("-.")
    return f"{head}-{digest}"


def _now() -> str:
    """Now, UTC, to the millisecond (`nodefence history` orders and shows fences by it)."""
    return utc_text(dt.datetime.now(dt.UTC), "milliseconds")


def _stamp(wall: float) -> str:
    return utc_text(dt.datetime.fromtimestamp(wall, dt.UTC), "microseconds")


# The stamps this module writes (`_stamp`), ASCII digits only: read without `strptime`, which
# costs about 100 us a call. Anything else (or a date `datetime` refuses) takes the `strptime`
# path, so the answer is always the one `strptime` gives.
_STAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)


def _parse_stamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    m = _STAMP.fullmatch(text)
    if m is not None:
        year, month, day, hour, minute, second, frac = m.groups()
        try:
            return dt.datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second),
                int(frac.ljust(6, "0")) if frac else 0,
                tzinfo=dt.UTC,
            ).timestamp()
        except ValueError:
            pass
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    return None


def to_record(
    op: Operation,
    namespace: str,
    leader: str,
    base: dict[str, Any] | None = None,
    action: str = "off",
    wall: float | None = None,
    evidence: dict[str, Any] | None = None,
    heard_at: float | None = None,
    requested_by: str = "",
) -> dict[str, Any]:
    """The custom resource body for `op` (keeps `base`'s metadata: name, resourceVersion).

    `wall` (seconds since the epoch, default now) stamps `deletedAt`, `podsReleasedAt`,
    `attachmentsReleasedAt`, `releasedAt` and `untaintedAt` the first time the operation is
    stored with that step done. `evidence` (`nodefence.agent.fencing.evidence`) is stored as
    `status.evidence`; without it the evidence already in `base` is kept. `heard_at` (epoch
    seconds) is the node's last heartbeat, stored once as `lastHeartbeatAt` (the VMs' outage
    is counted from it). `requested_by` marks a manual fence (`nodefence fence`; origin
    manual, phase Manual): who ran it."""
    meta = dict((base or {}).get("metadata") or {})
    meta.setdefault("name", record_name(op))
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), NODE_LABEL: node_label_value(op.node)}
    base_status = (base or {}).get("status") or {}
    started = base_status.get("startedAt") or _now()
    stamp = _stamp(wall if wall is not None else dt.datetime.now(dt.UTC).timestamp())

    def first(field: str, done: bool) -> str | None:
        """The wall time a step was first stored done (kept from `base`)."""
        return base_status.get(field) or (stamp if done else None)

    deleted_at = first("deletedAt", op.node_deleted)
    heard = base_status.get("lastHeartbeatAt") or (None if heard_at is None else _stamp(heard_at))
    evidence = evidence if evidence is not None else base_status.get("evidence")
    record: dict[str, Any] = {
        "apiVersion": f"{RECORD_GROUP}/{RECORD_VERSION}",
        "kind": "FenceOperation",
        "metadata": meta,
        "spec": {
            "nodeName": op.node,
            "nodeUID": op.node_uid,
            "operationId": op.id,
            "action": "reboot" if op.reboot else action,
            "cleanup": op.cleanup.value,
            "release": op.release,
            "origin": "manual" if requested_by else "automatic",
        },
        "status": {
            "phase": op.phase.value,
            "reason": op.reason,
            "powerOffSent": op.power_off_sent,
            "offProven": op.off_proven,
            "proof": op.proof,
            "level": op.level,
            "attempts": op.attempts,
            "tainted": op.tainted,
            "nodeDeleted": op.node_deleted,
            "deletedAt": deleted_at,
            "poweredOn": op.powered_on,
            "podsReleased": op.pods_released,
            "podsDeleted": op.pods_deleted,
            "podsReleasedAt": first("podsReleasedAt", op.pods_released),
            "attachmentsReleased": op.attachments_released,
            "attachmentsRemoved": op.attachments_removed,
            "attachmentsReleasedAt": first("attachmentsReleasedAt", op.attachments_released),
            "releasedAt": first("releasedAt", op.released_at is not None),
            "verdict": None if op.verdict is None else op.verdict.value,
            "returned": op.returned,
            "untainted": op.untainted,
            "untaintedAt": first("untaintedAt", op.untainted),
            "errors": list(op.errors[-20:]),
            "capacityWarning": op.capacity_warning,
            "lastHeartbeatAt": heard,
            "vms": None
            if op.vms is None
            else [
                {
                    "virtualization": v.virt.value,
                    "namespace": v.namespace,
                    "name": v.name,
                    POLICY_FIELD[v.virt]: v.run_policy,
                    "expectedRestart": v.expected_restart,
                    "runningOn": v.running_on,
                    "recoveredAfterSeconds": None
                    if v.recovered_after is None
                    else round(v.recovered_after, 3),
                    "outageSeconds": None if v.outage is None else round(v.outage, 3),
                }
                for v in op.vms
            ],
            "leader": leader,
            "startedAt": started,
            "updatedAt": _now(),
        },
    }
    if requested_by:
        record["spec"]["requestedBy"] = requested_by
    if evidence is not None:
        record["status"]["evidence"] = evidence
    return record


def from_record(obj: dict[str, Any]) -> Operation:
    """The `Operation` a record describes (deadlines are not carried over)."""
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    vms_doc = st.get("vms")
    vms = (
        None
        if vms_doc is None
        else tuple(
            VmOutcome(
                v["namespace"],
                v["name"],
                v.get("runPolicy") or v.get("runStrategy") or "",
                bool(v.get("expectedRestart")),
                v.get("runningOn"),
                v.get("recoveredAfterSeconds"),
                virt_of_record(v.get("virtualization")),
                v.get("outageSeconds"),
            )
            for v in vms_doc
        )
    )
    return Operation(
        node=spec["nodeName"],
        id=spec.get("operationId", ""),
        phase=Phase(st.get("phase", Phase.PENDING.value)),
        power_off_sent=bool(st.get("powerOffSent")),
        off_proven=bool(st.get("offProven")),
        level=st.get("level"),
        attempts=int(st.get("attempts") or 0),
        tainted=bool(st.get("tainted")),
        node_deleted=bool(st.get("nodeDeleted")),
        vms=vms,
        errors=tuple(st.get("errors") or ()),
        reason=st.get("reason", ""),
        capacity_warning=st.get("capacityWarning", ""),
        proof=st.get("proof") or "",
        node_uid=str(spec.get("nodeUID") or ""),
        reboot=spec.get("action") == "reboot",
        powered_on=st.get("poweredOn") if isinstance(st.get("poweredOn"), bool) else None,
        cleanup=Cleanup(spec.get("cleanup") or Cleanup.DELETE.value),
        release=spec.get("release") is not False,
        pods_released=bool(st.get("podsReleased")),
        pods_deleted=int(st.get("podsDeleted") or 0),
        attachments_released=bool(st.get("attachmentsReleased")),
        attachments_removed=int(st.get("attachmentsRemoved") or 0),
        verdict=Phase(st["verdict"]) if st.get("verdict") else None,
        returned=bool(st.get("returned")),
        untainted=bool(st.get("untainted")),
    )


def is_open_mark(op: Operation) -> bool:
    """Does this operation tell its node "you are being fenced"? Unfinished and its Node not
    deleted yet: a Recovering record belongs to an earlier incarnation of the node (deleted,
    then registered again), not to the one reading it; and not once the leader powered the
    node on again after the proof (cleanup taint + reboot: the node is meant to come back)."""
    return not op.final and not op.node_deleted and not (op.off_proven and op.powered_on)


def resumed(
    op: Operation, obj: dict[str, Any], now: float, wall_now: float, timing: Timing
) -> Operation:
    """`op` (read from record `obj`) with its monotonic deadlines rebuilt for a successor.

    The recovery deadline is `deletedAt` (cleanup delete) or `releasedAt` (cleanup taint) +
    recovery_timeout, moved onto this process's clock (`now` monotonic, `wall_now` epoch
    seconds) and clamped between now and now + recovery_timeout; without a readable stamp the
    whole timeout starts now. A release in progress gets a fresh `release_timeout`, a node
    powered on again a fresh `return_timeout` (and must heartbeat after `now`). The node's last
    heartbeat (`lastHeartbeatAt`) is moved onto this clock too: the VMs' outage counts from it.
    """
    if op.final:
        return op
    st = obj.get("status") or {}

    def since(field: str) -> float:
        stamp = _parse_stamp(st.get(field))
        if stamp is None:
            return 0.0
        return min(max(0.0, wall_now - stamp), timing.recovery_timeout)

    if op.pods_released and not op.attachments_released and op.release_deadline is None:
        op = replace(op, release_deadline=now + timing.release_timeout)
    if op.powered_on and op.cleanup is Cleanup.TAINT and op.powered_on_at is None:
        op = replace(op, powered_on_at=now, return_deadline=now + timing.return_timeout)
    heard = _parse_stamp(st.get("lastHeartbeatAt"))
    if heard is not None and op.last_heartbeat is None:
        op = replace(op, last_heartbeat=now - max(0.0, wall_now - heard))
    if op.recovery_deadline is not None:
        return op
    if op.cleanup is Cleanup.TAINT and st.get("releasedAt"):
        ago = since("releasedAt")
        return replace(
            op, released_at=now - ago, recovery_deadline=now + timing.recovery_timeout - ago
        )
    if not op.node_deleted:
        return op
    ago = since("deletedAt")
    return replace(op, deleted_at=now - ago, recovery_deadline=now + timing.recovery_timeout - ago)
