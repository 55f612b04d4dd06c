"""An in-memory Kubernetes API server for the simulation.

It keeps objects as a real one does: every write bumps a cluster-wide resourceVersion; an
update carrying a stale one is refused with 409, a missing object with 404, a create of an
existing name with 409, a label value longer than 63 characters with 422. Node Ready follows
the kubelet's Lease as the node lifecycle controller does (Unknown after 40 s without a
renewal; a write, so watches see it). Requests are applied by
`nodefence.hwsim.sim.api.SimClusterApi` when they land; the harness (kubelets, operators, the VM
controller) changes objects directly. Every write is also an event for the watches
(`nodefence.hwsim.sim.watches`), and objects are listed and watched as the API's JSON, which the
real code turns into its values (`nodefence.agent.kube.json_codec`). A stored object is never
changed in place: a write stores a new one (the watch history keeps the old), and clients get a copy
of it (one per version, `nodefence.hwsim.sim.watches.ClientCopies`). Its objects and their JSON are
`nodefence.hwsim.sim.api_objects`; `ApiListener` tells the invariants about every write that
matters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

from nodefence.agent.kube.client import (
    MAINTENANCE_LABEL,
    NODE_LEASE_NAMESPACE,
    VM_GROUP,
    VM_VERSION,
    ClusterError,
    LeaseInfo,
    NodeInfo,
)
from nodefence.agent.kube.json_codec import node_info
from nodefence.agent.kube.watch_client import Collection, Page
from nodefence.hwsim.sim.api_objects import (
    LEASES,
    NODES,
    RECORDS,
    VMS,
    ApiListener,
    LeaseObject,
    NodeObject,
    lease_json,
    node_json,
    virtual_wall,
    with_version,
)
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import SimProcess, VirtualLoop
from nodefence.hwsim.sim.watches import ClientCopies, Selector, WatchHub, resource_of

NODE_MONITOR_GRACE = 40.0
MAX_LABEL_VALUE = 63


class ApiServer:
    """The objects, their resourceVersions, and the rules a real API server enforces."""

    def __init__(self, loop: VirtualLoop, trace: Trace, rng: random.Random | None = None) -> None:
        self.loop = loop
        self.trace = trace
        # `rng`: the run's, for the watches' latencies (a fixed one for a bare server)
        self.watches = WatchHub(loop, rng or random.Random(0), trace)
        self.rv = 1
        self.nodes: dict[str, NodeObject] = {}
        self.kubelet_leases: dict[str, LeaseObject] = {}
        self.leases: dict[tuple[str, str], LeaseObject] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> name -> body
        self.record_created: dict[str, float] = {}  # record name -> virtual creation time
        self.vms: dict[str, dict[str, Any]] = {}  # "namespace/name" -> body
        self.events = 0
        self.maintenance_since: dict[str, float] = {}  # node -> labelled since (virtual time)
        self.paused_since: float | None = None  # the leader Lease carries a pause since then
        self.listener = ApiListener()
        self.copies = ClientCopies()  # what clients get of VMs and records
        self._uids = 0
        self._node_infos: dict[str, tuple[int, NodeInfo]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}  # node -> its Lease's grace ending

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _node_written(self, node: NodeObject, kind: str = "MODIFIED") -> None:
        """A write of `node`: a new resourceVersion, and an event for the watches."""
        node.resource_version = self._bump()
        self.watches.record(NODES, kind, node_json(node), node.resource_version)

    # -- what the harness does directly (kubelets, operators, controllers) --------------------

    def register_node(self, name: str, ip: str) -> NodeObject:
        """The kubelet registers its Node (a new uid when it was deleted meanwhile)."""
        node = self.nodes.get(name)
        if node is None:
            self._uids += 1
            node = NodeObject(name, f"uid-{self._uids}", 0, self.loop.time(), ip)
            self.nodes[name] = node
            self._node_written(node, "ADDED")
            self.trace.event("api", f"node {name} registered ({node.uid})")
        return node

    def renew_kubelet_lease(self, name: str) -> None:
        """The kubelet renews its Lease in kube-node-lease."""
        lease = self.kubelet_leases.get(name)
        kind = "MODIFIED"
        if lease is None:
            lease = LeaseObject(name, NODE_LEASE_NAMESPACE, 0, duration=40)
            self.kubelet_leases[name] = lease
            kind = "ADDED"
        lease.renewed_at = self.loop.time()
        lease.renew_time = virtual_wall(lease.renewed_at)
        lease.resource_version = self._bump()
        lease.holder = name
        self.watches.record(LEASES, kind, lease_json(lease), lease.resource_version)
        node = self.nodes.get(name)
        if node is not None and node.ready is not True:
            node.ready = True
            self._node_written(node)
        timer = self._expiry.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._expiry[name] = self.loop.call_at(
            lease.renewed_at + NODE_MONITOR_GRACE,
            self._lease_expired,
            name,
            context=self.loop.harness,
        )

    def _lease_expired(self, name: str) -> None:
        """The node lifecycle controller: no renewal for the grace period, Ready Unknown."""
        self._expiry.pop(name, None)
        node = self.nodes.get(name)
        if node is not None and node.ready is not None:
            node.ready = None
            self._node_written(node)

    def set_label(self, name: str, key: str, value: str | None) -> None:
        """An operator (or `nodefence maintenance`) labels a Node."""
        node = self.nodes.get(name)
        if node is None:
            return
        if value is None:
            node.labels.pop(key, None)
        else:
            node.labels[key] = value
        self._node_written(node)
        if key == MAINTENANCE_LABEL:
            if value == "true":
                self.maintenance_since.setdefault(name, self.loop.time())
            else:
                self.maintenance_since.pop(name, None)
            self.trace.event("api", f"node {name} {key}={value}")

    def set_paused(self, namespace: str, name: str, text: str) -> None:
        """An operator pauses fencing (`nodefence pause`: the Lease annotation, a new rv) or,
        with "", resumes it. `paused_since`: virtual time of the pause, None when none holds."""
        lease = self.leases.get((namespace, name))
        if lease is None or lease.paused == text:
            return
        lease.paused = text
        lease.resource_version = self._bump()
        self.paused_since = self.loop.time() if text else None
        self.trace.event("api", f"fencing {'paused' if text else 'resumed'}")

    def node_ready(self, name: str) -> bool | None:
        """The Node's Ready condition (None: Unknown, or no such Node)."""
        node = self.nodes.get(name)
        return None if node is None else node.ready

    def touch_record(self, name: str) -> bool:
        """Someone else (an operator, another controller) updates a record: a new rv."""
        for namespace, items in self.records.items():
            body = items.get(name)
            if body is not None:
                rv = self._bump()
                items[name] = body = with_version(body, rv)
                copy = self._record_copy(namespace, name, body)
                self.watches.record(RECORDS, "MODIFIED", body, rv, copy)
                return True
        return False

    def create_vm(self, key: str, body: dict[str, Any]) -> None:
        """The VM controller's VirtualMachine is created (`body` becomes the server's)."""
        rv = self._bump()
        self.vms[key] = body = with_version(body, rv)
        self.watches.record(VMS, "ADDED", body, rv, self.copies.of(f"{VMS}/{key}", body))

    def set_vm(self, key: str, phase: str, node: str | None) -> None:
        """The VM controller updates a VirtualMachine's status."""
        rv = self._bump()
        vm = {**self.vms[key], "status": {"phase": phase, "nodeName": node}}
        self.vms[key] = vm = with_version(vm, rv)
        self.watches.record(VMS, "MODIFIED", vm, rv, self.copies.of(f"{VMS}/{key}", vm))

    # -- the requests ClusterApi makes, applied when they land ---------------------------------

    def node_info(self, node: NodeObject) -> NodeInfo:
        """A Node as `ClusterApi` returns it (cached per resourceVersion)."""
        cached = self._node_infos.get(node.name)
        if cached is not None and cached[0] == node.resource_version:
            return cached[1]
        info = node_info(node_json(node))
        self._node_infos[node.name] = (node.resource_version, info)
        return info

    def list_collection(self, c: Collection) -> Page:
        """Every object of `c`, as the API's JSON, and the list's resourceVersion."""
        resource = resource_of(c)
        items: list[dict[str, Any]]
        if resource == NODES:
            items = [node_json(n) for n in self.nodes.values()]
        elif resource == LEASES and c.namespace == NODE_LEASE_NAMESPACE:
            items = [lease_json(lease) for lease in self.kubelet_leases.values()]
        elif resource == VMS:
            items = self.list_vms()
        elif resource == RECORDS and c.namespace is not None:
            items = self.list_records(c.namespace, None)
        else:
            items = []  # nothing else is simulated (pods, VolumeAttachments)
        selector = Selector(c)
        return Page([o for o in items if selector.matches(o)], str(self.rv))

    def list_nodes(self) -> list[NodeInfo]:
        return [self.node_info(n) for n in self.nodes.values()]

    def node_leases(self) -> dict[str, LeaseInfo]:
        return {name: lease.info() for name, lease in self.kubelet_leases.items()}

    def get_node(self, name: str) -> NodeInfo | None:
        node = self.nodes.get(name)
        return None if node is None else self.node_info(node)

    def annotate_node(self, name: str, key: str, value: str | None) -> None:
        node = self.nodes.get(name)
        if node is None:
            raise ClusterError(f"annotate node {name}: 404 Not Found", 404)
        if value is None:
            node.annotations.pop(key, None)
        else:
            node.annotations[key] = value
        self._node_written(node)

    def taint(
        self, proc: SimProcess | None, name: str, uid: str | None = None, operation: str = ""
    ) -> bool:
        node = self.nodes.get(name)
        if node is None or (uid is not None and node.uid != uid):
            return False  # gone, or registered again since the decision
        if operation and node.fenced_by != operation:
            node.fenced_by = operation
            self._node_written(node)
        if not node.tainted:
            node.tainted = True
            self._node_written(node)
            self.trace.event("api", f"node {name} tainted out-of-service by {_who(proc)}")
            self.listener.node_cleaned(proc, "taint", node)
        return True

    def untaint(self, proc: SimProcess | None, name: str, uid: str | None = None) -> bool:
        node = self.nodes.get(name)
        if node is None or (uid is not None and node.uid != uid):
            return False
        if node.tainted or node.fenced_by:
            node.tainted, node.fenced_by = False, ""
            self._node_written(node)
            self.trace.event("api", f"node {name} out-of-service taint removed by {_who(proc)}")
        return True

    def delete_node(self, proc: SimProcess | None, name: str, uid: str | None = None) -> None:
        node = self.nodes.get(name)
        if node is None or (uid is not None and node.uid != uid):
            return  # 404, or the uid precondition failed (409): the object decided on is gone
        del self.nodes[name]
        self._node_infos.pop(name, None)
        node.resource_version = self._bump()
        self.watches.record(NODES, "DELETED", node_json(node), node.resource_version)
        lease = self.kubelet_leases.pop(name, None)  # garbage-collected with its Node
        if lease is not None:
            lease.resource_version = self._bump()
            self.watches.record(LEASES, "DELETED", lease_json(lease), lease.resource_version)
        timer = self._expiry.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.trace.event("api", f"node {name} deleted by {_who(proc)}")
        self.listener.node_cleaned(proc, "delete", node)

    def list_vms(self) -> list[dict[str, Any]]:
        return [self.copies.of(f"{VMS}/{key}", vm) for key, vm in self.vms.items()]

    def served_groups(self) -> dict[str, tuple[str, ...]]:
        return {
            VM_GROUP: (VM_VERSION,),
            "coordination.k8s.io": ("v1",),
            "nodefence.io": ("v1alpha1",),
        }

    def list_records(self, namespace: str, node: str | None) -> list[dict[str, Any]]:
        items = self.records.get(namespace, {}).items()
        return [
            self._record_copy(namespace, name, r)
            for name, r in items
            if node is None or r["metadata"].get("labels", {}).get("nodefence.io/node") == node
        ]

    def save_record(
        self, proc: SimProcess | None, issued: float, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Create or update a FenceOperation; `body` becomes the server's (the caller hands
        over a copy of its own); the answer is a copy for the caller."""
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ClusterError("save fence operation: 422 metadata.name is required", 422)
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
                raise ClusterError(
                    f"save fence operation {name}: 422 label {key}: must be no more than"
                    f" {MAX_LABEL_VALUE} characters",
                    422,
                )
        items = self.records.setdefault(namespace, {})
        current = items.get(name)
        rv = meta.get("resourceVersion")
        if rv:
            if current is None:
                raise ClusterError(f"update fence operation {name}: 404 Not Found", 404)
            if current["metadata"]["resourceVersion"] != rv:
                raise ClusterError(f"update fence operation {name}: 409 Conflict", 409)
        elif current is not None:
            raise ClusterError(f"create fence operation {name}: 409 AlreadyExists", 409)
        rv = self._bump()
        stored = with_version(body, rv)
        if current is None:
            self.record_created[name] = self.loop.time()
        items[name] = stored
        answer = self._record_copy(namespace, name, stored)
        self.watches.record(RECORDS, "ADDED" if current is None else "MODIFIED", stored, rv, answer)
        self.listener.record_written(proc, issued, name, stored)
        return answer

    def _record_copy(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        copy: dict[str, Any] = self.copies.of(f"{RECORDS}/{namespace}/{name}", body)
        return copy

    def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        if namespace == NODE_LEASE_NAMESPACE:
            kubelet = self.kubelet_leases.get(name)
            return None if kubelet is None else kubelet.info()
        lease = self.leases.get((namespace, name))
        return None if lease is None else lease.info()

    def write_lease(
        self,
        proc: SimProcess | None,
        namespace: str,
        name: str,
        holder: str | None,
        duration: int,
        renew: dt.datetime | None,
        acquire: dt.datetime | None,
        transitions: int,
        resource_version: str | None,
        standbys: tuple[str, ...] = (),
        paused: str = "",
    ) -> LeaseInfo:
        key = (namespace, name)
        current = self.leases.get(key)
        if resource_version is None:
            if current is not None:
                raise ClusterError(f"create lease {namespace}/{name}: 409 AlreadyExists", 409)
        elif current is None:
            raise ClusterError(f"update lease {namespace}/{name}: 404 Not Found", 404)
        elif str(current.resource_version) != resource_version:
            raise ClusterError(f"update lease {namespace}/{name}: 409 Conflict", 409)
        before = current.holder if current is not None else None
        lease = LeaseObject(
            name,
            namespace,
            self._bump(),
            holder,
            renew,
            acquire,
            duration,
            transitions,
            standbys=standbys,
            paused=paused,
        )
        self.leases[key] = lease
        if holder != before:
            self.trace.event("lease", f"holder {before or '-'} -> {holder or '-'}")
        self.listener.lease_written(proc, holder, before)
        return lease.info()


def _who(proc: SimProcess | None) -> str:
    return proc.name if proc is not None else "harness"
