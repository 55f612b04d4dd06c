"""What a chaos run sees of the cluster: snapshots for the invariant checks, and the changes
between two of them as lines for the timeline."""

from __future__ import annotations

from collections.abc import Mapping

from nodefence.hwsim.chaos.invariants import RecordView, Snapshot, VmView
from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views

MAINTENANCE_LABEL = "nodefence.io/maintenance"


def take_snapshot(
    cluster: SimCluster, t: float, heartbeats: Mapping[str, float] | None = None
) -> Snapshot:
    """One look at `cluster` at `t`: its API objects and its machines' real state.

    Power-off requests are counted before the records are read: a request the leader sent
    after storing `powerOffSent` then always comes with that record."""
    offs = {m.name: m.off_requests_by_channel() for m in cluster.fleet}
    if cluster.bmcs is not None:
        for host, outlet in cluster.bmcs.outlets.items():
            offs[host] = {**offs[host], **outlet.off_requests_by_channel()}
    store = cluster.kube.store
    nodes, maintenance = {}, set()
    for n in store.list("nodes")["items"]:
        meta = n["metadata"]
        nodes[meta["name"]] = str(meta.get("uid", ""))
        if (meta.get("labels") or {}).get(MAINTENANCE_LABEL) == "true":
            maintenance.add(meta["name"])
    power = {m.name: m.power_state() for m in cluster.fleet}
    changes = {m.name: m.power_changes for m in cluster.fleet}
    renew = {
        lease["metadata"]["name"]: str((lease.get("spec") or {}).get("renewTime") or "")
        for lease in store.list("leases", "kube-node-lease")["items"]
    }
    records = {}
    for rec in store.list("fenceoperations", "nodefence")["items"]:
        st = rec.get("status") or {}
        records[rec["metadata"]["name"]] = RecordView(
            str(rec["spec"]["nodeName"]),
            str(st.get("phase", "")),
            bool(st.get("powerOffSent")),
            bool(st.get("offProven")),
            bool(st.get("nodeDeleted")),
            str(st.get("proof") or ""),
        )
    vms, running = {}, {}
    controllers = {"deckhouse": cluster.vm_controller, "kubevirt": cluster.kubevirt_controller}
    for view in vm_views(store):
        vms[view.key] = VmView(view.phase, view.node, view.policy)
        ctl = controllers.get(view.api)
        if ctl is not None:
            running[view.key] = frozenset(ctl.running_places(view.namespace, view.name))
    return Snapshot(
        t,
        nodes,
        frozenset(maintenance),
        power,
        changes,
        renew,
        records,
        vms,
        running,
        dict(heartbeats or {}),
        offs,
        frozenset(name for name, sim in cluster.nodes.items() if sim.partitioned),
    )


def seen_changes(prev: Snapshot, snap: Snapshot) -> list[tuple[str, str]]:
    """What the agents and controllers did between two looks, as (node, line) for the log."""
    lines: list[tuple[str, str]] = []
    for node in sorted(set(prev.nodes) | set(snap.nodes)):
        if node not in snap.nodes:
            lines.append((node, "Node deleted"))
        elif prev.nodes.get(node) != snap.nodes[node]:
            lines.append((node, "Node registered"))
        if (node in prev.maintenance) != (node in snap.maintenance):
            mark = "marked" if node in snap.maintenance else "unmarked"
            lines.append((node, f"{mark} {MAINTENANCE_LABEL}"))
    for name, rec in sorted(snap.records.items()):
        old = prev.records.get(name)
        if old is None or old.phase != rec.phase:
            flags = "powerOffSent " if rec.power_off_sent else ""
            flags += "offProven" if rec.off_proven else ""
            lines.append((rec.node, f"fence {name}: {rec.phase} {flags}".rstrip()))
    for key, vm in sorted(snap.vms.items()):
        old_vm = prev.vms.get(key)
        if old_vm is not None and old_vm.phase != "Running" and vm.phase == "Running":
            lines.append((vm.node or "-", f"VM {key} {old_vm.phase} -> Running"))
    return lines
