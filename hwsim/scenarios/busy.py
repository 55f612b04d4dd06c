"""Scenario `maintenance-busy`: a node enters maintenance while it is busy.

When `nodefence maintenance enter` starts, a VM is migrating onto the node (someone's Evict
chose it moments before), another VM of the node has an Evict of its own still queued (the
cluster allows one migration at a time), and one VM cannot move at all (not migratable). The
promise: `enter` never reports the node done while a VM is on it or arriving at it; it follows
the queued operation instead of colliding with the admission webhook; it names the VM it could
not move with the controller's reason and exits non-zero; the node stays cordoned and guarded
(`draining`), so its power is never cut and nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.migration_state import DIRTY_ANNOTATION, MigrationLimits
from nodefence.hwsim.virtualization.vms import place_vms

LABEL = "nodefence.io/maintenance"
RESTARTABLE = ("AlwaysOn", "AlwaysOnUnlessStoppedManually")
STUCK, INCOMING = "stuck-1", "incoming-1"
_RESULTS: dict[int, tuple[int, str]] = {}  # id(cluster) -> (exit code, output) of the enter


class Says(Protocol):
    """The scenario's timeline."""

    def add(self, node: str, what: str) -> None:
        """Record one line."""


def _vmop(name: str, vm: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "virtualization.deckhouse.io/v1alpha2",
        "kind": "VirtualMachineOperation",
        "metadata": {"name": name},
        "spec": {"type": "Evict", "virtualMachineName": vm, **spec},
    }


def _migrating_to(cluster: SimCluster, vm: str) -> str:
    status = cluster.kube.store.get("virtualmachines", vm, "default").get("status") or {}
    target = ((status.get("migrationState") or {}).get("target") or {}).get("node")
    return str(target or "") if status.get("phase") == "Migrating" else ""


def _cordon(cluster: SimCluster, nodes: list[str], on: bool) -> None:
    for node in nodes:
        cluster.kube.store.patch("nodes", node, {"spec": {"unschedulable": on or None}})


def busy(store: Any, on: bool) -> None:
    """Make the incoming VM's memory change too fast to converge without throttling (or not)."""
    value = "high" if on else None
    store.patch("vm", INCOMING, {"metadata": {"annotations": {DIRTY_ANNOTATION: value}}}, "default")


def inject(cluster: SimCluster, tl: Says) -> list[str]:
    """Make the node busy, then run `nodefence maintenance enter` on it to the end."""

    store, ctl = cluster.kube.store, cluster.vm_controller
    leader = cluster.leader()
    victim = next(n for n in sorted(cluster.nodes, reverse=True) if n != leader)
    others = [n for n in sorted(cluster.nodes) if n != victim]
    ctl.migrations.limits = MigrationLimits(per_cluster=1)  # a busy cluster: one at a time
    [stuck] = place_vms(store, ctl, 1, [victim], ["AlwaysOn"], prefix="stuck-")
    conditions = [c for c in stuck["status"]["conditions"] if c["type"] != "Migratable"]
    conditions.append(
        {"type": "Migratable", "status": "False", "reason": "NotMigratable", "message": "a USB"}
    )
    store.patch(
        "vm", STUCK, {"status": {"conditions": conditions}}, "default", subresource="status"
    )
    tl.add(victim, f"VM {STUCK} cannot migrate (Migratable=False)")
    place_vms(store, ctl, 1, [others[0]], ["AlwaysOn"], prefix="incoming-")
    busy(store, True)  # its migration stalls at half, not converging, until its load drops
    _cordon(cluster, others[1:], True)  # for a moment the victim is the only target
    store.create("vmop", _vmop("someones-evict", INCOMING), "default")
    deadline = time.monotonic() + 10
    while _migrating_to(cluster, INCOMING) != victim and time.monotonic() < deadline:
        time.sleep(0.05)
    _cordon(cluster, others[1:], False)
    tl.add(victim, f"VM {INCOMING} is migrating here from {others[0]} (someone's Evict)")
    queued = next(
        vm["metadata"]["name"]
        for vm in store.list("virtualmachines", "default")["items"]
        if (vm.get("status") or {}).get("nodeName") == victim
        and vm["metadata"]["name"] != STUCK
        and (vm.get("status") or {}).get("phase") == "Running"
    )
    store.create("vmop", _vmop("queued-evict", queued), "default")
    tl.add(victim, f"VM {queued} has an Evict queued (vmop queued-evict, cluster limit 1)")
    tl.add(victim, "MAINTENANCE ENTER (nodefence maintenance enter --vms-only)")
    proc = cluster.nodefence("maintenance", "enter", victim, "--vms-only", "--timeout", "40")
    assert proc.stdout is not None
    output: list[str] = []
    with proc:
        for line in proc.stdout:
            output.append(line)
            tl.add(victim, f"  | {line.rstrip()}")
            if f"node {victim}: " in line and " VMs: " in line:  # the drain has looked
                busy(store, False)
                tl.add(others[0], f"VM {INCOMING}'s load drops: its migration converges")
    _RESULTS[id(cluster)] = (proc.returncode, "".join(output))
    tl.add(victim, f"maintenance enter exited {proc.returncode}: power left on")
    return [victim, queued]


def finished(cluster: SimCluster, victims: list[str]) -> bool:
    """The enter run is over (it is, once `inject` returned)."""
    return id(cluster) in _RESULTS


def judge(cluster: SimCluster, victims: list[str]) -> list[str]:
    """What went against the promise (see the module doc)."""
    victim, queued = victims
    code, out = _RESULTS.pop(id(cluster), (None, ""))
    store = cluster.kube.store
    problems = []
    if code != 1:
        problems.append(f"enter exited {code}, not 1 (a VM could not move)")
    if f"{victim} is in maintenance" in out:
        problems.append("enter said the node was in maintenance")
    reason = "OperationFailed: VirtualMachine is not migratable, cannot be processed."
    if f"default/{STUCK}: {reason}" not in out:
        problems.append(f"enter did not name {STUCK} with the controller's reason")
    if "denied the request" in out or "following its unfinished vmop queued-evict" not in out:
        problems.append(f"enter did not follow the queued operation of {queued}")
    node = store.get("nodes", victim)
    if (node["metadata"].get("labels") or {}).get(LABEL) != "draining":
        problems.append(f"{victim} is not marked {LABEL}=draining (guarded)")
    if not (node.get("spec") or {}).get("unschedulable"):
        problems.append(f"{victim} is not cordoned")
    if cluster.fleet[victim].power_state() != "on":
        problems.append(f"{victim} lost power")
    for vm in store.list("virtualmachines")["items"]:
        name, st = vm["metadata"]["name"], vm.get("status") or {}
        if name == STUCK:
            if (st.get("phase"), st.get("nodeName")) != ("Running", victim):
                problems.append(f"{STUCK} is {st.get('phase')} on {st.get('nodeName')}")
        elif st.get("nodeName") == victim:
            problems.append(f"VM {name} is still on {victim} ({st.get('phase')})")
        elif vm["spec"].get("runPolicy") in RESTARTABLE and st.get("phase") != "Running":
            problems.append(f"VM {name} is {st.get('phase')}, not Running")
    fenced = store.list("fenceoperations", "nodefence")["items"]
    problems += [f"{r['metadata']['name']} fenced a node" for r in fenced]
    problems += [f"split brain: {x}" for x in cluster.vm_controller.violations()]
    return problems
