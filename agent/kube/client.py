"""nodefence's client of the Kubernetes API (official `kubernetes` client), the only one.

`ClusterApi` is the one client the agent holds: the calls of each kind of object live in a
mixin module of their own (`cluster_nodes`, `cluster_leases`, `cluster_release` and
`cluster_pods`, `cluster_records`, `cluster_events`, `cluster_vms`, `cluster_virt`,
`cluster_keys`, `cluster_watch`), each on `nodefence.agent.kube.base_client.ClientBase`: the client
is blocking, so every call runs in a worker thread under a deadline (a hung API server never
holds up the leader's loop), and every failure is raised there as one of the typed errors of
`nodefence.agent.kube.errors` (`NotFound`, `Conflict`, `TooManyRequests`, ...). Objects come back as
small frozen dataclasses or as the API's JSON, never as client models.
"""

from __future__ import annotations

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from nodefence.agent.kube.errors import (
    ClusterError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    TooManyRequests,
)
from nodefence.agent.kube.events_client import EventCalls
from nodefence.agent.kube.keys_client import KeyCalls
from nodefence.agent.kube.leases_client import LeaseCalls
from nodefence.agent.kube.nodes_client import NodeCalls
from nodefence.agent.kube.records_client import (
    RECORD_GROUP,
    RECORD_PLURAL,
    RECORD_VERSION,
    RecordCalls,
)
from nodefence.agent.kube.release_client import (
    OUT_OF_SERVICE_TAINT,
    AttachmentInfo,
    PodInfo,
    ReleaseCalls,
)
from nodefence.agent.kube.types import (
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
from nodefence.agent.kube.virt_client import VirtCalls
from nodefence.agent.kube.vms_client import (
    VM_GROUP,
    VM_PLURAL,
    VM_VERSION,
    VMOP_PLURAL,
    VmCalls,
    VmPlacement,
)
from nodefence.agent.kube.watch_client import WatchCalls

__all__ = [
    "DECKHOUSE_FENCING_LABEL",
    "DECKHOUSE_FENCING_MODE_LABEL",
    "DECKHOUSE_MAINTENANCE_ANNOTATIONS",
    "HEALTH_ANNOTATION",
    "MAINTENANCE_CORDON_ANNOTATION",
    "MAINTENANCE_LABEL",
    "NODE_LEASE_NAMESPACE",
    "OUT_OF_SERVICE_TAINT",
    "RECORD_GROUP",
    "RECORD_PLURAL",
    "RECORD_VERSION",
    "STANDBYS_ANNOTATION",
    "VMOP_PLURAL",
    "VM_GROUP",
    "VM_PLURAL",
    "VM_VERSION",
    "AttachmentInfo",
    "ClusterApi",
    "ClusterError",
    "Conflict",
    "Forbidden",
    "Gone",
    "LeaseInfo",
    "NodeInfo",
    "NotFound",
    "PodInfo",
    "TooManyRequests",
    "VmPlacement",
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


class ClusterApi(
    NodeCalls,
    LeaseCalls,
    ReleaseCalls,
    RecordCalls,
    EventCalls,
    VmCalls,
    VirtCalls,
    KeyCalls,
    WatchCalls,
):
    """Async, deadline-bounded access to the objects nodefence reads and writes."""
