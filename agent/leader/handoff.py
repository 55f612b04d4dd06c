"""Leadership and maintenance: the leader hands the Lease off when its node enters maintenance.

`maintenance enter` on the leader's node would otherwise drain (and then power off) the node
that does the fencing: the Lease would expire, and a new leader would judge nobody for its first
window, a gap of `lease_duration` + `fence_after` without fencing. So each agent watches its own
Node (`nodefence.agent.node.self_watch.NodeWatch.marked`); while the Node carries
`nodefence.io/maintenance` (any value: draining or in maintenance) the agent's elector defers: a
leader releases the Lease once, and a candidate takes a free Lease only when nobody else did for a
whole `lease_duration` (so leadership comes back rather than being lost when no other agent can
lead). `maintenance enter` waits for the Lease to name another node before it moves anything.
"""

from __future__ import annotations


def lease_holder_node(identity: str | None) -> str | None:
    """The node name in a Lease holder identity `<node>_<per-process id>` (older agents used
    the bare node name); None for a free Lease."""
    return None if not identity else identity.split("_", 1)[0]
