"""The end of a scenario, for people: the summary of its timeline (pure).

From the failure on (the moment it was injected): when the victims were declared dead, when
their Off was proven and their Node deleted (or kept and released), when another leader took
over, and each VM's outage: from the failure to Running on another node. The outage is
measured here, by the harness, from the moment the power went (or the network), not from
anything nodefence says: it is what a user of the VM saw. What the scenario expects to stay
down (a node that cannot be proven off, a storm) is said as expected, not as a recovery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodefence.hwsim.virtualization.vm_views import (
    RESTARTABLE as RESTARTED,  # runPolicy or runStrategy
)

Line = tuple[float, str, str]  # (seconds since the start, node, what)
MILESTONES = (
    ("NodeDeclaredDead", "declared dead"),
    ("FenceStarted", "fence started"),
    ("FenceFailed", "fence FAILED"),
    ("FencePoweredOff", "proven off"),
    ("FenceReleasedPods", "pods released"),
    ("Node deleted from the cluster", "Node deleted"),
    ("FenceRecovering", "waiting for its VMs"),
    ("FenceRecovered", "recovered"),
)


@dataclass(frozen=True)
class VmSeen:
    """A VM's state as the timeline line says it: `VM name (policy) Phase on node`."""

    name: str
    policy: str
    phase: str
    node: str


def vm_line(what: str) -> VmSeen | None:
    """The VM a timeline line is about, or None."""
    if not what.startswith("VM ") or "(" not in what:
        return None
    head, _, rest = what[3:].partition(" (")
    policy, _, state = rest.partition(") ")
    phase, _, node = state.partition(" on ")
    return VmSeen(head, policy, phase.strip(), node.strip())


def milestones(lines: Iterable[Line], since: float, victims: Iterable[str]) -> list[str]:
    """ "node-5: declared dead +4.1 s" ... for each victim, from `since` (the failure)."""
    out = []
    for victim in victims:
        done: list[str] = []
        for key, words in MILESTONES:
            t = next(
                (t for t, node, what in lines if t >= since and node == victim and key in what),
                None,
            )
            if t is not None:
                done.append(f"{words} +{t - since:.1f} s")
        if done:
            out.append(f"{victim}: " + ", ".join(done))
    leaders = [
        (t, node) for t, node, what in lines if t >= since and what == "holds the leader Lease"
    ]
    if leaders:
        t, node = leaders[0]
        out.append(f"new leader {node} +{t - since:.1f} s")
    return out


def vm_outages(
    lines: Iterable[Line], since: float, victims: Iterable[str], hosted: Mapping[str, VmSeen]
) -> list[str]:
    """Each VM that ran on a victim at the failure: how long it was down (see the doc)."""
    gone = set(victims)
    out = []
    for name, was in sorted(hosted.items()):
        if was.node not in gone or was.phase != "Running":
            continue
        last = was
        back = None
        for t, _, what in lines:
            seen = vm_line(what)
            if t < since or seen is None or seen.name != name:
                continue
            last = seen
            if seen.phase == "Running" and seen.node and seen.node not in gone:
                back = t
                break
        if back is not None:
            out.append(f"{name} ({was.policy}): down {back - since:.1f} s, Running on {last.node}")
        elif last.phase == "Running" and last.node in gone:
            out.append(f"{name} ({was.policy}): still Running on {last.node} (cut off or off)")
        elif was.policy not in RESTARTED:
            out.append(f"{name} ({was.policy}): {last.phase}, not restarted by its runPolicy")
        else:
            out.append(f"{name} ({was.policy}): still down at the end ({last.phase or '?'})")
    return out


def summary(
    lines: list[Line],
    since: float,
    victims: list[str],
    hosted: Mapping[str, VmSeen],
    expect_down: str = "",
) -> list[str]:
    """The summary lines (see the module doc)."""
    out = [f"failure at {since:.2f} s on {', '.join(victims)}"]
    out += milestones(lines, since, victims)
    outages = vm_outages(lines, since, victims, hosted)
    if outages:
        out.append("VM outage, from the failure to Running elsewhere:")
        out += [f"  {o}" for o in outages]
        times = [float(o.split(" down ", 1)[1].split(" s", 1)[0]) for o in outages if " down " in o]
        if times:
            out.append(f"longest VM outage: {max(times):.1f} s (measured from the failure)")
    else:
        out.append("no VM ran on the failed nodes")
    if expect_down:
        out.append(f"expected: {expect_down}")
    return out
