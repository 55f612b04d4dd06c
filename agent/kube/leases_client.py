"""The Kubernetes calls of leader election: the leader Lease read, written and annotated.

A mixin of `nodefence.agent.kube.client.ClusterApi` (the deadline-bounded call is
`nodefence.agent.kube.base_client`'s).
"""

from __future__ import annotations

import datetime as dt

from kubernetes import client as k8s

from nodefence.agent.fencing.pause import PAUSE_ANNOTATION
from nodefence.agent.kube.base_client import ClientBase
from nodefence.agent.kube.errors import NotFound
from nodefence.agent.kube.json_codec import lease_info
from nodefence.agent.kube.types import STANDBYS_ANNOTATION, LeaseInfo


class LeaseCalls(ClientBase):
    """Read, create or replace, and annotate one Lease."""

    async def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        """The Lease, or None when it does not exist."""
        try:
            obj = await self._call_json(
                f"get lease {namespace}/{name}",
                lambda: self.coordination.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self.timeout
                ),
            )
        except NotFound:
            return None
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
        """Create (resource_version None) or replace the Lease; a stale one raises Conflict.
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
