"""The Kubernetes calls of fencing records: FenceOperation objects
(`deploy/base/crd-fenceoperations.yaml`), listed and saved as the API's JSON (their codec is
`nodefence.agent.fencing.records`).

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s).
"""

from __future__ import annotations

from typing import Any

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.node_label import NODE_LABEL, node_selector

RECORD_GROUP, RECORD_VERSION, RECORD_PLURAL = "nodefence.io", "v1alpha1", "fenceoperations"


class RecordCalls(ClientBase):
    """List and save FenceOperations."""

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
