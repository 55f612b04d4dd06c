"""The objects the simulated API server (`nodefence.hwsim.sim.apiserver`) stores, and their JSON.

Nodes and Leases are kept as records (`NodeObject`, `LeaseObject`) and shown as the API's JSON
(`node_json`, `lease_json`); VirtualMachines and FenceOperations are kept as their JSON. A
stored object is never changed in place (`with_version`: a write makes a new one). Resources
are named group/plural, as `nodefence.hwsim.sim.watches.resource_of` names a collection's.
`ApiListener` is what the harness (the invariants) hears of the writes that matter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from nodefence.agent.kube.client import HEALTH_ANNOTATION, LeaseInfo
from nodefence.agent.kube.release_client import FENCED_ANNOTATION, OUT_OF_SERVICE_KEY
from nodefence.hwsim.sim.vloop import SimProcess

NODES = "/nodes"
LEASES = "coordination.k8s.io/leases"
VMS = "virtualization.deckhouse.io/virtualmachines"
RECORDS = "nodefence.io/fenceoperations"

EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # virtual time 0 on the API server's clock


def virtual_wall(seconds: float) -> dt.datetime:
    """The API server's wall clock at virtual time `seconds`."""
    return EPOCH + dt.timedelta(seconds=seconds)


@dataclass
class NodeObject:
    """A Node as the server stores it."""

    name: str
    uid: str
    resource_version: int
    created_at: float
    internal_ip: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    tainted: bool = False  # node.kubernetes.io/out-of-service
    fenced_by: str = ""  # nodefence.io/fenced-by: the operation that tainted it
    unschedulable: bool = False
    ready: bool | None = None  # the Ready condition (None: Unknown), as the lifecycle sets it


@dataclass
class LeaseObject:
    """A coordination.k8s.io/v1 Lease as the server stores it."""

    name: str
    namespace: str
    resource_version: int
    holder: str | None = None
    renew_time: dt.datetime | None = None
    acquire_time: dt.datetime | None = None
    duration: int | None = None
    transitions: int = 0
    renewed_at: float = 0.0  # virtual time of the last renewal (kubelet Leases)
    standbys: tuple[str, ...] = ()  # the leader's named warm standbys (an annotation)
    paused: str = ""  # the pause annotation (nodefence.agent.fencing.pause)
    _info: LeaseInfo | None = None

    def info(self) -> LeaseInfo:
        """As `ClusterApi` returns it (one object per resourceVersion)."""
        cached = self._info
        if cached is not None and cached.resource_version == str(self.resource_version):
            return cached
        self._info = LeaseInfo(
            self.name,
            self.namespace,
            self.holder,
            self.renew_time,
            self.acquire_time,
            self.duration,
            self.transitions,
            str(self.resource_version),
            standbys=self.standbys,
            paused=self.paused,
        )
        return self._info


class ApiListener:
    """What the harness wants to know about writes (all no-ops here)."""

    def record_written(
        self, proc: SimProcess | None, issued: float, name: str, body: dict[str, Any]
    ) -> None:
        """A FenceOperation write (sent at virtual time `issued`) was accepted."""

    def step_issued(self, proc: SimProcess | None, verb: str, node: str) -> None:
        """A process sends an irreversible request about a Node (taint, delete)."""

    def node_cleaned(self, proc: SimProcess | None, verb: str, node: NodeObject) -> None:
        """The out-of-service taint was put on a Node (`taint`) or it was deleted (`delete`)."""

    def lease_written(
        self, proc: SimProcess | None, holder: str | None, before: str | None
    ) -> None:
        """The leader Lease was written (`before`: the holder it replaced)."""


def node_json(node: NodeObject) -> dict[str, Any]:
    """A Node as the API's JSON: what the kubelet and nodefence's writes made of it."""
    ready = {True: "True", False: "False", None: "Unknown"}[node.ready]
    annotations = {**node.annotations, HEALTH_ANNOTATION: f"{node.internal_ip}:9440"}
    if node.fenced_by:
        annotations[FENCED_ANNOTATION] = node.fenced_by
    taints = [{"key": OUT_OF_SERVICE_KEY, "effect": "NoExecute"}] if node.tainted else []
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "uid": node.uid,
            "resourceVersion": str(node.resource_version),
            "labels": dict(node.labels),
            "annotations": annotations,
        },
        # The out-of-service taint is no cordon.
        "spec": {"unschedulable": node.unschedulable, "taints": taints},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node.internal_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def with_version(obj: dict[str, Any], rv: int) -> dict[str, Any]:
    """`obj` at resourceVersion `rv`: a new top level and metadata, the rest shared. Objects
    the server stores are never changed in place (the watch history holds them)."""
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}


def lease_json(lease: LeaseObject) -> dict[str, Any]:
    """A Lease as the API's JSON."""
    renew = lease.renew_time.isoformat() if lease.renew_time is not None else None
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease.name,
            "namespace": lease.namespace,
            "resourceVersion": str(lease.resource_version),
        },
        "spec": {
            "holderIdentity": lease.holder,
            "renewTime": renew,
            "leaseDurationSeconds": lease.duration,
        },
    }
