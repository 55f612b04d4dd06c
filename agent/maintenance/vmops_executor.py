"""Maintenance mode and live migration: the thin I/O around `nodefence.agent.maintenance.mode`.

Each command reads the cluster, asks the pure modules what to do, does it through
`nodefence.agent.kube.client.ClusterApi`, and reports through a `Reporter`; it polls with a deadline
and never sleeps for synchronisation. The order of `enter_maintenance` is the safety argument:
1. refuse (nothing changed) a node that is not Ready, or whose VMs have no room elsewhere;
2. in one write, mark the node `draining` (still guarded: its VMs keep their failover) and
   cordon it (remembering that we did, so `exit` never undoes someone else's cordon);
3. if it leads, wait until its agent handed leadership off; warn if the broker runs there;
4. move every VM off it, following operations that already exist, and wait for any migrating
   onto it; check the whole cluster again before calling it empty; then drain the pods;
5. only then mark it `true`: nodefence will not fence it, it may be powered off.
A run that fails leaves it cordoned and `draining`: guarded.
"""

from __future__ import annotations

import asyncio
import time

from nodefence.agent.kube.client import ClusterApi, ClusterError, NodeInfo
from nodefence.agent.leader.handoff import lease_holder_node
from nodefence.agent.maintenance.drain_executor import VmDrain, drain_pods, launcher_vms
from nodefence.agent.maintenance.mode import (
    MAINTENANCE_VALUE,
    NodeFacts,
    NodeRow,
    capacity_refusal,
    did_you_mean,
    enter_refusal,
    enter_verdict,
    exit_patch,
    maintenance_rows,
    mark_patch,
    start_mark,
)
from nodefence.agent.maintenance.pod_drain import pod_key, pod_node, pod_running
from nodefence.agent.maintenance.vm_capacity import Need, free_rooms
from nodefence.agent.maintenance.vm_drain import DEFAULT_PARALLEL
from nodefence.agent.maintenance.vm_migration import (
    MIGRATING,
    RUNNING,
    MigrationState,
    VmRef,
    follow_migration,
)
from nodefence.agent.maintenance.vmops_client import (
    Clock,
    Outcome,
    Reporter,
    UnknownObject,
    VmopsError,
)
from nodefence.agent.virt.driver_client import VirtDriver
from nodefence.agent.virt.layer_client import VirtLayer

__all__ = [
    "Outcome",
    "Reporter",
    "UnknownObject",
    "VmopsError",
    "enter_maintenance",
    "exit_maintenance",
    "list_maintenance",
    "migrate_vm",
]

DEFAULT_LEASE = ("nodefence", "nodefence-leader")
BROKER_SELECTOR = "app.kubernetes.io/component=mqtt"

# ---- migrate ---------------------------------------------------------------------------------


async def _unknown_vm(virt: VirtLayer, namespace: str, name: str) -> UnknownObject:
    vms = await virt.list_vms()
    here = [v.name for v in vms if v.namespace == namespace]
    elsewhere = sorted(v.namespace for v in vms if v.name == name)
    hint = f" (it exists in namespace {elsewhere[0]}: use -n {elsewhere[0]})" if elsewhere else ""
    hint = hint or did_you_mean(name, here)
    return UnknownObject(f"no VirtualMachine {name!r} in namespace {namespace!r}{hint}")


async def _find_vm(virt: VirtLayer, namespace: str, name: str) -> tuple[VirtDriver, VmRef]:
    """The VM of that name, and its driver; UnknownObject when no API in use has it, or two
    have (say which to use)."""
    found = []
    for driver in await virt.drivers():
        vm = await driver.get_vm(namespace, name)
        if vm is not None:
            found.append((driver, vm))
    if not found:
        raise await _unknown_vm(virt, namespace, name)
    if len(found) > 1:
        apis = " and ".join(d.virt.value for d, _ in found)
        raise UnknownObject(
            f"{namespace}/{name} is a VirtualMachine of {apis}: pass --virtualization to say "
            "which; nothing was created"
        )
    return found[0]


async def migrate_vm(
    api: ClusterApi,
    namespace: str,
    name: str,
    *,
    wait: bool,
    timeout: float,
    reporter: Reporter,
    force: bool | None = None,
    poll: float = 0.25,
    clock: Clock = time.monotonic,
    wall: Clock = time.time,
    virt: VirtLayer | None = None,
) -> Outcome:
    """Live-migrate a running VM: an Evict VirtualMachineOperation (`force`: its
    `spec.force`), or for a KubeVirt VM a VirtualMachineInstanceMigration; with `wait`, follow
    it until it completes, fails, is superseded or `timeout` passes, showing what the
    controller says meanwhile. An unknown VM, or one that does not run, raises before anything
    is created; the admission webhook's refusal is shown in its own words. `virt`: the VM
    APIs to look in (default: Deckhouse's)."""
    virt = virt or VirtLayer(api, maintenance=True)
    driver, vm = await _find_vm(virt, namespace, name)
    if vm.phase not in (RUNNING, MIGRATING) or not vm.node:
        raise VmopsError(
            f"VirtualMachine {vm.key} is {vm.phase or 'without a phase'}: only a running VM "
            "can be migrated; nothing was created"
        )
    try:
        op = await driver.migrate(vm, wall(), force=force)
    except ClusterError as err:
        raise VmopsError(
            f"{err}; nothing was created (`kubectl get {driver.op_kind} -n {namespace}` shows "
            "the operations of the VM)"
        ) from None
    what = "Evict" if driver.op_kind == "vmop" else "migrate"
    reporter.line(f"created {driver.op_what} {op.namespace}/{op.name}: {what} {vm.key}")
    if not wait:
        return Outcome(True, (f"follow it with: kubectl get vm -n {namespace} {name} -w",))
    started, deadline = clock(), clock() + timeout
    shown = ""
    while True:
        vm_now, op_now = await asyncio.gather(driver.get_vm(namespace, name), driver.get_op(op))
        view = follow_migration(vm.node, vm_now, op_now, driver.op_kind)
        elapsed = clock() - started
        if view.describe() != shown:
            shown = view.describe()
            reporter.step(f"{elapsed:6.1f}s  {shown}")
        if view.state is MigrationState.DONE:
            return Outcome(
                True, (f"migrated {vm.key} from {vm.node} to {view.node} in {elapsed:.1f} s",)
            )
        if view.state is MigrationState.FAILED:
            return Outcome(False, (f"migration of {vm.key} FAILED: {view.reason}",))
        if clock() >= deadline:
            return Outcome(
                False,
                (
                    f"migration of {vm.key} did not finish within {timeout:g} s "
                    f"(VM {view.phase} on {view.node}, {driver.op_kind} "
                    f"{view.op_phase or 'Pending'}); the operation goes on: `kubectl delete "
                    f"{driver.op_kind} -n {op.namespace} {op.name}` cancels it",
                ),
            )
        await asyncio.sleep(poll)


# ---- maintenance enter -------------------------------------------------------------------------


async def _known_node(api: ClusterApi, node: str) -> NodeInfo:
    """The Node; UnknownObject when there is none."""
    info = await api.get_node(node)
    if info is None:
        names = [n.name for n in await api.list_nodes()]
        raise UnknownObject(f"no node named {node!r}{did_you_mean(node, names)}; nothing changed")
    return info


async def _room_check(
    api: ClusterApi, virt: VirtLayer, node: str, reporter: Reporter
) -> list[VmRef]:
    """Refuse (raise) when the VMs of `node` fit on no other node; every VM of the cluster."""
    vms = await virt.list_vms()
    nodes = await api.list_nodes()
    targets = {
        n.name: (n.allocatable_cpu, n.allocatable_memory)
        for n in nodes
        if n.name != node and n.ready is True and not n.unschedulable and not n.maintenance_mark
    }
    needs: list[Need] = []
    placed: list[tuple[str, Need]] = []
    for vm in vms:
        need = vm.need
        if need is None:
            continue
        if vm.node == node or vm.arriving_at(node):
            needs.append(need)
        for where in {vm.node, vm.target} - {"", node}:
            placed.append((where, need))
    here = [vm for vm in vms if vm.node == node]
    if here and not targets:
        raise VmopsError(
            f"no other node can take the {len(here)} VMs of {node}: none is Ready, schedulable "
            "and out of maintenance. Nothing changed."
        )
    rooms = free_rooms(targets, placed)
    refusal = capacity_refusal(node, needs, rooms)
    if refusal:
        raise VmopsError(refusal)
    if needs and not rooms:
        reporter.line(f"node {node}: room elsewhere not checked: no node reports allocatable")
    return vms


async def _hand_off(
    api: ClusterApi,
    node: str,
    lease: tuple[str, str],
    until: float,
    reporter: Reporter,
    poll: float,
    clock: Clock,
) -> None:
    """If `node` holds the leader Lease, wait (until `until`) for its agent to hand it off."""
    namespace, name = lease
    try:
        holder = await api.get_lease(namespace, name)
    except ClusterError as err:
        reporter.line(
            f"cannot read the leader Lease {namespace}/{name} ({err}); if {node} leads, its "
            "agent hands leadership off by itself"
        )
        return
    if holder is None or lease_holder_node(holder.holder) != node:
        return
    reporter.line(
        f"node {node} holds the nodefence leader Lease ({holder.holder}): waiting for its agent "
        "to hand leadership off before anything moves"
    )
    while clock() < until:
        await asyncio.sleep(poll)
        try:
            holder = await api.get_lease(namespace, name)
        except ClusterError:
            continue
        now = lease_holder_node(holder.holder if holder else None)
        if now != node:
            who = f"{now} leads now" if now else "the Lease is free: another agent takes it"
            reporter.line(f"leadership handed off: {who}")
            return
    reporter.line(
        f"WARNING: {node} still leads (no other agent took over?): moving its VMs anyway. "
        "Powering it off stops all fencing until another agent leads and has judged for a "
        "full fence_after."
    )


async def _warn_broker(
    api: ClusterApi, node: str, namespace: str, vms_only: bool, reporter: Reporter
) -> None:
    """Say so when the MQTT broker runs on `node` (it moves, or stops with the node)."""
    try:
        pods = await api.list_pods(namespace, BROKER_SELECTOR)
    except ClusterError:
        return  # a warning only: who may not read pods there still may drain the node
    for pod in pods:
        if pod_node(pod) == node and pod_running(pod):
            then = (
                "it stays (--vms-only) and stops with the node"
                if vms_only
                else "draining evicts it and it restarts elsewhere"
            )
            reporter.line(
                f"WARNING: the MQTT broker pod {pod_key(pod)} runs on {node}: {then}. "
                "Meanwhile no heartbeat arrives, and the leader freezes every fencing "
                "decision (nothing is fenced) until the broker is back for a fence_after."
            )


async def enter_maintenance(
    api: ClusterApi,
    node: str,
    *,
    timeout: float,
    reporter: Reporter,
    vms_only: bool = False,
    parallel: int = DEFAULT_PARALLEL,
    evict_unmanaged: bool = False,
    force: bool | None = None,
    allow_not_ready: bool = False,
    lease: tuple[str, str] = DEFAULT_LEASE,
    handoff_timeout: float = 30.0,
    poll: float = 1.0,
    clock: Clock = time.monotonic,
    wall: Clock = time.time,
    virt: VirtLayer | None = None,
) -> Outcome:
    """Take `node` out of service as the module doc says: move every VM off it (`parallel`
    at once: Evicts, each with `spec.force` = `force`; KubeVirt VMs as their evictionStrategy
    says), then (unless `vms_only`) evict the other pods as `kubectl drain
    --ignore-daemonsets --delete-emptydir-data` does (`evict_unmanaged`: pods of no controller
    too). `virt`: the VM APIs to drain (default: Deckhouse's)."""
    virt = virt or VirtLayer(api, maintenance=True)
    info = await _known_node(api, node)
    refusal = enter_refusal(node, info.ready, allow_not_ready)
    if refusal:
        raise VmopsError(refusal)
    deadline = clock() + timeout
    everyone = await _room_check(api, virt, node, reporter)
    for driver in await virt.drivers():
        for note in driver.notes():
            reporter.line(f"WARNING: {note}")
    mark = start_mark(info.maintenance_mark, info.ready)
    await api.patch_node(node, mark_patch(mark, cordon=None if info.unschedulable else True))
    guarded = "still guarded" if mark != MAINTENANCE_VALUE else "not fenced"
    reporter.line(f"node {node}: marked nodefence.io/maintenance={mark} ({guarded} until empty)")
    if not info.unschedulable:
        how = ""
    elif info.cordoned_by_maintenance:
        how = " (already, by an earlier enter)"
    else:
        how = " (already, by someone else: exit keeps it)"
    reporter.line(f"node {node}: cordoned{how}: no new VM or pod starts there")
    await _hand_off(
        api, node, lease, min(deadline, clock() + handoff_timeout), reporter, poll, clock
    )
    await _warn_broker(api, node, lease[0], vms_only, reporter)
    drain = VmDrain(
        api,
        node,
        parallel=parallel,
        force=force,
        reporter=reporter,
        clock=clock,
        wall=wall,
        initial=everyone,
        virt=virt,
    )
    step, timed_out = await drain.run(deadline, poll)
    pods = None
    if not step.remaining and not vms_only:
        pods = await drain_pods(api, node, deadline, evict_unmanaged, reporter, poll, clock)
    ok, lines = enter_verdict(node, step, pods, timed_out)
    if ok:
        # Nothing may have landed while the pods drained: the node is cordoned, but look.
        stray = await launcher_vms(api, node, await virt.drivers())
        if stray:
            return Outcome(
                False,
                (
                    f"maintenance of {node} is NOT complete: VMs appeared on it meanwhile: "
                    + ", ".join(sorted(stray)),
                    f"run `nodefence maintenance enter {node}` again; it stays guarded",
                ),
            )
        await api.patch_node(node, mark_patch(MAINTENANCE_VALUE))
    return Outcome(ok, tuple(lines))


# ---- exit and list -------------------------------------------------------------------------


async def exit_maintenance(
    api: ClusterApi, node: str, *, reporter: Reporter, force: bool = False
) -> Outcome:
    """Clear the mark of `node` and, if `enter` cordoned it, uncordon it, in one write (a
    failure changes nothing). A node in maintenance (`true`) that is not Ready keeps its mark
    unless `force`: without it nodefence would take the node for dead and fence it (a
    `draining` one is guarded already)."""
    info = await _known_node(api, node)
    if not info.maintenance_mark:
        why = "cordoned by someone else: `kubectl uncordon` it" if info.unschedulable else ""
        return Outcome(
            True,
            (f"node {node} is not in nodefence maintenance ({why or 'schedulable'}); nothing "
             "changed",),
        )  # fmt: skip
    if info.maintenance_mark == MAINTENANCE_VALUE and info.ready is not True and not force:
        raise VmopsError(
            f"node {node} is not Ready: ending maintenance now would let nodefence fence it as "
            "soon as it looks dead. Power it on and wait until it is Ready, or pass --force. "
            "Nothing changed."
        )
    ours = info.cordoned_by_maintenance and info.unschedulable
    await api.patch_node(node, exit_patch(info.cordoned_by_maintenance))
    reporter.line(f"node {node}: mark nodefence.io/maintenance removed: nodefence guards it again")
    if ours:
        reporter.line(f"node {node}: uncordoned")
    elif info.unschedulable:
        reporter.line(f"node {node}: stays cordoned (not by `maintenance enter`)")
    return Outcome(True, (f"{node} left maintenance",))


async def list_maintenance(
    api: ClusterApi, every_node: bool = False, virt: VirtLayer | None = None
) -> list[NodeRow]:
    """The nodes in maintenance (every node with `every_node`) and the VMs still on them
    (`virt`: of these VM APIs; default: Deckhouse's)."""
    virt = virt or VirtLayer(api, maintenance=True)
    nodes = await api.list_nodes()
    vms = await virt.list_vms()
    facts = [NodeFacts(n.name, n.maintenance_mark, n.unschedulable, n.ready) for n in nodes]
    return maintenance_rows(facts, vms, every_node)
