"""Maintenance mode and live migration: the thin I/O around `agent.maintenance`.

Each command reads the cluster, asks `agent.maintenance` what to do, does it through
`agent.cluster.ClusterApi`, and reports through a `Reporter`; it polls with a deadline and never
sleeps for synchronisation. The order of `enter_maintenance` is the safety argument: the
Node is marked (so the leader stops fencing it) before it is cordoned, and cordoned before any
VM moves; a run that fails leaves it marked and cordoned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.cluster import MAINTENANCE_LABEL, ClusterApi, ClusterError
from agent.maintenance import (
    DEFAULT_PARALLEL,
    MAINTENANCE_VALUE,
    RUNNING,
    DrainStep,
    MigrationState,
    NodeFacts,
    NodeRow,
    OpRef,
    PodAction,
    PodDrain,
    VmRef,
    classify_pod,
    did_you_mean,
    enter_verdict,
    eviction_retry_delay,
    follow_migration,
    maintenance_rows,
    op_ref,
    plan_vm_drain,
    pod_key,
    vm_ref,
    vmop_body,
    vmop_name,
)

Clock = Callable[[], float]


class Reporter(Protocol):
    """Where a command's progress goes (a terminal, a log, a scenario's timeline)."""

    def line(self, text: str) -> None:
        """A line that stays."""

    def step(self, text: str) -> None:
        """A state the next one replaces: in place on a terminal, a line of its own elsewhere."""

    def status(self, text: str) -> None:
        """A running summary: in place on a terminal, left out elsewhere."""


class VmopsError(Exception):
    """The command cannot go on; what it already changed is said in the message."""


class UnknownObject(VmopsError):
    """A node or VM named on the command line does not exist (nothing was changed)."""


@dataclass(frozen=True)
class Outcome:
    """How a command ended: success and the closing lines."""

    ok: bool
    lines: tuple[str, ...]


# ---- migrate ---------------------------------------------------------------------------------


async def _unknown_vm(api: ClusterApi, namespace: str, name: str) -> UnknownObject:
    vms = [vm_ref(v) for v in await api.list_vms()]
    here = [v.name for v in vms if v.namespace == namespace]
    elsewhere = sorted(v.namespace for v in vms if v.name == name)
    hint = f" (it exists in namespace {elsewhere[0]}: use -n {elsewhere[0]})" if elsewhere else ""
    hint = hint or did_you_mean(name, here)
    return UnknownObject(f"no VirtualMachine {name!r} in namespace {namespace!r}{hint}")


async def _create_evict(api: ClusterApi, vm: VmRef, unix_time: float, node: str = "") -> OpRef:
    """Create an Evict operation named as the seed does; a taken name gets a suffix."""
    for attempt in range(5):
        name = vmop_name(vm.name, unix_time, attempt)
        try:
            await api.create_vm_operation(
                vm.namespace, vmop_body(vm.namespace, vm.name, name, node)
            )
        except ClusterError as err:
            if err.status == 409:
                continue
            raise
        return OpRef(vm.namespace, name, vm.name, "")
    raise VmopsError(f"cannot name an operation for {vm.key}: migrate-{vm.name}-* kept conflicting")


async def migrate_vm(
    api: ClusterApi,
    namespace: str,
    name: str,
    *,
    wait: bool,
    timeout: float,
    reporter: Reporter,
    poll: float = 0.25,
    clock: Clock = time.monotonic,
    wall: Clock = time.time,
) -> Outcome:
    """Live-migrate a Running VM by an Evict VirtualMachineOperation; with `wait`, follow it
    until it completes, fails or `timeout` passes. An unknown or non-Running VM raises before
    anything is created."""
    obj = await api.get_vm(namespace, name)
    if obj is None:
        raise await _unknown_vm(api, namespace, name)
    vm = vm_ref(obj)
    if vm.phase != RUNNING or not vm.node:
        raise VmopsError(
            f"VirtualMachine {vm.key} is {vm.phase or 'without a phase'}: only a Running VM "
            "can be migrated; nothing was created"
        )
    op = await _create_evict(api, vm, wall())
    reporter.line(f"created VirtualMachineOperation {op.namespace}/{op.name}: Evict {vm.key}")
    if not wait:
        return Outcome(True, (f"follow it with: kubectl get vm -n {namespace} {name} -w",))
    started, deadline = clock(), clock() + timeout
    shown = ""
    while True:
        vm_obj, op_obj = await asyncio.gather(
            api.get_vm(namespace, name), api.get_vm_operation(op.namespace, op.name)
        )
        view = follow_migration(
            vm.node,
            vm_ref(vm_obj) if vm_obj is not None else None,
            op_ref(op_obj) if op_obj is not None else None,
        )
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
                    f"(VM {view.phase} on {view.node}, vmop {view.op_phase or 'Pending'}); "
                    f"the operation goes on: `kubectl delete vmop -n {op.namespace} {op.name}` "
                    "cancels it",
                ),
            )
        await asyncio.sleep(poll)


# ---- maintenance enter -------------------------------------------------------------------------


async def _known_node(api: ClusterApi, node: str) -> tuple[bool, bool, bool | None]:
    """(marked, cordoned, ready) of `node`; UnknownObject when there is no such Node."""
    info = await api.get_node(node)
    if info is None:
        names = [n.name for n in await api.list_nodes()]
        raise UnknownObject(f"no node named {node!r}{did_you_mean(node, names)}; nothing changed")
    return info.maintenance, info.unschedulable, info.ready


async def enter_maintenance(
    api: ClusterApi,
    node: str,
    *,
    timeout: float,
    reporter: Reporter,
    vms_only: bool = False,
    parallel: int = DEFAULT_PARALLEL,
    force: bool = False,
    poll: float = 0.25,
    clock: Clock = time.monotonic,
    wall: Clock = time.time,
) -> Outcome:
    """Mark `node` (nodefence stops fencing it), cordon it, live-migrate every VM off it
    (`parallel` at once) and, unless `vms_only`, evict the remaining pods as `kubectl drain
    --ignore-daemonsets --delete-emptydir-data` does (`force`: pods of no controller too)."""
    marked, cordoned, _ = await _known_node(api, node)
    deadline = clock() + timeout
    if not marked:
        await api.label_node(node, MAINTENANCE_LABEL, MAINTENANCE_VALUE)
    already = " (already)" if marked else ""
    reporter.line(
        f"node {node}: marked {MAINTENANCE_LABEL}={MAINTENANCE_VALUE}{already}: nodefence "
        "will not fence it"
    )
    if not cordoned:
        await api.set_unschedulable(node, True)
    already = " (already)" if cordoned else ""
    reporter.line(f"node {node}: cordoned{already}: no new VM or pod starts there")
    step, timed_out = await _drain_vms(api, node, deadline, parallel, reporter, poll, clock, wall)
    pods = None
    if not step.remaining and not vms_only:
        pods = await _drain_pods(api, node, deadline, force, reporter, poll, clock)
    ok, lines = enter_verdict(node, step, pods, timed_out)
    return Outcome(ok, tuple(lines))


async def _look(api: ClusterApi, want_ops: bool) -> tuple[list[VmRef], dict[str, OpRef]]:
    vms = [vm_ref(v) for v in await api.list_vms()]
    ops = [op_ref(o) for o in await api.list_vm_operations()] if want_ops else []
    return vms, {f"{o.namespace}/{o.name}": o for o in ops}


async def _drain_vms(
    api: ClusterApi,
    node: str,
    deadline: float,
    parallel: int,
    reporter: Reporter,
    poll: float,
    clock: Clock,
    wall: Clock,
) -> tuple[DrainStep, bool]:
    """Evict until no VM is left on `node` or the deadline; (last step, timed out)."""
    started = clock()
    ours: dict[str, OpRef] = {}  # VM key -> the operation this run created for it
    seen: set[str] = set()
    shown: dict[str, str] = {}
    api_trouble = ""
    step: DrainStep | None = None
    while True:
        try:
            vms, live = await _look(api, bool(ours))
        except ClusterError as err:
            if str(err) != api_trouble:
                reporter.line(f"cannot read the cluster, retrying: {err}")
                api_trouble = str(err)
        else:
            api_trouble = ""
            gone = "the operation was deleted before it finished"
            ops = {
                vm: op
                if op.failed  # never created
                else live.get(
                    f"{op.namespace}/{op.name}",
                    OpRef(op.namespace, op.name, op.vm, "Failed", "Deleted", gone),
                )
                for vm, op in ours.items()
            }
            step = plan_vm_drain(node, vms, ops, seen, parallel)
            if not seen:
                names = ", ".join(p.vm for p in step.progress) or "none"
                reporter.line(f"node {node}: {len(step.progress)} VMs to move: {names}")
            seen.update(p.vm for p in step.progress)
            for vm in step.start:
                try:
                    ours[vm.key] = await _create_evict(api, vm, wall(), node)
                except (ClusterError, VmopsError) as err:
                    ours[vm.key] = OpRef(
                        vm.namespace, "", vm.name, "Failed", "NotCreated", str(err)
                    )
            for p in step.progress:
                text = p.describe(node)
                if shown.get(p.vm) != text:
                    shown[p.vm] = text
                    reporter.line(text)
            reporter.status(f"node {node}: {step.summary()}  [{clock() - started:.0f} s]")
            if step.done:
                return step, False
        if clock() >= deadline:
            if step is None:
                raise VmopsError(
                    f"cannot read the VMs of {node} within the timeout ({api_trouble}); "
                    f"{node} stays marked and cordoned"
                )
            return step, True
        await asyncio.sleep(poll)


async def _drain_pods(
    api: ClusterApi,
    node: str,
    deadline: float,
    force: bool,
    reporter: Reporter,
    poll: float,
    clock: Clock,
) -> PodDrain:
    """Evict the pods left on `node` through the Eviction API, retrying PDB refusals (429)
    with backoff until they are gone or the deadline."""
    pods = await api.list_node_pods(node)
    actions = {pod_key(p): classify_pod(p, force) for p in pods}
    skipped = tuple(
        sorted(
            k for k, a in actions.items() if a in (PodAction.SKIP_DAEMONSET, PodAction.SKIP_MIRROR)
        )
    )
    unmanaged = tuple(sorted(k for k, a in actions.items() if a is PodAction.REFUSE_UNMANAGED))
    if unmanaged:  # as kubectl drain: refuse before evicting anything
        return PodDrain(skipped=skipped, unmanaged=unmanaged)
    if skipped:
        reporter.line(f"node {node}: leaving {len(skipped)} DaemonSet or static pods")
    to_evict = sorted(k for k, a in actions.items() if a is PodAction.EVICT)
    waiting = {k for k, a in actions.items() if a is PodAction.WAIT_DELETING}
    evicted: list[str] = []
    refused: dict[str, str] = {}
    attempts: dict[str, int] = {}
    next_try: dict[str, float] = {}
    while True:
        for key in [k for k in to_evict if k not in evicted and next_try.get(k, 0) <= clock()]:
            namespace, name = key.split("/", 1)
            try:
                why = await api.evict_pod(namespace, name)
            except ClusterError as err:
                why = "" if err.status == 404 else str(err)
            if not why:
                evicted.append(key)
                reporter.line(f"pod {key}: evicted")
                continue
            attempts[key] = attempts.get(key, 0) + 1
            next_try[key] = clock() + eviction_retry_delay(attempts[key])
            if refused.get(key) != why:
                reporter.line(f"pod {key}: eviction refused, retrying: {why}")
            refused[key] = why
        try:
            present = {pod_key(p) for p in await api.list_node_pods(node)}
        except ClusterError as err:
            present = set(to_evict) | waiting
            reporter.status(f"cannot list pods, retrying: {err}")
        outstanding = sorted((set(to_evict) | waiting) & present)
        if not outstanding:
            return PodDrain(evicted=tuple(evicted), skipped=skipped)
        reporter.status(f"node {node}: {len(outstanding)} pods to go")
        if clock() >= deadline:
            stuck = tuple(
                (
                    k,
                    refused.get(k)
                    or ("still terminating" if k in evicted or k in waiting else "not evicted"),
                )
                for k in outstanding
            )
            return PodDrain(evicted=tuple(evicted), skipped=skipped, stuck=stuck)
        await asyncio.sleep(poll)


# ---- exit and list -------------------------------------------------------------------------


async def exit_maintenance(
    api: ClusterApi, node: str, *, reporter: Reporter, force: bool = False
) -> Outcome:
    """Uncordon `node` and clear its mark. A node that is not Ready keeps its mark unless
    `force`: without it nodefence would take the node for dead and fence it."""
    marked, cordoned, ready = await _known_node(api, node)
    if not marked:
        why = "cordoned by someone else: `kubectl uncordon` it" if cordoned else "schedulable"
        return Outcome(
            True, (f"node {node} is not in nodefence maintenance ({why}); nothing changed",)
        )
    if ready is not True and not force:
        raise VmopsError(
            f"node {node} is not Ready: ending maintenance now would let nodefence fence it as "
            "soon as it looks dead. Power it on and wait until it is Ready, or pass --force. "
            "Nothing changed."
        )
    if cordoned:
        await api.set_unschedulable(node, False)
        reporter.line(f"node {node}: uncordoned")
    await api.label_node(node, MAINTENANCE_LABEL, None)
    reporter.line(f"node {node}: mark {MAINTENANCE_LABEL} removed: nodefence guards it again")
    return Outcome(True, (f"{node} left maintenance",))


async def list_maintenance(api: ClusterApi, every_node: bool = False) -> list[NodeRow]:
    """The nodes in maintenance (every node with `every_node`) and the VMs still on them."""
    nodes = await api.list_nodes()
    vms = [vm_ref(v) for v in await api.list_vms()]
    facts = [NodeFacts(n.name, n.maintenance, n.unschedulable, n.ready) for n in nodes]
    return maintenance_rows(facts, vms, every_node)
