"""The values and names nodefence's Kubernetes client hands out (re-exported by
`nodefence.agent.kube.client`).

Kept apart from the client so the pure converters (`nodefence.agent.kube.json_codec`) and the caches
can use them without importing the client.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

NODE_LEASE_NAMESPACE = "kube-node-lease"
HEALTH_ANNOTATION = "nodefence.io/health-endpoint"
# On the leader Lease: the nodes whose agents the leader named warm standbys (comma-separated).
STANDBYS_ANNOTATION = "nodefence.io/standbys"
MAINTENANCE_LABEL = "nodefence.io/maintenance"
# Set by `maintenance enter` when it cordoned the node itself: `exit` uncordons only then.
MAINTENANCE_CORDON_ANNOTATION = "nodefence.io/maintenance-cordon"
# Deckhouse node-manager's fencing: the label on nodes of a NodeGroup with spec.fencing, its
# mode, and the annotations with which its fencing leaves a node alone (maintenance, updates).
DECKHOUSE_FENCING_LABEL = "node-manager.deckhouse.io/fencing-enabled"
DECKHOUSE_FENCING_MODE_LABEL = "node-manager.deckhouse.io/fencing-mode"
DECKHOUSE_MAINTENANCE_ANNOTATIONS = (
    "node-manager.deckhouse.io/fencing-disable",
    "update.node.deckhouse.io/disruption-approved",
    "update.node.deckhouse.io/approved",
)


@dataclass(frozen=True)
class NodeInfo:
    """What the agent needs to know of a Node."""

    name: str
    uid: str
    internal_ip: str | None
    kubelet_port: int
    ready: bool | None  # None: condition Unknown or missing
    unschedulable: bool
    maintenance: bool
    health_endpoint: str | None  # "host:port" the node's agent announced
    maintenance_mark: str = ""  # the label's value: "true" (guarded off), "draining", ...
    cordoned_by_maintenance: bool = False  # `maintenance enter` made the cordon
    allocatable_cpu: str = ""  # status.allocatable quantities ("" when not reported)
    allocatable_memory: str = ""
    out_of_service: bool = False  # carries node.kubernetes.io/out-of-service
    fenced_by: str = ""  # nodefence's mark: the operation that tainted it
    deckhouse_fencing: str = ""  # Deckhouse fencing mode (Watchdog, Notify) when enabled
    deckhouse_maintenance: str = ""  # the Deckhouse annotation that disables its fencing


@dataclass(frozen=True)
class LeaseInfo:
    """A `coordination.k8s.io/v1` Lease as election and detection read it."""

    name: str
    namespace: str
    holder: str | None
    renew_time: dt.datetime | None
    acquire_time: dt.datetime | None
    duration: int | None
    transitions: int
    resource_version: str
    standbys: tuple[str, ...] = ()  # the leader Lease's STANDBYS_ANNOTATION
    paused: str = (
        ""  # the leader Lease's PAUSE_ANNOTATION (nodefence.agent.fencing.pause), "" when absent
    )
