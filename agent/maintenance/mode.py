"""Maintenance mode: the decisions of `maintenance enter|exit|list`, free of I/O.

The mark `nodefence.io/maintenance` on a Node has two values:
- `draining`: set by `enter` before anything moves. The leader still guards the node (its VMs
  keep their failover: if it fails now it is fenced and they restart elsewhere).
- `true`: set by `enter` only once nothing is left on the node, checked by a fresh look. The
  leader never fences it: it may be powered off. Its agent hands leadership off and, with the
  watchdog, keeps feeding it through long network work.

Here: whether `enter` may start at all (`enter_refusal`, `capacity_refusal`), which mark it
starts with (`start_mark`), the verdict of a run (`enter_verdict`), what `exit` changes
(`exit_patch`) and the state `list` shows (`node_state`, `maintenance_rows`). The VM drain is
in `nodefence.agent.maintenance.vm_drain`, the pods' in `nodefence.agent.maintenance.pod_drain`, one
VM's operations in
`nodefence.agent.maintenance.vm_migration`.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodefence.agent.kube.client import MAINTENANCE_CORDON_ANNOTATION, MAINTENANCE_LABEL
from nodefence.agent.maintenance.pod_drain import PodDrain
from nodefence.agent.maintenance.vm_capacity import Need, Room, unplaceable
from nodefence.agent.maintenance.vm_drain import DrainStep, VmStage
from nodefence.agent.maintenance.vm_migration import VmRef

MAINTENANCE_VALUE = "true"  # in maintenance: never fenced, may be powered off
DRAINING_VALUE = "draining"  # being drained: still guarded


# ---- before anything changes ---------------------------------------------------------------


def enter_refusal(node: str, ready: bool | None, allow_not_ready: bool) -> str | None:
    """Why `enter` must not start on `node` (None: it may)."""
    if ready is True or allow_not_ready:
        return None
    state = "NotReady" if ready is False else "of unknown readiness"
    return (
        f"node {node} is not Ready ({state}): it may be failing, and nodefence may be about to "
        "fence it so that its VMs restart elsewhere; a VM cannot live-migrate off a node that "
        "does not answer anyway. Nothing changed. Pass --allow-not-ready to drain it all the "
        "same (it stays guarded until its VMs are gone)."
    )


def start_mark(mark: str, ready: bool | None) -> str:
    """The mark `enter` sets first: `draining`, except on a node already in maintenance that is
    not Ready (powered off for the work: guarding it again would fence it)."""
    if mark == MAINTENANCE_VALUE and ready is not True:
        return MAINTENANCE_VALUE
    return DRAINING_VALUE


def capacity_refusal(node: str, needs: list[Need], rooms: list[Room]) -> str | None:
    """Why the VMs of `node` cannot all move to `rooms` (None: they fit, or nothing is known)."""
    if not needs or not rooms:
        return None
    left = unplaceable(needs, rooms)
    if not left:
        return None
    widest = sorted(rooms, key=lambda r: (-r.memory, -r.cpu))[:3]
    return (
        f"not enough room on the schedulable nodes for {len(left)} of the {len(needs)} VMs of "
        f"{node}: "
        + ", ".join(f"{n.vm} needs {n.describe()}" for n in left)
        + "; the most room: "
        + ", ".join(r.describe() for r in widest)
        + ". Free some, or end another node's maintenance first. Nothing changed."
    )


def mark_patch(mark: str | None, cordon: bool | None = None) -> dict[str, Any]:
    """A merge patch of a Node: the maintenance `mark` (None removes it) and, with `cordon`,
    the cordon and whether `enter` made it (one write: both or neither)."""
    meta: dict[str, Any] = {"labels": {MAINTENANCE_LABEL: mark}}
    body: dict[str, Any] = {"metadata": meta}
    if cordon is not None:
        meta["annotations"] = {MAINTENANCE_CORDON_ANNOTATION: "true" if cordon else None}
        body["spec"] = {"unschedulable": True if cordon else None}
    return body


def exit_patch(cordoned_by_us: bool) -> dict[str, Any]:
    """What `exit` writes: the mark removed, and the cordon only if `enter` made it."""
    return mark_patch(None, cordon=False) if cordoned_by_us else mark_patch(None)


# ---- the verdict of a run --------------------------------------------------------------------


def enter_verdict(
    node: str, step: DrainStep, pods: PodDrain | None, timed_out: bool = False
) -> tuple[bool, list[str]]:
    """(success, the closing lines) of `maintenance enter`; `pods` is None with --vms-only
    or when the VMs did not all move (the pods are then left alone)."""
    moved = step.count(VmStage.MOVED)
    left = step.remaining
    keep = (
        f"{node} stays cordoned and marked {MAINTENANCE_LABEL}={DRAINING_VALUE}: nodefence "
        "still guards it (if it fails, it is fenced and its VMs restart elsewhere). Do not "
        f"power it off. Fix the cause and run `nodefence maintenance enter {node}` again, or "
        f"end it with `nodefence maintenance exit {node}`."
    )
    if left:
        why = "did not move within the timeout" if timed_out else "could not move"
        lines = [f"maintenance of {node} is NOT complete: {len(left)} VMs {why}:"]
        lines += [f"  {p.vm}: {p.detail or p.stage.value}" for p in left]
        return False, [*lines, keep]
    if pods is not None and not pods.ok:
        lines = [f"maintenance of {node} is NOT complete: the VMs moved, some pods did not:"]
        lines += [
            f"  {pod}: no controller manages it; it would be lost (pass --evict-unmanaged to "
            "evict it)"
            for pod in pods.unmanaged
        ]
        lines += [f"  {pod}: {why}" for pod, why in pods.stuck]
        return False, [*lines, keep]
    done = f"{node} is in maintenance: {moved} VMs moved"
    if pods is None:
        done += ", other pods left in place (--vms-only)"
    else:
        done += f", {len(pods.evicted)} pods evicted"
        if pods.skipped:
            done += f", {len(pods.skipped)} DaemonSet or static pods left"
    return True, [
        done + ".",
        f"It may be powered off: marked {MAINTENANCE_LABEL}={MAINTENANCE_VALUE}, nodefence will "
        f"not fence it. End maintenance with `nodefence maintenance exit {node}`.",
    ]


# ---- list ------------------------------------------------------------------------------------


class NodeState(enum.StrEnum):
    """A node's maintenance state, from its mark, its cordon and the VMs still on it."""

    SCHEDULABLE = "schedulable"
    CORDONED = "cordoned"  # unschedulable, but not by us (kubectl cordon / drain)
    DRAINING = "draining"  # marked draining: VMs moving off, still guarded
    IN_MAINTENANCE = "in maintenance"  # marked, cordoned, no VM left: safe to power off
    MARKED_SCHEDULABLE = "marked, schedulable"  # marked but uncordoned: new VMs may land
    MARKED_WITH_VMS = "marked, VMs unguarded"  # marked, yet VMs run there: not fenced


def node_state(mark: str, cordoned: bool, vms_left: int) -> NodeState:
    """The state shown by `maintenance list`."""
    if not mark:
        return NodeState.CORDONED if cordoned else NodeState.SCHEDULABLE
    if mark != MAINTENANCE_VALUE:
        return NodeState.DRAINING
    if not cordoned:
        return NodeState.MARKED_SCHEDULABLE
    return NodeState.MARKED_WITH_VMS if vms_left else NodeState.IN_MAINTENANCE


@dataclass(frozen=True)
class NodeFacts:
    """What `maintenance list` needs of a Node."""

    name: str
    mark: str
    cordoned: bool
    ready: bool | None


@dataclass(frozen=True)
class NodeRow:
    """One row of `maintenance list`."""

    node: str
    state: NodeState
    cordoned: bool
    ready: bool | None
    vms: int


def maintenance_rows(
    nodes: Iterable[NodeFacts], vms: Iterable[VmRef], every_node: bool = False
) -> list[NodeRow]:
    """Rows for the marked nodes (every node with `every_node`), by name; `vms` counts the
    VMs each node still hosts or receives."""
    hosted: dict[str, int] = {}
    for vm in vms:
        for node in {vm.node, vm.target} - {""}:
            hosted[node] = hosted.get(node, 0) + 1
    rows = [
        NodeRow(
            n.name,
            node_state(n.mark, n.cordoned, hosted.get(n.name, 0)),
            n.cordoned,
            n.ready,
            hosted.get(n.name, 0),
        )
        for n in nodes
        if every_node or n.mark
    ]
    return sorted(rows, key=lambda r: r.node)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean node-1?)` for a name close to a known one, else ""."""
    scored = [(difflib.SequenceMatcher(None, name, k).ratio(), k) for k in set(known)]
    close = [k for score, k in sorted(scored, key=lambda s: (-s[0], s[1])) if score >= 0.6][:3]
    return f" (did you mean {' or '.join(close)}?)" if close else ""
