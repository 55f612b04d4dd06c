"""The Kubernetes calls of pinning node keys: NodeKey objects (`deploy/base/crd-nodekeys.yaml`).

A mixin of `nodefence.agent.kube.client.ClusterApi` (which provides `_call`). One NodeKey per node,
named as the node, in the fencers' namespace: what the fencers pinned on first sight. The fencers
list and create them; nothing updates one. Removing one (`kubectl -n nodefence delete nodekey
NODE`) is the operator's action that lets a node's next key be pinned (a rotation).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, TypeVar

from nodefence.agent.heartbeat.node_keys import BadKey, decode_key, encode_key, fingerprint
from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import Conflict
from nodefence.agent.kube.node_label import NODE_LABEL, node_label_value

T = TypeVar("T")
KEY_GROUP, KEY_VERSION, KEY_PLURAL = "nodefence.io", "v1alpha1", "nodekeys"

log = logging.getLogger("nodefence.keys")


def node_key_object(namespace: str, node: str, public: bytes, by: str) -> dict[str, Any]:
    """The NodeKey that pins `public` for `node`, as fencer `by` creates it."""
    return {
        "apiVersion": f"{KEY_GROUP}/{KEY_VERSION}",
        "kind": "NodeKey",
        "metadata": {
            "name": node,
            "namespace": namespace,
            "labels": {NODE_LABEL: node_label_value(node)},
        },
        "spec": {
            "nodeName": node,
            "publicKey": encode_key(public),
            "fingerprint": fingerprint(public),
            "pinnedBy": by,
            "pinnedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def pins_of(items: list[dict[str, Any]]) -> dict[str, bytes]:
    """node -> pinned public key of listed NodeKeys (a malformed one is logged and skipped:
    that node's messages are then refused, never believed under a guessed key)."""
    pins: dict[str, bytes] = {}
    for item in items:
        spec = item.get("spec") or {}
        node = spec.get("nodeName")
        name = (item.get("metadata") or {}).get("name")
        try:
            if not isinstance(node, str) or node != name:
                raise BadKey(f"spec.nodeName {node!r} is not the object's name {name!r}")
            pins[node] = decode_key(str(spec.get("publicKey") or ""))
        except BadKey as err:
            log.warning("NodeKey %s ignored: %s", name, err)
    return pins


class KeyCalls(ClientBase):
    """List and create NodeKeys."""

    async def list_node_keys(self, namespace: str) -> dict[str, bytes]:
        """Every pinned node key in `namespace` (node -> raw public key)."""
        result: Any = await self._call(
            "list node keys",
            lambda: self.custom.list_namespaced_custom_object(
                KEY_GROUP, KEY_VERSION, namespace, KEY_PLURAL, _request_timeout=self.timeout
            ),
        )
        return pins_of(list(result.get("items", [])))

    async def pin_node_key(self, namespace: str, node: str, public: bytes, by: str) -> bool:
        """Pin `public` for `node`: True when this call created the pin, False when one existed
        already (another fencer's, perhaps another key: list them again)."""
        body = node_key_object(namespace, node, public, by)
        try:
            await self._call(
                f"pin the key of node {node}",
                lambda: self.custom.create_namespaced_custom_object(
                    KEY_GROUP,
                    KEY_VERSION,
                    namespace,
                    KEY_PLURAL,
                    body,
                    _request_timeout=self.timeout,
                ),
            )
        except Conflict:
            return False
        return True
