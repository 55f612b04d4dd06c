"""`nodefence.agent.kube.client.ClusterApi` for the simulated processes, over
`nodefence.hwsim.sim.apiserver`.

Each call is a request that lands on the server after a latency, even if the caller was
cancelled, paused or killed meanwhile; its answer is read at once, unless it times out. While
the scheduler's `ApiChaos` is on, calls fail with 429 or 5xx before landing, or time out (after
the client's 5 s deadline) with the write landed or not. A process cut off from the API (a
partitioned node) gets timeouts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nodefence.agent.kube.client import ClusterApi, ClusterError, LeaseInfo, NodeInfo
from nodefence.agent.kube.release_client import AttachmentInfo
from nodefence.agent.kube.watch_client import Collection, Page, WatchStream
from nodefence.hwsim.sim.apiserver import ApiServer
from nodefence.hwsim.sim.vloop import PROCESS, SimProcess
from nodefence.hwsim.sim.watches import SimWatch, copy_json

T = TypeVar("T")


@dataclass
class ApiChaos:
    """How the API misbehaves while a chaos window is open (probabilities per call)."""

    error: float = 0.0  # 429 / 500 / 503 before the request lands
    timeout: float = 0.0  # no answer within the client's deadline
    landed: float = 0.5  # of the timeouts of a write: the share whose write landed anyway
    slow: float = 0.0  # extra latency, uniform in [0, slow] seconds


class SimClusterApi(ClusterApi):
    """`ClusterApi` for one simulated process, over the in-memory server.

    `reachable()` says whether the process's machine can reach the API server now (a
    partitioned node cannot: its calls time out).
    """

    def __init__(
        self,
        server: ApiServer,
        rng: random.Random,
        reachable: Callable[[], bool] = lambda: True,
        timeout: float = 5.0,
    ) -> None:
        # No kubernetes client: every method below is answered by the in-memory server.
        self.server = server
        self.rng = rng
        self.reachable = reachable
        self.timeout = timeout
        self.chaos = ApiChaos()
        self.chaos_until = 0.0

    async def _sim(
        self,
        what: str,
        apply: Callable[[], T],
        write: bool,
        discard: Callable[[T], None] | None = None,
    ) -> T:
        """One request (see the module doc); `discard` gets a value that was made but never
        read (its answer lost, its caller gone), as a server closes a watch nobody reads."""
        loop = self.server.loop
        rng = self.rng
        now = loop.time()
        latency = 0.002 + rng.random() * 0.02
        fails: ClusterError | None = None
        lands = True
        late = False
        if not self.reachable():
            lands, late = False, True
        elif now < self.chaos_until:
            c = self.chaos
            if c.slow:
                latency += rng.random() * c.slow
            roll = rng.random()
            if roll < c.error:
                status = rng.choice((429, 500, 503))
                fails = ClusterError(f"{what}: {status} injected", status)
                lands = False
                self.server.trace.faults[f"api-{status}"] += 1
            elif roll < c.error + c.timeout:
                late = True
                lands = write and rng.random() < c.landed
                self.server.trace.faults["api-timeout-landed" if lands else "api-timeout"] += 1
        if latency >= self.timeout:
            late = True
        fut: asyncio.Future[T] = loop.create_future()
        harness = loop.harness
        answer_at = now + self.timeout

        def land() -> None:
            # An answer in time is read at once (one step less per call): a process that
            # dies before reading it is the same as one that dies right after.
            try:
                value = apply()
            except ClusterError as refused:
                if late:
                    loop.call_at(answer_at, _settle, fut, None, refused, context=harness)
                else:
                    _settle(fut, None, refused)
                return
            if late:
                if discard is not None:
                    discard(value)
                lost = ClusterError(f"{what}: no answer within {self.timeout:g} s")
                loop.call_at(answer_at, _settle, fut, None, lost, context=harness)
            elif not _settle(fut, value, None) and discard is not None:
                discard(value)

        if lands:
            loop.call_at(now + min(2 * latency, self.timeout), land, context=harness)
        else:
            err = fails or ClusterError(f"{what}: no answer within {self.timeout:g} s")
            at = now + 2 * latency if fails is not None else answer_at
            loop.call_at(at, _settle, fut, None, err, context=harness)
        return await fut

    def _proc(self) -> SimProcess | None:
        return PROCESS.get()

    # -- the ClusterApi surface ----------------------------------------------------------------

    async def list_page(
        self, c: Collection, *, resource_version: str = "0", limit: int = 500, cont: str = ""
    ) -> Page:
        """See `ClusterApi.list_page` (one page: the simulated cluster is small)."""
        return await self._sim(f"list {c.what}", lambda: self.server.list_collection(c), False)

    async def open_watch(
        self, c: Collection, resource_version: str, *, stall_after: float = 90.0
    ) -> WatchStream:
        """See `ClusterApi.open_watch` (`nodefence.hwsim.sim.watches`)."""
        proc = self._proc()

        def opened() -> SimWatch:
            return self.server.watches.open(c, resource_version, proc, self.reachable)

        def unread(w: SimWatch) -> None:
            w.close()

        watch: SimWatch = await self._sim(f"watch {c.what}", opened, False, unread)
        return watch

    async def list_nodes(self) -> list[NodeInfo]:
        """See `ClusterApi.list_nodes`."""
        return await self._sim("list nodes", self.server.list_nodes, False)

    async def node_leases(self) -> dict[str, LeaseInfo]:
        """See `ClusterApi.node_leases`."""
        return await self._sim("list node leases", self.server.node_leases, False)

    async def get_node(self, node: str) -> NodeInfo | None:
        """See `ClusterApi.get_node`."""
        return await self._sim(f"read node {node}", lambda: self.server.get_node(node), False)

    async def node_exists(self, node: str) -> bool:
        """See `ClusterApi.node_exists`."""
        return await self._sim(f"read node {node}", lambda: node in self.server.nodes, False)

    async def annotate_node(self, node: str, key: str, value: str | None) -> None:
        """See `ClusterApi.annotate_node`."""
        await self._sim(
            f"annotate node {node}", lambda: self.server.annotate_node(node, key, value), True
        )

    async def taint_out_of_service(
        self, node: str, uid: str | None = None, operation: str = ""
    ) -> bool:
        """See `ClusterApi.taint_out_of_service` (one atomic request here)."""
        proc = self._proc()
        self.server.listener.step_issued(proc, "taint", node)
        return await self._sim(
            f"taint node {node}", lambda: self.server.taint(proc, node, uid, operation), True
        )

    # The simulation models VMs, not their pods or volumes: the release after a proven Off
    # finds nothing to free (the VMs restart once the Node is deleted, see nodefence.hwsim.sim.vms).

    async def list_node_pods(self, node: str, label_selector: str = "") -> list[dict[str, Any]]:
        """See `ClusterApi.list_node_pods` (no pods are simulated)."""
        return await self._sim(f"list pods of {node}", list, False)

    async def force_delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """See `ClusterApi.force_delete_pod`."""
        return await self._sim(f"delete pod {namespace}/{name}", lambda: False, True)

    async def list_volume_attachments(self, node: str) -> list[AttachmentInfo]:
        """See `ClusterApi.list_volume_attachments` (no volumes are simulated)."""
        return await self._sim(f"list volume attachments of {node}", list, False)

    async def delete_volume_attachment(self, name: str, uid: str) -> bool:
        """See `ClusterApi.delete_volume_attachment`."""
        return await self._sim(f"delete volume attachment {name}", lambda: False, True)

    async def volumes_attached(self, node: str) -> list[str]:
        """See `ClusterApi.volumes_attached`."""
        return await self._sim(f"read node {node}", list, False)

    async def remove_out_of_service(self, node: str, uid: str | None = None) -> bool:
        """See `ClusterApi.remove_out_of_service`."""
        proc = self._proc()
        return await self._sim(
            f"untaint node {node}", lambda: self.server.untaint(proc, node, uid), True
        )

    async def delete_node(self, node: str, uid: str | None = None) -> None:
        """See `ClusterApi.delete_node` (with `uid`: a uid precondition)."""
        proc = self._proc()
        self.server.listener.step_issued(proc, "delete", node)
        await self._sim(
            f"delete node {node}", lambda: self.server.delete_node(proc, node, uid), True
        )

    async def list_vms(self) -> list[dict[str, Any]]:
        """See `ClusterApi.list_vms`."""
        return await self._sim("list virtual machines", self.server.list_vms, False)

    async def served_groups(self) -> dict[str, tuple[str, ...]]:
        """See `ClusterApi.served_groups` (the simulation serves Deckhouse's VMs)."""
        return await self._sim("discover API groups", self.server.served_groups, False)

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        """See `ClusterApi.list_records`."""
        return await self._sim(
            "list fence operations", lambda: self.server.list_records(namespace, node), False
        )

    async def save_record(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """See `ClusterApi.save_record`."""
        proc = self._proc()
        name = (body.get("metadata") or {}).get("name")
        snapshot = copy_json(body)  # the request body as sent, whatever the caller does next
        issued = self.server.loop.time()
        return await self._sim(
            f"save fence operation {name}",
            lambda: self.server.save_record(proc, issued, namespace, snapshot),
            True,
        )

    async def node_event(
        self,
        node: str,
        uid: str,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "nodefence",
    ) -> None:
        """See `ClusterApi.node_event`."""
        await self._sim(f"create event {reason} for {node}", self._count_event, True)

    async def vm_event(
        self,
        namespace: str,
        name: str,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "nodefence",
        api_version: str = "",
    ) -> None:
        """See `ClusterApi.vm_event`."""
        await self._sim(f"create event {reason}", self._count_event, True)

    async def lease_event(
        self, namespace: str, name: str, reason: str, message: str, component: str = "nodefence"
    ) -> None:
        """See `ClusterApi.lease_event`."""
        await self._sim(f"create event {reason}", self._count_event, True)

    def _count_event(self) -> None:
        self.server.events += 1

    async def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        """See `ClusterApi.get_lease`."""
        return await self._sim(
            f"get lease {namespace}/{name}", lambda: self.server.get_lease(namespace, name), False
        )

    async def write_lease(
        self,
        namespace: str,
        name: str,
        *,
        holder: str | None,
        duration: int,
        renew: dt.datetime | None,
        acquire: dt.datetime | None,
        transitions: int,
        resource_version: str | None,
        standbys: tuple[str, ...] = (),
        paused: str = "",
    ) -> LeaseInfo:
        """See `ClusterApi.write_lease`."""
        proc = self._proc()
        return await self._sim(
            f"update lease {namespace}/{name}",
            lambda: self.server.write_lease(
                proc,
                namespace,
                name,
                holder,
                duration,
                renew,
                acquire,
                transitions,
                resource_version,
                standbys,
                paused,
            ),
            True,
        )


def _settle(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> bool:
    """Answer the caller; False when it gave up (cancelled): the request landed all the same."""
    if fut.done():
        return False
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)
    return True
