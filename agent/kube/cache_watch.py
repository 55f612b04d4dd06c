"""The leader's view of the cluster: Nodes, kubelet Leases, VMs, FenceOperations and
VolumeAttachments, each kept by an informer (`nodefence.agent.kube.informer_loop`): one list, then a
watch.

Decisions read it (`ClusterReads`, which `nodefence.agent.kube.client.ClusterApi` also satisfies, so
the same code reads either); until a collection's first list is in, reads go to the API server.
What an irreversible step must know fresh it still reads from the API itself (the Node and
its kubelet Lease right before the first power-off, the BMC's power state before cleanup, an
operation's records before it is adopted). The fencing records this leader writes are written
through (`record_saved`), so its own resume never reads an older copy of its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nodefence.agent.kube.client import (
    NODE_LEASE_NAMESPACE,
    RECORD_GROUP,
    RECORD_PLURAL,
    RECORD_VERSION,
    VM_GROUP,
    VM_PLURAL,
    VM_VERSION,
    LeaseInfo,
    NodeInfo,
)
from nodefence.agent.kube.informer_loop import (
    Informer,
    Kind,
    OnChange,
    Source,
    namespaced_name,
    object_name,
)
from nodefence.agent.kube.json_codec import attachment_info, lease_info, node_info
from nodefence.agent.kube.release_client import AttachmentInfo
from nodefence.agent.kube.watch_client import Collection

NODES: Kind[NodeInfo] = Kind(Collection("nodes", "", "v1", "nodes"), node_info)
NODE_LEASES: Kind[LeaseInfo] = Kind(
    Collection("node leases", "coordination.k8s.io", "v1", "leases", NODE_LEASE_NAMESPACE),
    lease_info,
)


def _plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj)


VMS: Kind[dict[str, Any]] = Kind(
    Collection("virtual machines", VM_GROUP, VM_VERSION, VM_PLURAL, optional=True),
    _plain,
    namespaced_name,
)
ATTACHMENTS: Kind[tuple[str, AttachmentInfo]] = Kind(
    Collection("volume attachments", "storage.k8s.io", "v1", "volumeattachments"),
    attachment_info,
)


def records_kind(namespace: str, label_selector: str = "") -> Kind[dict[str, Any]]:
    """The FenceOperations of `namespace` (narrowed by `label_selector`)."""
    c = Collection(
        "fence operations",
        RECORD_GROUP,
        RECORD_VERSION,
        RECORD_PLURAL,
        namespace,
        label_selector=label_selector,
        optional=True,  # the CRD not installed yet: no records (storing them fails loudly)
    )
    return Kind(c, _plain, object_name)


class ClusterReads(Protocol):
    """The reads decisions make; answered from caches or by the API server."""

    async def list_nodes(self) -> list[NodeInfo]:
        """Every Node."""
        ...

    async def list_vms(self) -> list[dict[str, Any]]:
        """Every VirtualMachine (empty when the CRD is absent)."""
        ...

    async def list_volume_attachments(self, node: str) -> list[AttachmentInfo]:
        """The VolumeAttachments of `node`."""
        ...

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        """The FenceOperations of `namespace`."""
        ...


class ApiReads(ClusterReads, Source, Protocol):
    """An API client that can also be a cache's source (`ClusterApi`, `SimClusterApi`)."""


class KubeCache:
    """The leader's informers (see the module doc); run `run()` while leading. `records`:
    also the FenceOperations of `namespace` (a leader that fences resumes from them)."""

    def __init__(
        self,
        api: ApiReads,
        namespace: str,
        *,
        clock: Callable[[], float],
        on_nodes: OnChange[NodeInfo] | None = None,
        on_leases: OnChange[LeaseInfo] | None = None,
        records: bool = True,
        stall_after: float = 90.0,
    ) -> None:
        self.api = api
        self.namespace = namespace

        def informer(kind: Kind[Any], on_change: OnChange[Any] | None = None) -> Informer[Any]:
            return Informer(api, kind, clock=clock, on_change=on_change, stall_after=stall_after)

        self.nodes: Informer[NodeInfo] = informer(NODES, on_nodes)
        self.leases: Informer[LeaseInfo] = informer(NODE_LEASES, on_leases)
        self.vms: Informer[dict[str, Any]] = informer(VMS)
        self.records: Informer[dict[str, Any]] = informer(records_kind(namespace))
        self.attachments: Informer[tuple[str, AttachmentInfo]] = informer(ATTACHMENTS)
        # Without a fence executor (detection only) nothing reads the records.
        self.all: tuple[Informer[Any], ...] = (
            self.nodes,
            self.leases,
            self.vms,
            self.attachments,
            *((self.records,) if records else ()),
        )

    async def run(self) -> None:
        """Every informer, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for inf in self.all:
                tg.create_task(inf.run(), name=f"informer {inf.what}")

    async def wait_synced(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every first list; whether they are all in."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for inf in self.all:
                    await inf.synced.wait()
        return all(inf.synced.is_set() for inf in self.all)

    # -- ClusterReads ----------------------------------------------------------------------------

    async def list_nodes(self) -> list[NodeInfo]:
        """See `ClusterReads.list_nodes`."""
        if not self.nodes.synced.is_set():
            return await self.api.list_nodes()
        return list(self.nodes.items().values())

    async def list_vms(self) -> list[dict[str, Any]]:
        """See `ClusterReads.list_vms`."""
        if not self.vms.synced.is_set():
            return await self.api.list_vms()
        return list(self.vms.items().values())

    async def list_volume_attachments(self, node: str) -> list[AttachmentInfo]:
        """See `ClusterReads.list_volume_attachments`."""
        if not self.attachments.synced.is_set():
            return await self.api.list_volume_attachments(node)
        return [va for on, va in self.attachments.items().values() if on == node]

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        """See `ClusterReads.list_records` (every record of the namespace; `node` and other
        namespaces go to the API server)."""
        if namespace != self.namespace or node is not None or not self.records.synced.is_set():
            return await self.api.list_records(namespace, node)
        return list(self.records.items().values())

    def record_saved(self, body: Mapping[str, Any]) -> None:
        """This leader stored `body` (the API's answer): the cache holds at least that."""
        self.records.offer(body)
