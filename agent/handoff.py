"""Leadership and maintenance: the leader hands the Lease off when its node enters maintenance.

`maintenance enter` on the leader's node would otherwise drain (and then power off) the node
that does the fencing: the Lease would expire, and a new leader would judge nobody for its first
window, a gap of `lease_duration` + `fence_after` without fencing. So each agent watches its own
Node (`OwnMark`); while the Node carries `nodefence.io/maintenance` (any value: draining or in
maintenance) the agent's elector defers: a leader releases the Lease once, and a candidate takes
a free Lease only when nobody else did for a whole `lease_duration` (so leadership comes back
rather than being lost when no other agent can lead). `maintenance enter` waits for the Lease to
name another node before it moves anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.cluster import ClusterError, NodeInfo

log = logging.getLogger("nodefence.handoff")


def lease_holder_node(identity: str | None) -> str | None:
    """The node name in a Lease holder identity `<node>_<per-process id>` (older agents used
    the bare node name); None for a free Lease."""
    return None if not identity else identity.split("_", 1)[0]


class OwnMark:
    """This agent's Node's maintenance mark, read every `period` seconds."""

    def __init__(
        self, read: Callable[[], Awaitable[NodeInfo | None]], node: str, period: float = 5.0
    ) -> None:
        self.read = read
        self.node = node
        self.period = period
        self.mark = ""

    def marked(self) -> bool:
        """The Node carries the maintenance mark (last read; False until one succeeded)."""
        return bool(self.mark)

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`; a failed read keeps what the last one said."""
        while not stop.is_set():
            try:
                info = await self.read()
            except ClusterError as err:
                log.debug("cannot read node %s: %s", self.node, err)
            else:
                mark = info.maintenance_mark if info is not None else ""
                if mark != self.mark:
                    log.info(
                        "node %s: maintenance mark %s",
                        self.node,
                        repr(mark) if mark else "removed",
                    )
                self.mark = mark
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.period)
