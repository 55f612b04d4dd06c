"""The Kubernetes calls of the virtualization layer: which API groups the cluster serves, and
upstream KubeVirt's objects (`kubevirt.io/v1`).

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s): the Deckhouse calls stay where they were. Objects come back
as plain dicts in the API's own shape.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import NotFound
from nodefence.agent.virt.kubevirt_objects import GROUP, KUBEVIRT_PLURAL, VERSION, VMIM_PLURAL

WHAT = {
    "virtualmachines": "KubeVirt virtual machines",
    "virtualmachineinstances": "KubeVirt virtual machine instances",
    "virtualmachineinstancemigrations": "KubeVirt migrations",
    "kubevirts": "KubeVirt resources",
}


class VirtCalls(ClientBase):
    """Discovery, and KubeVirt's VirtualMachines, instances, migrations and configuration."""

    async def served_groups(self) -> dict[str, tuple[str, ...]]:
        """The API groups the server serves (`/apis` discovery): group -> versions."""
        found = await self._call_any(
            "discover API groups",
            lambda: k8s.ApisApi(self.api_client).get_api_versions(_request_timeout=self.timeout),
        )
        return {g.name: tuple(v.version for v in g.versions or ()) for g in found.groups or ()}

    async def list_kubevirt(
        self, plural: str, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Every kubevirt.io/v1 `plural` object (of `namespace` when given; matching
        `label_selector`); empty when the CRD is absent."""
        where = f" in {namespace}" if namespace else ""
        try:
            result = await self._call_any(
                f"list {WHAT.get(plural, plural)}{where}",
                lambda: (
                    self.custom.list_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        plural,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                    if namespace
                    else self.custom.list_cluster_custom_object(
                        GROUP,
                        VERSION,
                        plural,
                        label_selector=label_selector,
                        _request_timeout=self.timeout,
                    )
                ),
            )
        except NotFound:
            return []
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def get_kubevirt(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One kubevirt.io/v1 `plural` object, or None when it (or the CRD) does not exist."""
        try:
            obj = await self._call_any(
                f"read {WHAT.get(plural, plural)} {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _request_timeout=self.timeout
                ),
            )
        except NotFound:
            return None
        found: dict[str, Any] = obj
        return found

    async def kubevirt_config(self) -> list[dict[str, Any]]:
        """The KubeVirt resources (`kubevirts`, one per cluster, in KubeVirt's namespace)."""
        return await self.list_kubevirt(KUBEVIRT_PLURAL)

    async def create_kubevirt_migration(
        self, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Create a VirtualMachineInstanceMigration; a name already taken raises
        `Conflict`. A refusal carries the server's words (KubeVirt's webhook says why: not
        migratable, another migration in flight, ...)."""
        name = body["metadata"]["name"]
        created: dict[str, Any] = await self._call_any(
            f"create KubeVirt migration {namespace}/{name}",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, VMIM_PLURAL, body, _request_timeout=self.timeout
            ),
            refusal=True,
        )
        return created
