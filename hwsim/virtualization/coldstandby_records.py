"""What the VM controllers record for tests and benchmarks: each VM's recovery after its node was
lost (`Recovery`), and each VM seen running on several nodes at once (`SplitBrain`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Recovery:
    """One VM's fate after its node was lost, for tests and benchmarks.

    Times are on the controller's clock: `down_at` is when it saw the launcher pod gone (`why`:
    `deleted`, `Failed`, ...), `running_at` when the API said Running again.
    `lost_node_powered` is True when that node's machine still had power at that moment: a
    recovery started without fencing, a split brain in waiting.
    """

    namespace: str
    name: str
    run_policy: str
    lost_node: str
    why: str
    down_at: float
    restart_expected: bool
    lost_node_powered: bool
    running_at: float | None = None
    new_node: str | None = None

    @property
    def downtime(self) -> float | None:
        """Seconds from the node loss to Running again (None while not running)."""
        return None if self.running_at is None else self.running_at - self.down_at


@dataclass(frozen=True)
class SplitBrain:
    """A VM seen running on several nodes at once."""

    namespace: str
    name: str
    nodes: tuple[str, ...]
    seen_at: float
    wall_time: str

    def __str__(self) -> str:
        where = ", ".join(self.nodes)
        return f"{self.namespace}/{self.name} running on {where} at once (since {self.wall_time})"
