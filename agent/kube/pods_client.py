"""The Kubernetes calls about Pods: lists (as the API's JSON) and the Eviction API.

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s). The release after a fence reads its pods typed
(`ReleaseCalls.pods_to_release`).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import TooManyRequests


class PodCalls(ClientBase):
    """List Pods of a node or a namespace; evict one."""

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
        failures, a Pod already gone (`NotFound`) among them, raise ClusterError."""
        body = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))
        try:
            await self._call(
                f"evict pod {namespace}/{name}",
                lambda: self.core.create_namespaced_pod_eviction(
                    name, namespace, body, _request_timeout=self.timeout
                ),
            )
        except TooManyRequests as refused:
            return refused.refusal or "429 Too Many Requests"
        return ""
