"""The two drains of `maintenance enter`, as I/O around `nodefence.agent.maintenance.vm_drain` and
`nodefence.agent.maintenance.pod_drain`.

Each look at the VMs is selective, not a list of the whole cluster: the launcher pods bound to
the node (a field selector: every VM running on the node or arriving at it has one), a GET of
each VM of the drain still under way and of each operation followed. The whole cluster's VMs are
read twice: once before anything changes (`enter` checks the room elsewhere with it) and once
more before the drain may say it is done, so a VM that was arriving when the run began is never
missed. VMs of every API in use are drained alike, each through its driver
(`nodefence.agent.virt.layer_client`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nodefence.agent.kube.client import ClusterApi, ClusterError, NotFound
from nodefence.agent.maintenance.pod_drain import (
    PodAction,
    PodDrain,
    classify_pod,
    eviction_retry_delay,
    pod_key,
)
from nodefence.agent.maintenance.vm_drain import FINAL_STAGES, DrainStep, plan_vm_drain
from nodefence.agent.maintenance.vm_migration import OpRef, VmRef, existing_operation
from nodefence.agent.maintenance.vmops_client import Clock, Reporter, VmopsError
from nodefence.agent.virt.driver_client import VirtDriver
from nodefence.agent.virt.layer_client import VirtLayer
from nodefence.agent.virt.names import split_key


async def launcher_vms(api: ClusterApi, node: str, drivers: Iterable[VirtDriver]) -> set[str]:
    """The keys of the VMs whose launcher pods (still running) are bound to `node`."""
    keys = set()
    for driver in drivers:
        pods = await api.list_node_pods(node, label_selector=driver.launcher_selector)
        keys |= {driver.launcher_vm(p) for p in pods} - {""}
    return keys


class VmDrain:
    """One run's drain of the VMs off `node`; `run()` until done or the deadline."""

    def __init__(
        self,
        api: ClusterApi,
        node: str,
        *,
        parallel: int,
        force: bool | None,
        reporter: Reporter,
        clock: Clock,
        wall: Clock,
        initial: Iterable[VmRef] | None = None,
        virt: VirtLayer | None = None,
    ) -> None:
        self.api = api
        self.virt = virt or VirtLayer(api, maintenance=True)
        self.node = node
        self.parallel = parallel
        self.force = force
        self.reporter = reporter
        self.clock = clock
        self.wall = wall
        self.vms: dict[str, VmRef] = {}  # the last look at each VM of the drain
        self.ops: dict[str, OpRef] = {}  # VM -> the Evict followed (created or adopted)
        self.waiting: dict[str, tuple[OpRef, ...]] = {}  # VM -> other operations to end first
        self.seen: set[str] = set()
        self.final: set[str] = set()  # VMs in a final stage at the last look
        self.shown: dict[str, str] = {}
        self._take_whole_cluster(initial or ())
        self._verify = initial is None  # no look at the whole cluster yet: the first one is

    def _take_whole_cluster(self, vms: Iterable[VmRef]) -> None:
        for vm in vms:
            if vm.node == self.node or vm.arriving_at(self.node) or vm.key in self.seen:
                self.vms[vm.key] = vm
                self.seen.add(vm.key)

    def _driver(self, key: str) -> VirtDriver:
        return self.virt.driver(split_key(key)[0])

    async def _get_vm(self, key: str) -> tuple[str, VmRef | None]:
        _, namespace, name = split_key(key)
        return key, await self._driver(key).get_vm(namespace, name)

    async def _look(self) -> set[str]:
        """Read what changed; the VM keys with a launcher pod on the node."""
        hosted = await launcher_vms(self.api, self.node, await self.virt.drivers())
        if self._verify:
            self._take_whole_cluster(await self.virt.list_vms())
        keys = (hosted | self.seen | set(self.ops) | set(self.waiting)) - (self.final - hosted)
        looks = await asyncio.gather(*(self._get_vm(k) for k in sorted(keys)))
        for key, vm in looks:
            if vm is None:
                self.vms.pop(key, None)
            else:
                self.vms[key] = vm
        followed = list(self.ops.items())
        fresh = await asyncio.gather(*(self._driver(k).refresh(op) for k, op in followed))
        self.ops.update(zip((key for key, _ in followed), fresh, strict=True))
        for key, ops in list(self.waiting.items()):
            looked = await asyncio.gather(*map(self._driver(key).refresh, ops))
            left = [o for o in looked if not o.finished]
            if left:
                self.waiting[key] = tuple(left)
            else:
                del self.waiting[key]
        return hosted

    async def _start(self, vm: VmRef) -> None:
        """Follow the VM's unfinished migration if it has one, wait for its other operations,
        or start ours (as its driver moves a VM: an Evict, a migration, an eviction)."""
        driver = self.virt.driver(vm.virt)
        try:
            found = await driver.list_ops(vm.namespace)
        except ClusterError as err:
            self.reporter.status(f"cannot read the operations of {vm.key}, retrying: {err}")
            return  # never create blind: the webhook would refuse a second one anyway
        follow, wait = existing_operation(vm.name, found)
        if follow is not None:
            self.ops[vm.key] = follow
            self.reporter.line(
                f"vm {vm.key}: following its unfinished {follow.kind} {follow.name} "
                f"({follow.type}, {follow.state()}) instead of creating another"
            )
        elif wait:
            self.waiting[vm.key] = wait
        else:
            try:
                self.ops[vm.key] = await driver.move(vm, self.wall(), self.node, self.force)
            except (ClusterError, VmopsError) as err:
                self.ops[vm.key] = OpRef(
                    vm.namespace, "", vm.name, "Failed", "NotCreated", str(err)
                )

    def _plan(self, hosted: set[str]) -> DrainStep:
        step = plan_vm_drain(
            self.node,
            self.vms.values(),
            self.ops,
            self.seen,
            self.parallel,
            hosted=hosted,
            waiting=self.waiting,
        )
        self.seen.update(p.vm for p in step.progress)
        self.final = {p.vm for p in step.progress if p.stage in FINAL_STAGES}
        return step

    def _report(self, step: DrainStep, started: float) -> None:
        for p in step.progress:
            text = p.describe(self.node)
            if self.shown.get(p.vm) != text:
                self.shown[p.vm] = text
                self.reporter.line(text)
        self.reporter.status(
            f"node {self.node}: {step.summary()}  [{self.clock() - started:.0f} s]"
        )

    async def run(self, deadline: float, poll: float) -> tuple[DrainStep, bool]:
        """Evict until nothing is left on or arriving at the node (checked by a look at the
        whole cluster) or the deadline; (last step, timed out)."""
        started = self.clock()
        trouble = ""
        step: DrainStep | None = None
        while True:
            try:
                verifying = self._verify
                hosted = await self._look()
            except ClusterError as err:
                if str(err) != trouble:
                    self.reporter.line(f"cannot read the cluster, retrying: {err}")
                    trouble = str(err)
            else:
                trouble = ""
                first = step is None
                step = self._plan(hosted)
                if first:
                    names = ", ".join(p.vm for p in step.progress) or "none"
                    self.reporter.line(f"node {self.node}: {len(step.progress)} VMs: {names}")
                for vm in step.start:
                    await self._start(vm)
                self._report(step, started)
                if step.done and verifying:
                    return step, False
                self._verify = step.done  # done by the selective look: check the whole cluster
                if self._verify:
                    continue
            if self.clock() >= deadline:
                if step is None:
                    raise VmopsError(
                        f"cannot read the VMs of {self.node} within the timeout ({trouble}); "
                        f"{self.node} stays cordoned and guarded"
                    )
                return step, True
            await asyncio.sleep(poll)


async def drain_pods(
    api: ClusterApi,
    node: str,
    deadline: float,
    evict_unmanaged: bool,
    reporter: Reporter,
    poll: float,
    clock: Clock,
) -> PodDrain:
    """Evict the pods left on `node` through the Eviction API, retrying PDB refusals (429)
    with backoff until they are gone or the deadline."""
    pods = await api.list_node_pods(node)
    actions = {pod_key(p): classify_pod(p, evict_unmanaged) for p in pods}
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
            except NotFound:
                why = ""  # gone already: as good as evicted
            except ClusterError as err:
                why = str(err)
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
