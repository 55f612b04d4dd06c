"""The Kubernetes calls that record core/v1 Events about Nodes, VMs and the leader Lease.

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s).
"""

from __future__ import annotations

import datetime as dt

from kubernetes import client as k8s

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.vms_client import VM_GROUP, VM_VERSION


class EventCalls(ClientBase):
    """One Event about a Node, a VirtualMachine or the leader Lease."""

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
