"""The leader's view as it travels: the typed `LeaderView` the leader publishes (retained, on
`view_topic`) and `nodefence status` reads, and its JSON codec (`encode`, `decode`).

Pure, and light on purpose: `nodefence status` imports this module, never the leader's. The
JSON keys are the ones `nodefence status -o json` has always shown (camelCase, as the
records); `decode` takes what it can of a view (a missing or mistyped field reads as its
default, as an older or newer leader may write one field fewer or more) and raises
`ValueError` only for what is not a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodefence.agent.heartbeat.codec import PREFIX

Json = dict[str, Any]
VIEW_VERSION = 1
# json.dumps' output; a view is a tree built fresh, so the check for cycles (a twentieth of the
# encoding) finds nothing.
_ENCODER = json.JSONEncoder(check_circular=False)


def view_topic(cluster: str) -> str:
    """Retained topic where the leader publishes its view for `nodefence status`."""
    return f"{PREFIX}/{cluster}/leader/view"


@dataclass(frozen=True)
class NodeRow:
    """One node as the leader judges it (a row of the status table)."""

    node: str
    state: str  # nodefence.agent.detection.detector.NodeHealth's value: healthy, suspect, dead, ...
    heartbeat_age: float | None = None  # seconds since its last heartbeat, when the view was made
    kubelet_age: float | None = None
    kubelet_lease_seen: bool = False
    ready: bool | None = None  # None: Unknown
    reason: str = ""
    held: str = ""  # why a dead node is not fenced now ("" when it is not held)
    maintenance: str = ""  # the maintenance label's value
    cordoned: bool = False
    in_inventory: bool | None = None  # None: no inventory loaded
    agent: str | None = None  # the version its agent announced
    bmc: Json | None = (
        None  # nodefence.agent.leader.bmc_monitor_loop's node_view ("summary", "devices", ...)
    )


@dataclass(frozen=True)
class OperationEntry:
    """One fencing operation the leader runs or finished lately."""

    node: str
    id: str
    phase: str  # nodefence.agent.fencing.machine.Phase's value
    attempts: int = 0
    reason: str = ""
    last_error: str = ""
    off_proven: bool = False
    proof: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    vms_down: tuple[str, ...] | None = None  # None: not known (the leader could not read them)
    vms_left_stopped: str = ""
    vms: str = ""
    outage_seconds: float | None = None


@dataclass(frozen=True)
class Alert:
    """One alert of the leader's last decision (storm, broker down, ...)."""

    kind: str
    node: str | None = None
    message: str = ""


@dataclass(frozen=True)
class PauseState:
    """Fencing paused cluster-wide (`nodefence.agent.fencing.pause`)."""

    reason: str = ""
    by: str = ""
    since: str = ""


@dataclass(frozen=True)
class InventoryState:
    """The BMC inventory in force: how many nodes, and why its newest version was rejected."""

    nodes: int = 0
    problem: str = ""


@dataclass(frozen=True)
class LeaderView:
    """What the leader publishes once a period for `nodefence status`."""

    leader: str
    version: str = ""
    profile: str = ""
    period: float = 1.0  # seconds between two views
    frozen: bool = False  # the storm guard froze fence decisions
    paused: PauseState | None = None
    alerts: tuple[Alert, ...] = ()
    rejected: dict[str, int] = field(default_factory=dict)  # why -> messages refused
    nodes: tuple[NodeRow, ...] = ()
    operations: tuple[OperationEntry, ...] = ()
    inventory: InventoryState | None = None  # None: no inventory loaded
    published_at: float = 0.0  # the leader's wall clock (Unix seconds)
    v: int = VIEW_VERSION


def row_json(
    node: str,
    state: str,
    heartbeat_age: float | None,
    kubelet_age: float | None,
    kubelet_lease_seen: bool,
    ready: bool | None,
    reason: str,
    held: str,
    maintenance: str,
    cordoned: bool,
    in_inventory: bool | None,
    agent: str | None,
    bmc: Json | None,
) -> Json:
    """One node row as the view's JSON: `NodeRow`'s fields, in its order (the leader builds its
    rows with this directly, without a `NodeRow` in between)."""
    return {
        "node": node,
        "state": state,
        "heartbeatAge": heartbeat_age,
        "kubeletAge": kubelet_age,
        "kubeletLeaseSeen": kubelet_lease_seen,
        "ready": ready,
        "reason": reason,
        "held": held,
        "maintenance": maintenance,
        "cordoned": cordoned,
        "inInventory": in_inventory,
        "agent": agent,
        "bmc": bmc,
    }


def _row_json(r: NodeRow) -> Json:
    return row_json(
        r.node,
        r.state,
        r.heartbeat_age,
        r.kubelet_age,
        r.kubelet_lease_seen,
        r.ready,
        r.reason,
        r.held,
        r.maintenance,
        r.cordoned,
        r.in_inventory,
        r.agent,
        r.bmc,
    )


def operation_json(op: OperationEntry) -> Json:
    """One operation entry as the view's JSON."""
    return {
        "node": op.node,
        "id": op.id,
        "phase": op.phase,
        "attempts": op.attempts,
        "reason": op.reason,
        "lastError": op.last_error,
        "offProven": op.off_proven,
        "proof": op.proof,
        "startedAt": op.started_at,
        "endedAt": op.ended_at,
        "vmsDown": None if op.vms_down is None else list(op.vms_down),
        "vmsLeftStopped": op.vms_left_stopped,
        "vms": op.vms,
        "outageSeconds": op.outage_seconds,
    }


def view_json(
    *,
    leader: str,
    version: str,
    profile: str,
    period: float,
    frozen: bool,
    paused: PauseState | None,
    alerts: Sequence[Alert],
    rejected: Mapping[str, int],
    nodes: list[Json],
    operations: list[Json],
    inventory: InventoryState | None,
    published_at: float,
    v: int = VIEW_VERSION,
) -> Json:
    """A view as JSON from `LeaderView`'s fields, its rows and operations already as JSON
    (`row_json`, `operation_json`): what the leader publishes without building the view."""
    return {
        "v": v,
        "leader": leader,
        "version": version,
        "profile": profile,
        "period": period,
        "frozen": frozen,
        "paused": None
        if paused is None
        else {"reason": paused.reason, "by": paused.by, "since": paused.since},
        "alerts": [{"kind": a.kind, "node": a.node, "message": a.message} for a in alerts],
        "rejected": dict(rejected),
        "nodes": nodes,
        "operations": operations,
        "inventory": None
        if inventory is None
        else {"nodes": inventory.nodes, "problem": inventory.problem},
        "publishedAt": published_at,
    }


def to_json(view: LeaderView) -> Json:
    """The view as JSON (the keys `nodefence status -o json` shows)."""
    return view_json(
        leader=view.leader,
        version=view.version,
        profile=view.profile,
        period=view.period,
        frozen=view.frozen,
        paused=view.paused,
        alerts=view.alerts,
        rejected=view.rejected,
        nodes=[_row_json(r) for r in view.nodes],
        operations=[operation_json(op) for op in view.operations],
        inventory=view.inventory,
        published_at=view.published_at,
        v=view.v,
    )


def encode(view: LeaderView) -> bytes:
    """The view as the leader publishes it."""
    return encode_json(to_json(view))


def encode_json(doc: Json) -> bytes:
    """A view already as JSON (`view_json`) as the leader publishes it."""
    return _ENCODER.encode(doc).encode()


def _str(v: Any, default: str = "") -> str:
    return default if v is None else str(v)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _opt_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _dicts(v: Any) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def _row(d: Mapping[str, Any]) -> NodeRow:
    bmc = d.get("bmc")
    return NodeRow(
        node=_str(d.get("node"), "?"),
        state=_str(d.get("state"), "?"),
        heartbeat_age=_num(d.get("heartbeatAge")),
        kubelet_age=_num(d.get("kubeletAge")),
        kubelet_lease_seen=bool(d.get("kubeletLeaseSeen")),
        ready=_opt_bool(d.get("ready")),
        reason=_str(d.get("reason")),
        held=_str(d.get("held")),
        maintenance=_str(d.get("maintenance")),
        cordoned=bool(d.get("cordoned")),
        in_inventory=_opt_bool(d.get("inInventory")),
        agent=_opt_str(d.get("agent")),
        bmc=dict(bmc) if isinstance(bmc, Mapping) else None,
    )


def _operation(d: Mapping[str, Any]) -> OperationEntry:
    down = d.get("vmsDown")
    attempts = d.get("attempts")
    return OperationEntry(
        node=_str(d.get("node")),
        id=_str(d.get("id")),
        phase=_str(d.get("phase")),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
        reason=_str(d.get("reason")),
        last_error=_str(d.get("lastError")),
        off_proven=bool(d.get("offProven")),
        proof=_str(d.get("proof")),
        started_at=_opt_str(d.get("startedAt")),
        ended_at=_opt_str(d.get("endedAt")),
        vms_down=tuple(str(x) for x in down) if isinstance(down, list) else None,
        vms_left_stopped=_str(d.get("vmsLeftStopped")),
        vms=_str(d.get("vms")),
        outage_seconds=_num(d.get("outageSeconds")),
    )


def from_json(doc: Mapping[str, Any]) -> LeaderView:
    """The view in a decoded JSON object (see the module doc: missing fields default)."""
    paused, inventory, rejected = doc.get("paused"), doc.get("inventory"), doc.get("rejected")
    period = _num(doc.get("period"))
    nodes = inventory.get("nodes") if isinstance(inventory, Mapping) else None
    v = doc.get("v")
    return LeaderView(
        leader=_str(doc.get("leader"), "None"),
        version=_str(doc.get("version")),
        profile=_str(doc.get("profile"), "None"),
        period=1.0 if period is None else period,
        frozen=bool(doc.get("frozen")),
        paused=PauseState(
            _str(paused.get("reason")), _str(paused.get("by")), _str(paused.get("since"))
        )
        if isinstance(paused, Mapping)
        else None,
        alerts=tuple(
            Alert(_str(a.get("kind")), _opt_str(a.get("node")), _str(a.get("message")))
            for a in _dicts(doc.get("alerts"))
        ),
        rejected={str(k): int(n) for k, n in rejected.items() if isinstance(n, int)}
        if isinstance(rejected, Mapping)
        else {},
        nodes=tuple(_row(r) for r in _dicts(doc.get("nodes"))),
        operations=tuple(_operation(op) for op in _dicts(doc.get("operations"))),
        inventory=InventoryState(
            nodes if isinstance(nodes, int) else 0, _str(inventory.get("problem"))
        )
        if isinstance(inventory, Mapping)
        else None,
        published_at=_num(doc.get("publishedAt")) or 0.0,
        v=v if isinstance(v, int) else VIEW_VERSION,
    )


def decode(payload: bytes | str) -> LeaderView:
    """The view in a published payload; `ValueError` when it is not a JSON object."""
    doc = json.loads(payload)
    if not isinstance(doc, Mapping):
        raise ValueError("the leader's view is not a JSON object")
    return from_json(doc)
