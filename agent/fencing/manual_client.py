"""A manual fence (`nodefence fence`) and the cluster: what the node is before (for the
warnings of `nodefence.agent.fencing.advice`), and its FenceOperation record after, so that
`nodefence history` and `explain` show manual fences beside automatic ones.

A manual record is final when it is first stored (phase `Manual`, origin manual): no leader
ever resumes it and no node reads it as "you are being fenced". Its evidence holds every
power request and read-back, as an automatic one does. Reads and one create; every failure is
a `ClusterError` for the caller to report (a fence is never undone for want of a record).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from nodefence.agent.config.inventory_file import NodeInventory
from nodefence.agent.fencing.advice import NodeFacts
from nodefence.agent.fencing.evidence import EvidenceBook
from nodefence.agent.fencing.operation import Operation, Phase
from nodefence.agent.fencing.records import from_record, to_record
from nodefence.agent.fencing.topology import PowerOutcome, PowerRequest, Step
from nodefence.agent.kube.client import ClusterApi

HOSTED = ("Running", "Migrating", "Stopping")  # a VM whose processes run on its node


async def node_facts(api: ClusterApi, namespace: str, node: str) -> tuple[NodeFacts, str]:
    """The node as the cluster shows it now, and its Node object's uid ("" when none)."""
    info = await api.get_node(node)
    vms = []
    for vm in await api.vm_placements():
        if vm.node == node and vm.phase in HOSTED:
            vms.append(vm.key)
    fencing = ""
    for rec in await api.list_records(namespace, node):
        op = from_record(rec)
        if op.node == node and not op.final:
            fencing = f"{op.id} ({op.phase.value})"
    if info is None:
        return NodeFacts(False, vms=tuple(sorted(vms)), fencing=fencing), ""
    facts = NodeFacts(True, info.ready, info.maintenance_mark, tuple(sorted(vms)), fencing)
    return facts, info.uid


class ManualRecord:
    """The evidence of one manual fence as it runs, and its record once it is over."""

    def __init__(
        self, node: NodeInventory, action: PowerRequest, who: str, wall: Callable[[], float]
    ) -> None:
        self.node = node
        self.action = action
        self.who = who
        self.id = f"manual-{secrets.token_hex(4)}"
        self.book = EvidenceBook(who, wall)
        self.book.decided(node.name, {"manual": True, "requestedBy": who, "action": action.value})
        self.seen: list[Step] = []

    def step(self, s: Step) -> None:
        """One power step of the walk."""
        self.seen.append(s)
        self.book.power_step(self.node.name, self.id, self.node, s)

    def operation(self, outcome: PowerOutcome | None, verdict: str, uid: str) -> Operation:
        """The final operation this fence was (`outcome` None: interrupted)."""
        proven = outcome is not None and outcome.off_proven
        sent = any(s.request in ("off", "on") and s.result == "sent" for s in self.seen)
        return Operation(
            node=self.node.name,
            id=self.id,
            phase=Phase.MANUAL,
            power_off_sent=sent,
            off_proven=proven,
            level=outcome.level if outcome is not None else None,
            attempts=1,
            errors=tuple((outcome.errors if outcome is not None else [])[-5:]),
            reason=verdict,
            proof="read-back" if proven else "",
            node_uid=uid,
            reboot=self.action is PowerRequest.REBOOT,
        )

    async def store(
        self, api: ClusterApi, namespace: str, outcome: PowerOutcome | None, verdict: str, uid: str
    ) -> str:
        """Create the record; returns its name."""
        op = self.operation(outcome, verdict, uid)
        body = to_record(
            op,
            namespace,
            self.who,
            action="on" if self.action is PowerRequest.ON else "off",
            evidence=self.book.to_json(self.node.name, self.id),
            requested_by=self.who,
        )
        saved = await api.save_record(namespace, body)
        return str((saved.get("metadata") or {}).get("name") or body["metadata"]["name"])
