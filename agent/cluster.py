"""The only module that speaks to the Kubernetes API (official `kubernetes` client).

The client is blocking; every call runs in a worker thread under a deadline, so a hung API
server can never hold up the leader's loop. Objects come back as small frozen dataclasses,
so the rest of the agent never handles client models.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from agent.cluster_error import ClusterError, refusal_words
from agent.cluster_keys import KeyCalls
from agent.cluster_release import FENCED_ANNOTATION, ReleaseCalls
from agent.cluster_types import (
    DECKHOUSE_FENCING_LABEL,
    DECKHOUSE_FENCING_MODE_LABEL,
    DECKHOUSE_MAINTENANCE_ANNOTATIONS,
    HEALTH_ANNOTATION,
    MAINTENANCE_CORDON_ANNOTATION,
    MAINTENANCE_LABEL,
    NODE_LEASE_NAMESPACE,
    STANDBYS_ANNOTATION,
    LeaseInfo,
    NodeInfo,
)
from agent.cluster_virt import VirtCalls
from agent.cluster_watch import WatchCalls
from agent.kube_json import lease_info, node_info
from agent.node_label import NODE_LABEL, node_selector
from agent.pause import PAUSE_ANNOTATION

T = TypeVar("T")
VM_GROUP, VM_VERSION, VM_PLURAL = "virtualization.deckhouse.io", "v1alpha2", "virtualmachines"
RECORD_GROUP, RECORD_VERSION, RECORD_PLURAL = "nodefence.io", "v1alpha1", "fenceoperations"
OUT_OF_SERVICE_TAINT = {
    "key": "node.kubernetes.io/out-of-service",
    "value": "nodeshutdown",
    "effect": "NoExecute",
}
VMOP_PLURAL = "virtualmachineoperations"


__all__ = [
    "DECKHOUSE_FENCING_LABEL",
    "DECKHOUSE_FENCING_MODE_LABEL",
    "DECKHOUSE_MAINTENANCE_ANNOTATIONS",
    "HEALTH_ANNOTATION",
    "MAINTENANCE_CORDON_ANNOTATION",
    "MAINTENANCE_LABEL",
    "NODE_LEASE_NAMESPACE",
    "STANDBYS_ANNOTATION",
    "ClusterApi",
    "ClusterError",
    "LeaseInfo",
    "NodeInfo",
    "load_api_client",
]


def load_api_client(kubeconfig: str | None, user_agent: str = "") -> k8s.ApiClient:
    """An API client from a kubeconfig file, or the in-cluster service account when None;
    `user_agent` (when given) names it to the API server (audit logs, request metrics)."""
    if kubeconfig:
        client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    else:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        client = k8s.ApiClient()
    if user_agent:
        client.user_agent = user_agent
    return client


class ClusterApi(ReleaseCalls, VirtCalls, KeyCalls, WatchCalls):
    """Async, deadline-bounded access to the objects nodefence reads and writes."""

    # -- nodes and their kubelets ------------------------------------------------------------

    async def list_nodes(self) -> list[NodeInfo]:
        """Every Node (one full read: the leader keeps its Nodes in `agent.kube_cache`)."""
        nodes = await self._call_json(
            "list nodes",
            lambda: self.core.list_node(_preload_content=False, _request_timeout=self.timeout),
        )
        return [node_info(n) for n in nodes.get("items") or []]

    async def node_leases(self) -> dict[str, LeaseInfo]:
        """The kubelets' Leases in kube-node-lease, by node name."""
        leases = await self._call_json(
            "list node leases",
            lambda: self.coordination.list_namespaced_lease(
                NODE_LEASE_NAMESPACE, _preload_content=False, _request_timeout=self.timeout
            ),
        )
        infos = [lease_info(obj) for obj in leases.get("items") or []]
        return {info.name: info for info in infos}

    async def annotate_node(self, node: str, key: str, value: str | None) -> None:
        """Set (or with None remove) one annotation on a Node (merge patch)."""
        body = {"metadata": {"annotations": {key: value}}}
        await self._call(
            f"annotate node {node}",
            lambda: self.core.patch_node(node, body, _request_timeout=self.timeout),
        )

    async def taint_out_of_service(
        self, node: str, uid: str | None = None, operation: str = ""
    ) -> bool:
        """Put the out-of-service NoExecute taint on the Node (idempotent) and, with
        `operation`, nodefence's mark naming it. False when the Node no longer exists, or
        (with `uid`) is another object than the one decided dead (`patch_node_taints`)."""

        def tainted(obj: Any) -> dict[str, Any] | None:
            taints = list(obj.spec.taints or []) if obj.spec else []
            marked = not operation or (obj.metadata.annotations or {}).get(FENCED_ANNOTATION)
            if marked and any(
                t.key == OUT_OF_SERVICE_TAINT["key"] and t.effect == "NoExecute" for t in taints
            ):
                return None
            taints = [t for t in taints if t.key != OUT_OF_SERVICE_TAINT["key"]]
            meta: dict[str, Any] = {"resourceVersion": obj.metadata.resource_version}
            if operation:
                meta["annotations"] = {FENCED_ANNOTATION: operation}
            return {
                "metadata": meta,
                "spec": {
                    "taints": [
                        *({"key": t.key, "value": t.value, "effect": t.effect} for t in taints),
                        OUT_OF_SERVICE_TAINT,
                    ]
                },
            }

        return await self.patch_node_taints(f"taint node {node}", node, uid, tainted)

    async def delete_node(self, node: str, uid: str | None = None) -> None:
        """Delete the Node (with `uid`: only that object, a uid precondition); an already
        deleted Node, or one re-registered since (another uid), is fine: ours is gone."""
        options = (
            k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
            if uid is not None
            else None
        )
        try:
            await self._call(
                f"delete node {node}",
                lambda: self.core.delete_node(node, body=options, _request_timeout=self.timeout),
            )
        except ClusterError as err:
            if err.status == 409 and uid is not None:
                return  # the uid precondition failed: the object we decided on is gone
            if err.status != 404:
                raise

    async def node_exists(self, node: str) -> bool:
        """Whether the Node object still exists."""
        try:
            await self._call(
                f"read node {node}",
                lambda: self.core.read_node(node, _request_timeout=self.timeout),
            )
        except ClusterError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def _list_virtualization(self, plural: str, what: str) -> list[dict[str, Any]]:
        """Every object of a virtualization.deckhouse.io resource, cluster-wide (an empty
        list when the CRD is absent)."""
        try:
            result = await self._call_any(
                f"list {what}",
                lambda: self.custom.list_cluster_custom_object(
                    VM_GROUP, VM_VERSION, plural, _request_timeout=self.timeout
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return []
            raise
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def list_vms(self) -> list[dict[str, Any]]:
        """Every VirtualMachine in the cluster (an empty list when the CRD is absent)."""
        return await self._list_virtualization(VM_PLURAL, "virtual machines")

    # -- fencing records ---------------------------------------------------------------------

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        """Every FenceOperation in `namespace` (only those of `node`, when given)."""
        selector = node_selector(NODE_LABEL, node) if node else ""
        result = await self._call_any(
            "list fence operations",
            lambda: self.custom.list_namespaced_custom_object(
                RECORD_GROUP,
                RECORD_VERSION,
                namespace,
                RECORD_PLURAL,
                label_selector=selector,
                _request_timeout=self.timeout,
            ),
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def save_record(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create (no resourceVersion) or replace a FenceOperation; 409 on a stale write."""
        name = body["metadata"]["name"]
        obj: Any
        if body["metadata"].get("resourceVersion"):
            obj = await self._call_any(
                f"update fence operation {name}",
                lambda: self.custom.replace_namespaced_custom_object(
                    RECORD_GROUP,
                    RECORD_VERSION,
                    namespace,
                    RECORD_PLURAL,
                    name,
                    body,
                    _request_timeout=self.timeout,
                ),
            )
        else:
            obj = await self._call_any(
                f"create fence operation {name}",
                lambda: self.custom.create_namespaced_custom_object(
                    RECORD_GROUP,
                    RECORD_VERSION,
                    namespace,
                    RECORD_PLURAL,
                    body,
                    _request_timeout=self.timeout,
                ),
            )
        saved: dict[str, Any] = obj
        return saved

    # -- events ------------------------------------------------------------------------------

    async def node_event(
        self,
        node: str,
        uid: str,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "nodefence",
    ) -> None:
        """Record a core/v1 Event about a Node (in the default namespace, as kubelets do)."""
        about = k8s.V1ObjectReference(kind="Node", name=node, uid=uid or None, api_version="v1")
        await self._event("default", node, about, reason, message, warning, component, node)

    async def vm_event(
        self,
        namespace: str,
        name: str,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "nodefence",
        api_version: str = f"{VM_GROUP}/{VM_VERSION}",
    ) -> None:
        """An Event about a VirtualMachine (its recovery after a fence); `api_version`: whose
        VirtualMachine (KubeVirt's: `kubevirt.io/v1`)."""
        about = k8s.V1ObjectReference(
            kind="VirtualMachine",
            name=name,
            namespace=namespace,
            api_version=api_version,
        )
        what = f"VM {namespace}/{name}"
        await self._event(namespace, name, about, reason, message, warning, component, what)

    async def lease_event(
        self, namespace: str, name: str, reason: str, message: str, component: str = "nodefence"
    ) -> None:
        """A Warning Event about the leader Lease: cluster-wide alerts (storm, broker down)."""
        about = k8s.V1ObjectReference(
            kind="Lease", name=name, namespace=namespace, api_version="coordination.k8s.io/v1"
        )
        await self._event(namespace, name, about, reason, message, True, component, "")

    async def _event(
        self,
        namespace: str,
        name: str,
        about: k8s.V1ObjectReference,
        reason: str,
        message: str,
        warning: bool,
        component: str,
        what: str,
    ) -> None:
        """Create one core/v1 Event in `namespace` about `about` (named `name`)."""
        now = dt.datetime.now(dt.UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{name}.nodefence."),
            involved_object=about,
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=k8s.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._call(
            f"create event {reason}" + (f" for {what}" if what else ""),
            lambda: self.core.create_namespaced_event(
                namespace, event, _request_timeout=self.timeout
            ),
        )

    # -- leases for leader election ----------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        """The Lease, or None when it does not exist."""
        try:
            obj = await self._call_json(
                f"get lease {namespace}/{name}",
                lambda: self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return None
            raise
        return lease_info(obj)

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
        """Create (resource_version None) or replace the Lease; a 409 raises ClusterError.
        `standbys` names the warm standbys (an annotation; none: no annotation); `paused` is
        the pause annotation as read with `resource_version` (kept: a replace would drop it)."""
        kept = {STANDBYS_ANNOTATION: ",".join(standbys)} if standbys else {}
        if paused:
            kept[PAUSE_ANNOTATION] = paused
        annotations = kept or None
        body = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=namespace,
                resource_version=resource_version,
                annotations=annotations,
            ),
            spec=k8s.V1LeaseSpec(
                holder_identity=holder,
                lease_duration_seconds=duration,
                renew_time=renew,
                acquire_time=acquire,
                lease_transitions=transitions,
            ),
        )
        if resource_version is None:
            obj = await self._call_json(
                f"create lease {namespace}/{name}",
                lambda: self.coordination.create_namespaced_lease(
                    namespace, body, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        else:
            obj = await self._call_json(
                f"update lease {namespace}/{name}",
                lambda: self.coordination.replace_namespaced_lease(
                    name, namespace, body, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        return lease_info(obj)

    async def annotate_lease(self, namespace: str, name: str, key: str, value: str | None) -> None:
        """Set (or with None remove) one annotation of a Lease (merge patch; the holder's next
        renewal, based on an older resourceVersion, gets a 409 and reads it again)."""
        body = {"metadata": {"annotations": {key: value}}}
        await self._call(
            f"annotate lease {namespace}/{name}",
            lambda: self.coordination.patch_namespaced_lease(
                name, namespace, body, _request_timeout=self.timeout
            ),
        )

    # -- maintenance and VM migration --------------------------------------------------------

    async def get_node(self, node: str) -> NodeInfo | None:
        """The Node, or None when it does not exist."""
        try:
            obj = await self._call_json(
                f"read node {node}",
                lambda: self.core.read_node(
                    node, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return None
            raise
        return node_info(obj)

    async def label_node(self, node: str, key: str, value: str | None) -> None:
        """Set (or with None remove) one label on a Node (merge patch)."""
        body = {"metadata": {"labels": {key: value}}}
        await self._call(
            f"label node {node}",
            lambda: self.core.patch_node(node, body, _request_timeout=self.timeout),
        )

    async def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        """Cordon (True) or uncordon (False) a Node, as `kubectl cordon` does."""
        body = {"spec": {"unschedulable": unschedulable or None}}
        verb = "cordon" if unschedulable else "uncordon"
        await self._call(
            f"{verb} node {node}",
            lambda: self.core.patch_node(node, body, _request_timeout=self.timeout),
        )

    async def patch_node(self, node: str, body: dict[str, Any]) -> None:
        """One merge patch of a Node: labels, annotations and cordon change together or not
        at all."""
        await self._call(
            f"patch node {node}",
            lambda: self.core.patch_node(node, body, _request_timeout=self.timeout),
        )

    async def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One VirtualMachine, or None when it (or the CRD) does not exist."""
        try:
            obj = await self._call_any(
                f"read virtual machine {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    VM_GROUP, VM_VERSION, namespace, VM_PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return None
            raise
        found: dict[str, Any] = obj
        return found

    async def list_vm_operations(
        self, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """The VirtualMachineOperations of `namespace` (every one in the cluster when None),
        matching `label_selector`; empty when the CRD is absent."""
        if namespace is None and not label_selector:
            return await self._list_virtualization(VMOP_PLURAL, "virtual machine operations")
        where = f" in {namespace}" if namespace else ""
        try:
            result = await self._call_any(
                f"list virtual machine operations{where}",
                lambda: (
                    self.custom.list_namespaced_custom_object(
                        VM_GROUP,
                        VM_VERSION,
                        namespace,
                        VMOP_PLURAL,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                    if namespace
                    else self.custom.list_cluster_custom_object(
                        VM_GROUP,
                        VM_VERSION,
                        VMOP_PLURAL,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return []
            raise
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def get_vm_operation(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One VirtualMachineOperation, or None when it does not exist."""
        try:
            obj = await self._call_any(
                f"read virtual machine operation {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    VM_GROUP,
                    VM_VERSION,
                    namespace,
                    VMOP_PLURAL,
                    name,
                    _request_timeout=self.timeout,
                ),
            )
        except ClusterError as err:
            if err.status == 404:
                return None
            raise
        found: dict[str, Any] = obj
        return found

    async def create_vm_operation(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a VirtualMachineOperation; a name already taken raises ClusterError 409. A
        refusal carries the server's words (an admission webhook says why, e.g. another
        unfinished operation of the VM)."""
        name = body["metadata"]["name"]
        what = f"create virtual machine operation {namespace}/{name}"

        def create() -> Any:
            try:
                return self.custom.create_namespaced_custom_object(
                    VM_GROUP,
                    VM_VERSION,
                    namespace,
                    VMOP_PLURAL,
                    body,
                    _request_timeout=self.timeout,
                )
            except ApiException as err:
                said = refusal_words(err.body)
                if not said:
                    raise
                raise ClusterError(
                    f"{what}: {err.status} {err.reason}: {said}", err.status
                ) from None

        obj = await self._call_any(what, create)
        created: dict[str, Any] = obj
        return created

    async def list_node_pods(self, node: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Every Pod bound to `node` (matching `label_selector`), as plain dicts in the API's
        own (camelCase) shape."""
        pods = await self._call(
            f"list pods on node {node}",
            lambda: self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                label_selector=label_selector,
                _request_timeout=self.timeout,
            ),
        )
        return self._plain(pods.items)

    async def list_pods(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        """The Pods of `namespace` matching `label_selector`, as plain dicts."""
        pods = await self._call(
            f"list pods in {namespace}",
            lambda: self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=self.timeout
            ),
        )
        return self._plain(pods.items)

    def _plain(self, objects: list[Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [
            self.api_client.sanitize_for_serialization(o)  # type: ignore[no-untyped-call]
            for o in objects
        ]
        return items

    async def evict_pod(self, namespace: str, name: str) -> str:
        """Ask the Eviction API to evict a Pod: "" when accepted, else why it was refused
        (429: a PodDisruptionBudget allows no disruption now; try again later). Other
        failures, a Pod already gone (404) among them, raise ClusterError."""

        def evict() -> str:
            body = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))
            try:
                self.core.create_namespaced_pod_eviction(
                    name, namespace, body, _request_timeout=self.timeout
                )
            except ApiException as err:
                if err.status == 429:
                    return refusal_words(err.body) or "429 Too Many Requests"
                raise
            return ""

        return await self._call(f"evict pod {namespace}/{name}", evict)
