"""The leader's view for `nodefence status`: the operation entries the leader publishes, and
what the command makes of a view: its lines, and what needs someone (the exit code).

Pure: the leader builds entries from its state (`operation_entry`); the command passes the
view and its age (`report`). A view older than `stale_after` is STALE: the leader that
published it is gone (or reaches no broker), and every age in it is older by the view's age.
Someone must act (`Report.attention`, exit 1) when: the view is stale; a fence failed; VMs
were not restarted (the deadline passed) or were left stopped by their runPolicy; a dead node
is held only because fencing is paused; the inventory file was rejected; or an alert asks for
it (storm, broker down, agent lost, no inventory entry, a node marked for maintenance but
schedulable, Deckhouse fencing too, failing BMC checks, a node that cannot be fenced). Planned
states (maintenance, a drained node powered off, a pause with nobody dead) are shown, not
counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.fence_outcome import longest_outage, still_down, stopped_clause, vm_summary
from agent.fencing_operation import Operation, Phase

Json = dict[str, Any]
STALE_MIN = 3.0  # seconds; the leader publishes once a second
ATTENTION_ALERTS = frozenset(
    {
        "storm",
        "broker-down",
        "agent-lost",
        "no-inventory",
        "maintenance-schedulable",
        "deckhouse-fencing",
        "bmc-check-failed",
        "cannot-be-fenced",
    }
)
_UNPROVEN = (Phase.PENDING, Phase.FENCING, Phase.FENCE_FAILED)


def operation_entry(
    op: Operation, started: str | None, ended: str | None, waiting: Sequence[str] | None
) -> Json:
    """One fencing operation as the view lists it. `waiting`: the ColdStandby VMs still on
    the node while its Off is not proven (read by the leader; None: unknown)."""
    if op.vms is not None:
        down: list[str] | None = [v.key for v in still_down(op.vms, op.node)]
    else:
        down = None if waiting is None else list(waiting)
    return {
        "node": op.node,
        "id": op.id,
        "phase": op.phase.value,
        "attempts": op.attempts,
        "reason": op.reason,
        "lastError": op.errors[-1] if op.errors else "",
        "offProven": op.off_proven,
        "proof": op.proof,
        "startedAt": started,
        "endedAt": ended,
        "vmsDown": down,
        "vmsLeftStopped": stopped_clause(op.vms or ()),
        "vms": vm_summary(op.vms, op.node) if op.vms is not None else "",
        "outageSeconds": None if op.vms is None else longest_outage(op.vms),
    }


@dataclass
class Report:
    """What `nodefence status` prints, and what needs someone (non-empty: exit 1)."""

    lines: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    stale: bool = False


def stale_after(view: Mapping[str, Any]) -> float:
    """How old a view may be before it is STALE (three publishing periods, at least 3 s)."""
    period = view.get("period")
    period = float(period) if isinstance(period, int | float) else 1.0
    return max(STALE_MIN, 3 * period)


def _age(value: Any, plus: float) -> str:
    return "-" if not isinstance(value, int | float) else f"{value + plus:.1f}s"


def _maint(row: Mapping[str, Any]) -> str:
    mark = str(row.get("maintenance") or "")
    if mark == "true":
        return "yes"
    if mark:
        return mark
    return "cordoned" if row.get("cordoned") else "-"


def _bmc(row: Mapping[str, Any]) -> str:
    bmc = row.get("bmc")
    return str(bmc.get("summary") or "-") if isinstance(bmc, Mapping) else "-"


def _table(view: Mapping[str, Any], age: float) -> list[str]:
    rows = [["NODE", "STATE", "HEARTBEAT", "KUBELET", "READY", "MAINT", "BMC", "AGENT", "REASON"]]
    for r in view.get("nodes") or []:
        ready = {True: "True", False: "False"}.get(r.get("ready"), "Unknown")
        state = str(r.get("state", "?"))
        if r.get("inInventory") is False:
            state += " (no BMC entry)"
        rows.append(
            [
                str(r.get("node", "?")),
                state,
                _age(r.get("heartbeatAge"), age),
                _age(r.get("kubeletAge"), age),
                ready,
                _maint(r),
                _bmc(r),
                str(r.get("agent") or "-"),
                str(r.get("reason") or "")
                + (f"; not fenced: {r['held']}" if r.get("held") else ""),
            ]
        )
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    out = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:last], widths, strict=True)]
        out.append("  ".join([*cells, row[last]]).rstrip())
    return out


def _operation_lines(op: Mapping[str, Any]) -> list[str]:
    head = f"  {op.get('node')}  {op.get('phase')}"
    if op.get("attempts"):
        head += f"  attempt {op['attempts']}"
    head += f"  op {op.get('id')}"
    if op.get("endedAt"):
        head += f"  ended {op['endedAt']}"
    elif op.get("startedAt"):
        head += f"  started {op['startedAt']}"
    lines = [head]
    if op.get("reason"):
        lines.append(f"      {op['reason']}")
    if op.get("phase") in ("FenceFailed", "Fencing", "Pending") and op.get("lastError"):
        lines.append(f"      last error: {op['lastError']}")
    down = op.get("vmsDown")
    if down:
        lines.append(f"      VMs down: {', '.join(down)}")
    elif down is None and op.get("phase") in ("Pending", "Fencing", "FenceFailed"):
        lines.append("      VMs down: not known (the leader could not read them)")
    outage = op.get("outageSeconds")
    if isinstance(outage, int | float):
        lines.append(f"      longest VM outage: {outage:.1f} s from the node's last heartbeat")
    return lines


def _attention(view: Mapping[str, Any], stale: bool, age: float) -> list[str]:
    out = []
    if stale:
        out.append(
            f"the view is {age:.1f} s old: no leader publishes (it died, or reaches no broker);"
            " `kubectl -n nodefence get lease nodefence-leader` shows who holds the Lease"
        )
    for op in view.get("operations") or []:
        node, phase = op.get("node"), op.get("phase")
        down = op.get("vmsDown")
        vms = f"; VMs down: {', '.join(down)}" if down else ""
        if phase == "FenceFailed":
            out.append(
                f"{node}: fencing failed (attempt {op.get('attempts')}):"
                f" {op.get('lastError') or op.get('reason')}{vms}"
            )
        elif phase == "RecoveryIncomplete":
            out.append(f"{node}: VMs not running elsewhere after the fence{vms}")
        if op.get("vmsLeftStopped"):
            out.append(f"{node}: {op['vmsLeftStopped']}")
    paused = view.get("paused")
    if paused:
        held = [r["node"] for r in view.get("nodes") or [] if r.get("state") == "dead"]
        fencing = {op.get("node") for op in view.get("operations") or []}
        held = [n for n in held if n not in fencing]
        if held:
            out.append(
                f"fencing is paused and {', '.join(held)} {'is' if len(held) == 1 else 'are'}"
                " dead: not fenced until `nodefence resume`"
            )
    inventory = view.get("inventory")
    if isinstance(inventory, Mapping) and inventory.get("problem"):
        out.append(f"inventory: the newest version was rejected: {inventory['problem']}")
    for a in view.get("alerts") or []:
        if a.get("kind") in ATTENTION_ALERTS:
            out.append(f"{a['kind']}: {a.get('message', '')}")
    return out


def report(view: Mapping[str, Any], age: float) -> Report:
    """The lines of `nodefence status` for `view`, published `age` seconds ago."""
    stale = age > stale_after(view)
    lines = [
        f"leader: {view.get('leader')}  profile: {view.get('profile')}  view age: {age:.1f}s"
        + (f"  version: {view['version']}" if view.get("version") else "")
        + ("  FROZEN" if view.get("frozen") else "")
    ]
    if stale:
        lines.append(
            f"STALE: this view is {age:.1f} s old (published every"
            f" {view.get('period', 1)} s): its leader is gone; the ages below include its age"
        )
    paused = view.get("paused")
    if isinstance(paused, Mapping):
        who = f" by {paused['by']}" if paused.get("by") else ""
        since = f" since {paused['since']}" if paused.get("since") else ""
        lines.append(
            f"PAUSED{who}{since}: {paused.get('reason')} (nodes are judged, none is fenced;"
            " `nodefence resume` ends it)"
        )
    lines += _table(view, age)
    ops = view.get("operations") or []
    running = [op for op in ops if not op.get("endedAt")]
    ended = [op for op in ops if op.get("endedAt")]
    if running:
        lines.append("Fencing:")
        for op in running:
            lines += _operation_lines(op)
    if ended:
        lines.append("Recently fenced (by this leader):")
        for op in ended:
            lines += _operation_lines(op)
    inventory = view.get("inventory")
    if isinstance(inventory, Mapping):
        said = f"inventory: {inventory.get('nodes')} nodes"
        if inventory.get("problem"):
            said += f"; newest version REJECTED, the previous one in force: {inventory['problem']}"
        lines.append(said)
    for a in view.get("alerts") or []:
        lines.append(f"ALERT {a.get('kind')}: {a.get('message')}")
    if view.get("rejected"):
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(view["rejected"].items()))
        lines.append(f"rejected messages: {rejected}")
    attention = _attention(view, stale, age)
    if attention:
        lines.append(f"NEEDS ATTENTION ({len(attention)}):")
        lines += [f"  - {a}" for a in attention]
    return Report(lines, attention, stale)
