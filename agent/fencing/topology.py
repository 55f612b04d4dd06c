"""Pure decisions of fencing through a topology: which level to try when, what a set of
read-backs means, and what an attempt's outcome is. No I/O here;
`nodefence.agent.fencing.power_executor` executes it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from nodefence.agent.config.inventory_file import FencingPolicy, NodeInventory
from nodefence.agent.fencing.channels import ChannelErrors, Groups
from nodefence.backends.base import PowerState


class PowerRequest(enum.Enum):
    """What an operator or the leader asks of a node's power."""

    OFF = "off"
    ON = "on"
    REBOOT = "reboot"
    STATUS = "status"


@dataclass(frozen=True)
class Attempt:
    """Try `level` (0-based) for the `attempt`-th time after pausing `delay` seconds."""

    level: int
    attempt: int
    delay: float


def attempt_plan(node: NodeInventory, policy: FencingPolicy) -> Iterator[Attempt]:
    """Levels in order, each `policy.attempts` times with exponential backoff between tries."""
    for li in range(len(node.levels)):
        for a in range(policy.attempts):
            yield Attempt(li, a, policy.delay_before(a))


def channel_groups(node: NodeInventory, policy: FencingPolicy) -> Groups:
    """The node's channel groups: its own, else the fencing-wide `verify_all_channels`."""
    if node.channel_groups is not None:
        return node.channel_groups
    return (frozenset(d.name for d in node.devices()),) if policy.verify_all_channels else ()


def channel_errors(node: NodeInventory, policy: FencingPolicy) -> ChannelErrors:
    """What an errored cross-checked channel means for this node (its own setting wins)."""
    return node.channel_errors or policy.channel_errors


def combined_state(states: Sequence[PowerState]) -> PowerState:
    """The node's power as a set of devices sees it: Off only when every device reads Off.

    One device reading On (or unknown) means the node may still have power: for fencing,
    doubt always counts as On-or-unknown, never as Off.
    """
    if not states:
        return PowerState.UNKNOWN
    if all(s is PowerState.OFF for s in states):
        return PowerState.OFF
    if any(s is PowerState.ON for s in states):
        return PowerState.ON
    return PowerState.UNKNOWN


@dataclass(frozen=True)
class Step:
    """One thing done to one device, as printed and recorded."""

    level: int  # 1-based, as operators count
    device: str
    request: str  # "off", "on", "status", "verify-off", ...
    result: str  # "ok", "off", "on", or the error's reason
    elapsed: float  # seconds since the operation started
    detail: str = ""


@dataclass
class PowerOutcome:
    """The result of one action on one node."""

    node: str
    action: PowerRequest
    success: bool = False
    state: PowerState = PowerState.UNKNOWN
    off_proven: bool = False
    level: int | None = None  # 1-based level that achieved it
    steps: list[Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def reason(self) -> str:
        """Why it failed (the last error), or "" on success."""
        if self.success:
            return ""
        return self.errors[-1] if self.errors else "no level could be tried"
