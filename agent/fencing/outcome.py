"""What a fencing operation did to its node's VMs, in the words every report uses.

The machine's verdict (`nodefence.agent.fencing.machine`), the Events, `nodefence status`, `explain`
and
`history` all say it the same way: how many ColdStandby VMs run again elsewhere, which VMs were
left stopped (their runPolicy does not restart them: someone must start them by hand), which
are still down, and each VM's outage counted from the node's last heartbeat (the moment it
stopped being heard: the best the leader knows of when it died), with the time after the Node
was deleted (or released) as a detail. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nodefence.agent.fencing.events import VmOutcome
from nodefence.agent.virt.names import virt_of_record

LISTED = 5  # VM names listed in one sentence before "and N more"


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED])
    more = len(keys) - LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def left_stopped(vms: Iterable[VmOutcome]) -> list[VmOutcome]:
    """The VMs that ran on the node and are not restarted by their runPolicy."""
    return [v for v in vms if not v.expected_restart]


def still_down(vms: Iterable[VmOutcome], node: str) -> list[VmOutcome]:
    """The restartable VMs not (yet) running on another node."""
    return [v for v in vms if v.expected_restart and v.running_on in (None, node)]


def stopped_clause(vms: Iterable[VmOutcome]) -> str:
    """ "1 left stopped (default/vm-7, Manual: start it by hand)", or "" when none."""
    stopped = left_stopped(vms)
    if not stopped:
        return ""
    policies = sorted({v.run_policy or "?" for v in stopped})
    them = "it" if len(stopped) == 1 else "them"
    return (
        f"{len(stopped)} left stopped ({_names([v.key for v in stopped])},"
        f" {'/'.join(policies)}: start {them} by hand)"
    )


def vm_summary(vms: Iterable[VmOutcome] | None, node: str) -> str:
    """The VMs of a fenced node in one sentence (see the module doc)."""
    if vms is None:
        return "its VMs not recorded yet"
    vms = list(vms)
    if not vms:
        return "no VM ran there"
    restartable = [v for v in vms if v.expected_restart]
    down = still_down(vms, node)
    parts = []
    if restartable:
        parts.append(f"{len(restartable) - len(down)} restarted on other nodes")
    if down:
        parts.append(f"{len(down)} not running elsewhere ({_names([v.key for v in down])})")
    stopped = stopped_clause(vms)
    if stopped:
        parts.append(stopped)
    return "; ".join(parts)


def outage_words(outage: float | None, after_cleanup: float | None, node: str, what: str) -> str:
    """ "6.1 s after node-5's last heartbeat (2.3 s after node-5 was deleted)"."""
    detail = "" if after_cleanup is None else f"{after_cleanup:.1f} s after {node} was {what}"
    if outage is None:
        return detail or "after an unknown time"
    return f"{outage:.1f} s after {node}'s last heartbeat" + (f" ({detail})" if detail else "")


def vms_from_record(doc: Any) -> list[VmOutcome] | None:
    """The VM outcomes of a FenceOperation record's `status.vms` (None when not recorded)."""
    if not isinstance(doc, list):
        return None
    out = []
    for v in doc:
        if not isinstance(v, Mapping):
            continue
        out.append(
            VmOutcome(
                str(v.get("namespace", "")),
                str(v.get("name", "")),
                str(v.get("runPolicy") or v.get("runStrategy") or ""),
                bool(v.get("expectedRestart")),
                v.get("runningOn"),
                v.get("recoveredAfterSeconds"),
                virt=virt_of_record(v.get("virtualization")),
                outage=v.get("outageSeconds"),
            )
        )
    return out


def longest_outage(vms: Iterable[VmOutcome]) -> float | None:
    """The longest outage of the VMs that run again (None: none measured)."""
    times = [v.outage for v in vms if v.outage is not None]
    return max(times) if times else None
