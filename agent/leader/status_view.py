"""The leader's view for `nodefence status`: the operation entries the leader publishes, and
what the command makes of a view: its lines, and what needs someone (the exit code).

Pure: the leader builds entries from its state (`operation_entry`); the command passes the
view (`nodefence.agent.leader.view_codec.LeaderView`, decoded) and its age (`report`). A view older
than
`stale_after` is STALE: the leader that published it is gone (or reaches no broker), and every
age in it is older by the view's age.
Someone must act (`Report.attention`, exit 1) when: the view is stale; a fence failed; VMs
were not restarted (the deadline passed) or were left stopped by their runPolicy; a dead node
is held only because fencing is paused; the inventory file was rejected; or an alert asks for
it (storm, broker down, agent lost, no inventory entry, a node marked for maintenance but
schedulable, Deckhouse fencing too, failing BMC checks, a node that cannot be fenced). Planned
states (maintenance, a drained node powered off, a pause with nobody dead) are shown, not
counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nodefence.agent.fencing.operation import Operation, Phase
from nodefence.agent.fencing.outcome import longest_outage, still_down, stopped_clause, vm_summary
from nodefence.agent.leader.view_codec import LeaderView, NodeRow, OperationEntry

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
) -> OperationEntry:
    """One fencing operation as the view lists it. `waiting`: the ColdStandby VMs still on
    the node while its Off is not proven (read by the leader; None: unknown)."""
    if op.vms is not None:
        down: tuple[str, ...] | None = tuple(v.key for v in still_down(op.vms, op.node))
    else:
        down = None if waiting is None else tuple(waiting)
    return OperationEntry(
        node=op.node,
        id=op.id,
        phase=op.phase.value,
        attempts=op.attempts,
        reason=op.reason,
        last_error=op.errors[-1] if op.errors else "",
        off_proven=op.off_proven,
        proof=op.proof,
        started_at=started,
        ended_at=ended,
        vms_down=down,
        vms_left_stopped=stopped_clause(op.vms or ()),
        vms=vm_summary(op.vms, op.node) if op.vms is not None else "",
        outage_seconds=None if op.vms is None else longest_outage(op.vms),
    )


@dataclass
class Report:
    """What `nodefence status` prints, and what needs someone (non-empty: exit 1)."""

    lines: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    stale: bool = False


def stale_after(view: LeaderView) -> float:
    """How old a view may be before it is STALE (three publishing periods, at least 3 s)."""
    return max(STALE_MIN, 3 * view.period)


def _age(value: float | None, plus: float) -> str:
    return "-" if value is None else f"{value + plus:.1f}s"


def _maint(row: NodeRow) -> str:
    if row.maintenance == "true":
        return "yes"
    if row.maintenance:
        return row.maintenance
    return "cordoned" if row.cordoned else "-"


def _bmc(row: NodeRow) -> str:
    return str(row.bmc.get("summary") or "-") if row.bmc is not None else "-"


def _table(view: LeaderView, age: float) -> list[str]:
    rows = [["NODE", "STATE", "HEARTBEAT", "KUBELET", "READY", "MAINT", "BMC", "AGENT", "REASON"]]
    for r in view.nodes:
        ready = "Unknown" if r.ready is None else str(r.ready)
        state = r.state
        if r.in_inventory is False:
            state += " (no BMC entry)"
        rows.append(
            [
                r.node,
                state,
                _age(r.heartbeat_age, age),
                _age(r.kubelet_age, age),
                ready,
                _maint(r),
                _bmc(r),
                r.agent or "-",
                r.reason + (f"; not fenced: {r.held}" if r.held else ""),
            ]
        )
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    out = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:last], widths, strict=True)]
        out.append("  ".join([*cells, row[last]]).rstrip())
    return out


def _operation_lines(op: OperationEntry) -> list[str]:
    head = f"  {op.node}  {op.phase}"
    if op.attempts:
        head += f"  attempt {op.attempts}"
    head += f"  op {op.id}"
    if op.ended_at:
        head += f"  ended {op.ended_at}"
    elif op.started_at:
        head += f"  started {op.started_at}"
    lines = [head]
    if op.reason:
        lines.append(f"      {op.reason}")
    if op.phase in ("FenceFailed", "Fencing", "Pending") and op.last_error:
        lines.append(f"      last error: {op.last_error}")
    down = op.vms_down
    if down:
        lines.append(f"      VMs down: {', '.join(down)}")
    elif down is None and op.phase in ("Pending", "Fencing", "FenceFailed"):
        lines.append("      VMs down: not known (the leader could not read them)")
    if op.outage_seconds is not None:
        lines.append(
            f"      longest VM outage: {op.outage_seconds:.1f} s from the node's last heartbeat"
        )
    return lines


def _attention(view: LeaderView, stale: bool, age: float) -> list[str]:
    out = []
    if stale:
        out.append(
            f"the view is {age:.1f} s old: no leader publishes (it died, or reaches no broker);"
            " `kubectl -n nodefence get lease nodefence-leader` shows who holds the Lease"
        )
    for op in view.operations:
        node, phase = op.node, op.phase
        down = op.vms_down
        vms = f"; VMs down: {', '.join(down)}" if down else ""
        if phase == "FenceFailed":
            out.append(
                f"{node}: fencing failed (attempt {op.attempts}): {op.last_error or op.reason}{vms}"
            )
        elif phase == "RecoveryIncomplete":
            out.append(f"{node}: VMs not running elsewhere after the fence{vms}")
        if op.vms_left_stopped:
            out.append(f"{node}: {op.vms_left_stopped}")
    if view.paused is not None:
        held = [r.node for r in view.nodes if r.state == "dead"]
        fencing = {op.node for op in view.operations}
        held = [n for n in held if n not in fencing]
        if held:
            out.append(
                f"fencing is paused and {', '.join(held)} {'is' if len(held) == 1 else 'are'}"
                " dead: not fenced until `nodefence resume`"
            )
    inventory = view.inventory
    if inventory is not None and inventory.problem:
        out.append(f"inventory: the newest version was rejected: {inventory.problem}")
    for a in view.alerts:
        if a.kind in ATTENTION_ALERTS:
            out.append(f"{a.kind}: {a.message}")
    return out


def report(view: LeaderView, age: float) -> Report:
    """The lines of `nodefence status` for `view`, published `age` seconds ago."""
    stale = age > stale_after(view)
    lines = [
        f"leader: {view.leader}  profile: {view.profile}  view age: {age:.1f}s"
        + (f"  version: {view.version}" if view.version else "")
        + ("  FROZEN" if view.frozen else "")
    ]
    if stale:
        lines.append(
            f"STALE: this view is {age:.1f} s old (published every"
            f" {view.period} s): its leader is gone; the ages below include its age"
        )
    paused = view.paused
    if paused is not None:
        who = f" by {paused.by}" if paused.by else ""
        since = f" since {paused.since}" if paused.since else ""
        lines.append(
            f"PAUSED{who}{since}: {paused.reason} (nodes are judged, none is fenced;"
            " `nodefence resume` ends it)"
        )
    lines += _table(view, age)
    ops = view.operations
    running = [op for op in ops if not op.ended_at]
    ended = [op for op in ops if op.ended_at]
    if running:
        lines.append("Fencing:")
        for op in running:
            lines += _operation_lines(op)
    if ended:
        lines.append("Recently fenced (by this leader):")
        for op in ended:
            lines += _operation_lines(op)
    inventory = view.inventory
    if inventory is not None:
        said = f"inventory: {inventory.nodes} nodes"
        if inventory.problem:
            said += f"; newest version REJECTED, the previous one in force: {inventory.problem}"
        lines.append(said)
    for a in view.alerts:
        lines.append(f"ALERT {a.kind}: {a.message}")
    if view.rejected:
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(view.rejected.items()))
        lines.append(f"rejected messages: {rejected}")
    attention = _attention(view, stale, age)
    if attention:
        lines.append(f"NEEDS ATTENTION ({len(attention)}):")
        lines += [f"  - {a}" for a in attention]
    return Report(lines, attention, stale)
