"""Faults that wait for one moment of a fence: a write of a victim's FenceOperation record.

A trap watches the records of one node and springs once, on the first write that is the
named moment of an operation (`moments_of`, pure): its creation (Pending, nothing sent), the
PowerOffSending save (`powerOffSent` turns true, not proven), the save that stores the proof
(`offProven` turns true) or the one that enters Recovering. `RecordTraps.hook` is the API
server's `write_hook` (`nodefence.hwsim.kube.writefaults`); what a sprung trap does (kill the
writer, hold the answer, drop the connection) is the `spring` callback's business.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.kube.writefaults import AppliedWrite, WriteFault

RECORDS = "fenceoperations"
MOMENTS = ("create", "power-off-sending", "proven", "recovering")


def moments_of(verb: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> set[str]:
    """Which moments of an operation a record write is, from the record's status before the
    write (None: not seen before) and after it."""
    was = before or {}
    found: set[str] = set()
    if verb == "create":
        found.add("create")
    if after.get("powerOffSent") and not after.get("offProven") and not was.get("powerOffSent"):
        found.add("power-off-sending")
    if after.get("offProven") and not was.get("offProven"):
        found.add("proven")
    if after.get("phase") == "Recovering" and was.get("phase") != "Recovering":
        found.add("recovering")
    return found


@dataclass
class Trap:
    """Springs on the first write of `node`'s records that is the moment `moment`."""

    episode: int
    node: str
    kind: str  # the fault kind it counts as when it springs
    moment: str
    params: dict[str, Any] = field(default_factory=dict)
    sprung: bool = False


Spring = Callable[[Trap, AppliedWrite], WriteFault | None]


class RecordTraps:
    """The armed traps; thread-safe (the hook runs on the API server's loop)."""

    def __init__(self, spring: Spring) -> None:
        self._spring = spring
        self._lock = threading.Lock()
        self._traps: list[Trap] = []
        self._last: dict[str, Mapping[str, Any]] = {}  # record name -> status last written

    def arm(self, trap: Trap) -> None:
        """Start watching for `trap`'s moment."""
        if trap.moment not in MOMENTS:
            raise ValueError(f"unknown moment {trap.moment!r} (known: {', '.join(MOMENTS)})")
        with self._lock:
            self._traps.append(trap)

    def disarm(self, episode: int) -> Trap | None:
        """Stop watching for the trap of `episode`; returns it (sprung or not)."""
        with self._lock:
            found = [t for t in self._traps if t.episode == episode]
            self._traps = [t for t in self._traps if t.episode != episode]
        return found[0] if found else None

    def hook(self, write: AppliedWrite) -> WriteFault | None:
        """The API server's write hook: spring the first armed trap this write matches."""
        if write.resource != RECORDS or write.verb not in ("create", "update", "patch"):
            return None
        status = write.obj.get("status") or {}
        node = (write.obj.get("spec") or {}).get("nodeName")
        with self._lock:
            before = self._last.get(write.name)
            self._last[write.name] = status
            moments = moments_of(write.verb, before, status)
            trap = next(
                (t for t in self._traps if not t.sprung and t.node == node and t.moment in moments),
                None,
            )
            if trap is None:
                return None
            trap.sprung = True
        return self._spring(trap, write)
