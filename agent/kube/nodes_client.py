"""The Kubernetes calls about Node objects and the kubelets' Leases: reads, labels,
annotations, cordon, deletion.

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s). Nodes and Leases come back as `NodeInfo` and `LeaseInfo`
(`nodefence.agent.kube.json_codec`).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import Conflict, NotFound
from nodefence.agent.kube.json_codec import lease_info, node_info
from nodefence.agent.kube.types import NODE_LEASE_NAMESPACE, LeaseInfo, NodeInfo


class NodeCalls(ClientBase):
    """Nodes: list, read, label, annotate, cordon, patch, delete; the kubelets' Leases."""

    async def list_nodes(self) -> list[NodeInfo]:
        """Every Node (one full read: the leader keeps its Nodes in
        `nodefence.agent.kube.cache_watch`)."""
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
        except NotFound:
            return
        except Conflict:
            if uid is None:
                raise
            # the uid precondition failed: the object we decided on is gone

    async def node_exists(self, node: str) -> bool:
        """Whether the Node object still exists."""
        try:
            await self._call(
                f"read node {node}",
                lambda: self.core.read_node(node, _request_timeout=self.timeout),
            )
        except NotFound:
            return False
        return True

    async def get_node(self, node: str) -> NodeInfo | None:
        """The Node, or None when it does not exist."""
        try:
            obj = await self._call_json(
                f"read node {node}",
                lambda: self.core.read_node(
                    node, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        except NotFound:
            return None
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
