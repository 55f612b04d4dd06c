"""A stateful Kubernetes API emulator over real HTTP, and the node-side simulators that use it.

`KubeApiServer` serves an `ObjectStore` (resourceVersion, 409 conflicts, watches with history,
bookmarks and 410 Gone, merge/strategic/JSON patches, status subresources, label and field
selectors, Tables for kubectl, graceful pod deletion, dry runs) on a loopback port, for the
official `kubernetes` client and `kubectl`. `SimKubelet` and `NodeLifecycleController` act on
the store like a node's kubelet and kube-controller-manager do; so do `PodGC`, the
`TaintEvictionController` (podgc.py) and the `AttachDetachController` (attachdetach.py), which
`controllers.ControllerManager` runs with their upstream timers (or compressed ones).

    server = KubeApiServer()              # 127.0.0.1, a free port
    server.start_in_thread()              # or: await server.start() on your own loop
    server.write_kubeconfig(path)         # for kubectl and config.load_kube_config
    kubelet = SimKubelet(server.store, "node-1", lambda: machine.power_state() == "on")
    kubelet.start_in_thread()             # or: kubelet.start() as an asyncio task
    ...
    kubelet.stop_thread(); server.stop_thread()

Where the real API server and a brief disagree, this emulator follows the real server: node
`spec.taints` is an atomic list (a strategic merge patch replaces it whole), a custom resource
refuses strategic merge patch (415), a create cannot set the status of a resource with a status
subresource (except Node), a watch from a compacted resourceVersion opens and then sends an
ERROR event carrying the 410 Expired Status, a DELETE of a pod bound to a node leaves it
Terminating and returns the Pod, and a PUT without resourceVersion of a Lease or a custom
resource is 422.
"""

from nodefence.hwsim.kube.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    TooManyRequests,
    UnsupportedMediaType,
)
from nodefence.hwsim.kube.kubelet import NODE_LEASE_NAMESPACE, SimKubelet
from nodefence.hwsim.kube.lifecycle import NodeLifecycleController
from nodefence.hwsim.kube.patch import JSON_PATCH, MERGE, STRATEGIC
from nodefence.hwsim.kube.request_parsing import RequestRecord
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.server import KubeApiServer
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.tables import Column, path_column
from nodefence.hwsim.kube.watch import Watcher, WatchEvent

__all__ = [
    "JSON_PATCH",
    "MERGE",
    "NODE_LEASE_NAMESPACE",
    "STRATEGIC",
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Column",
    "Conflict",
    "Gone",
    "Invalid",
    "KubeApiServer",
    "NodeLifecycleController",
    "NotFound",
    "ObjectStore",
    "RequestRecord",
    "ResourceType",
    "SimKubelet",
    "TooManyRequests",
    "UnsupportedMediaType",
    "WatchEvent",
    "Watcher",
    "path_column",
]
