"""What `nodefence fence` says before it switches power by hand: the node's place in the
cluster, and where the command runs. Pure: facts in, warnings out.

- A node that is Ready and not in maintenance runs workloads: a power-off kills them, and
  nodefence's leader then declares it dead and fences it itself (Node deleted, VMs restarted
  elsewhere). Planned work goes through `nodefence maintenance enter` first.
- A command run in the agent pod of the node it powers off dies with that node, before Off can
  be read back: run it from another node's agent pod.
- A node nodefence does not know in Kubernetes is said so (nothing is recorded against a Node).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodefence.agent.fencing.topology import PowerRequest

SHOWN = 5  # VM names listed before "and N more"


@dataclass(frozen=True)
class NodeFacts:
    """The node as the cluster shows it right before a manual fence."""

    exists: bool
    ready: bool | None = None
    maintenance: str = ""  # the nodefence.io/maintenance label's value ("" when not marked)
    vms: tuple[str, ...] = ()  # namespace/name of the VMs running there
    fencing: str = ""  # an unfinished FenceOperation of the node: "<id> (<phase>)"


def vms_words(vms: tuple[str, ...]) -> str:
    """ "2 VMs (prod/a, prod/b)", or "no VM"."""
    if not vms:
        return "no VM"
    more = len(vms) - SHOWN
    listed = ", ".join(vms[:SHOWN]) + (f" and {more} more" if more > 0 else "")
    return f"{len(vms)} VM{'s' if len(vms) != 1 else ''} ({listed})"


def what_dies(node: str, action: PowerRequest, facts: NodeFacts | None) -> str:
    """What the confirmation question says runs there ("" when unknown)."""
    if facts is None or not facts.exists or action not in (PowerRequest.OFF, PowerRequest.REBOOT):
        return ""
    return f"{vms_words(facts.vms)} running on {node}"


def warnings(
    node: str, action: PowerRequest, facts: NodeFacts | None, here: str | None
) -> list[str]:
    """Why this manual fence may not be what its operator wants (see the module doc).

    `here`: the node this command runs on ($NODE_NAME in an agent pod), None elsewhere."""
    if action not in (PowerRequest.OFF, PowerRequest.REBOOT):
        return []
    out = []
    verb = "powering it off" if action is PowerRequest.OFF else "a power cycle"
    if here == node:
        out.append(
            f"this command runs in {node}'s own agent pod: it dies with the power-off, before"
            " Off can be read back. Run it from another node's agent pod (`kubectl -n"
            " nodefence get pods -o wide`, then `kubectl -n nodefence exec -it POD --"
            f" nodefence fence {node}`)"
        )
    if facts is None:
        return out
    if facts.fencing:
        out.append(
            f"nodefence's leader is fencing {node} right now (operation {facts.fencing}): two"
            " power walks on one BMC get in each other's way; `nodefence status` shows how it"
            " goes, `nodefence pause` stops the leader's"
        )
    if not facts.exists:
        out.append(f"{node} has no Node in the cluster (deleted already, or named otherwise)")
        return out
    if facts.maintenance == "true":
        return out
    if facts.ready and facts.maintenance == "draining":
        out.append(
            f"{node} is being drained (nodefence.io/maintenance=draining) and still guarded:"
            f" {verb} kills {vms_words(facts.vms)}, and the leader fences it (its VMs restart"
            f" elsewhere). Wait for `nodefence maintenance enter {node}` to finish"
        )
    elif facts.ready:
        fenced = "fences it too" if action is PowerRequest.OFF else "may fence it before it is back"
        out.append(
            f"{node} is Ready and not in maintenance: {verb} kills {vms_words(facts.vms)}, and"
            f" nodefence's leader then declares it dead and {fenced} (its Node deleted, its"
            " ColdStandby VMs restarted elsewhere). For planned work run `nodefence"
            f" maintenance enter {node}` first"
        )
    return out
