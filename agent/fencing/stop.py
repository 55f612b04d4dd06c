"""Why a fencing operation (or its power walk) stopped: a kind the code branches on, and the
words records, reports and logs have always carried.

Pure. The executor and its walk guard (`nodefence.agent.fencing.guard_client`) stop a walk with
`StopWalk(StopReason(...))` (`nodefence.agent.fencing.power_executor`); the leader ends a held
operation with a reason (`FenceExecutor.cancel_held`). Code decides on `kind` (a lost Lease, a
pause), never on the text; the text is stored and shown unchanged, so records and dashboards read as
before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopKind(enum.Enum):
    """What stopped the operation or its walk."""

    LEASE_LOST = "lease-lost"  # this process no longer holds the leader Lease
    NOT_JUDGED = "not-judged"  # a held operation: this leader has not judged the node itself
    PAUSED = "paused"  # fencing is paused cluster-wide
    NODE_ALIVE = "node-alive"  # the node showed life since the decision (or since the proof)
    MAINTENANCE = "maintenance"  # the node entered maintenance
    NODE_CHANGED = "node-changed"  # another Node object than the one declared dead
    NODE_GONE = "node-gone"  # its Node no longer exists (and this leader never decided)
    NOT_STORED = "not-stored"  # the point of no return could not be stored: nothing sent
    UNREADABLE = "unreadable"  # the Node or its kubelet Lease could not be read: nothing sent


@dataclass(frozen=True)
class StopReason:
    """One stop: its `kind`, and `text` as records, events and logs say it."""

    kind: StopKind
    text: str

    def __str__(self) -> str:
        return self.text


def lease_lost(err: object) -> StopReason:
    """The Lease could not be confirmed before a step (`err`: why)."""
    return StopReason(StopKind.LEASE_LOST, f"not the leader any more: {err}")


WALK_LEASE_LOST = StopReason(StopKind.LEASE_LOST, "lost leadership during the power walk")
NOT_JUDGED = StopReason(StopKind.NOT_JUDGED, "this leader has not judged the node itself")


def paused(pause: str) -> StopReason:
    """Fencing is paused (`pause`: the pause as the guard describes it)."""
    return StopReason(StopKind.PAUSED, f"fencing is {pause}")
