"""FenceOperation records: an `Operation` as the custom resource stored in the cluster.

The record lets a new leader resume an operation the old one left half way. Times in the
record are wall-clock (for people); the in-memory deadlines are monotonic and restart from
the moment a leader resumes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from agent.cluster import RECORD_GROUP, RECORD_VERSION
from agent.fencing import Operation, Phase, VmOutcome
from agent.heartbeat_codec import valid_name
from agent.node_label import NODE_LABEL, node_label_value

__all__ = ["NODE_LABEL", "from_record", "record_name", "to_record"]
_DIGEST = 20  # hex digits of SHA-256(node, id) in a shortened name: 80 bits


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
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_record(
    op: Operation,
    namespace: str,
    leader: str,
    base: dict[str, Any] | None = None,
    action: str = "off",
) -> dict[str, Any]:
    """The custom resource body for `op` (keeps `base`'s metadata: name, resourceVersion)."""
    meta = dict((base or {}).get("metadata") or {})
    meta.setdefault("name", record_name(op))
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), NODE_LABEL: node_label_value(op.node)}
    started = ((base or {}).get("status") or {}).get("startedAt") or _now()
    return {
        "apiVersion": f"{RECORD_GROUP}/{RECORD_VERSION}",
        "kind": "FenceOperation",
        "metadata": meta,
        "spec": {"nodeName": op.node, "operationId": op.id, "action": action},
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
            "errors": list(op.errors[-20:]),
            "capacityWarning": op.capacity_warning,
            "vms": None
            if op.vms is None
            else [
                {
                    "namespace": v.namespace,
                    "name": v.name,
                    "runPolicy": v.run_policy,
                    "expectedRestart": v.expected_restart,
                    "runningOn": v.running_on,
                    "recoveredAfterSeconds": None
                    if v.recovered_after is None
                    else round(v.recovered_after, 3),
                }
                for v in op.vms
            ],
            "leader": leader,
            "startedAt": started,
            "updatedAt": _now(),
        },
    }


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
                v.get("runPolicy", ""),
                bool(v.get("expectedRestart")),
                v.get("runningOn"),
                v.get("recoveredAfterSeconds"),
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
    )
