"""Where a VM may run, as the scheduler and the virtualization controller judge it (pure).

A node is eligible when it is Ready, schedulable and carries no NoSchedule/NoExecute taint; the
least-loaded eligible node is chosen (ties by name); when none is, the scheduler's words say why
(`0/3 nodes are available: ...`). Used by `nodefence.hwsim.virtualization.coldstandby`,
`nodefence.hwsim.kubevirt` and migrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def is_out_of_service(node: Obj) -> bool:
    """Whether the node carries `node.kubernetes.io/out-of-service` with effect NoExecute."""
    taints = mapping_of(node.get("spec")).get("taints") or []
    return any(t.get("key") == OUT_OF_SERVICE and t.get("effect") == "NoExecute" for t in taints)


def why_unschedulable(node: Obj) -> str:
    """The scheduler's words for why nothing new may run on `node`; "" when it may."""
    conditions = conditions_of(mapping_of(node.get("status")))
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return "node(s) were not ready"
    if mapping_of(node.get("spec")).get("unschedulable"):
        return "node(s) were unschedulable"
    for taint in mapping_of(node.get("spec")).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute"):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return ""


def eligible_nodes(nodes: Iterable[Obj]) -> list[str]:
    """Names of the nodes a VM may start or migrate on, sorted."""
    return sorted(n["metadata"]["name"] for n in nodes if not why_unschedulable(n))


def choose_node(candidates: Iterable[str], load: dict[str, int]) -> str | None:
    """The least-loaded candidate (ties by name), or None."""
    return min(candidates, key=lambda n: (load.get(n, 0), n), default=None)


def unavailable_message(nodes: Iterable[Obj], excluded: str = "") -> str:
    """`0/3 nodes are available: 1 node(s) were unschedulable, ...`, as the scheduler words it."""
    counts: dict[str, int] = {}
    total = 0
    for node in nodes:
        total += 1
        why = why_unschedulable(node) or (
            "node(s) already run the VM" if node["metadata"]["name"] == excluded else ""
        )
        if why:
            counts[why] = counts.get(why, 0) + 1
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    return f"0/{total} nodes are available" + (f": {reasons}." if reasons else ".")


def mapping_of(value: Any) -> Obj:
    """`value` if it is a mapping, else {} (objects in the store follow no schema)."""
    return value if isinstance(value, dict) else {}


def conditions_of(status: Obj) -> list[Obj]:
    """The well-formed entries of `status.conditions`."""
    found = status.get("conditions")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def load_of(vms: list[Obj]) -> dict[str, int]:
    """How many of `vms` each node hosts (by `status.nodeName`)."""
    load: dict[str, int] = {}
    for vm in vms:
        node = mapping_of(vm.get("status")).get("nodeName")
        if isinstance(node, str) and node:
            load[node] = load.get(node, 0) + 1
    return load
