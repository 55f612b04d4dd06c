"""`PodGC` and `TaintEvictionController`: the parts of kube-controller-manager that remove pods
of nodes that are gone or out of service.

PodGC (pkg/controller/podgc), every `period` (upstream 20 s):
- orphaned pods: a pod bound to a Node that does not exist is force-deleted (marked Failed with
  a DisruptionTarget condition, then deleted with grace 0) once the Node has been missing for
  the `quarantine` (upstream 40 s): a node re-registering in time keeps its pods;
- terminating pods on out-of-service nodes: a Terminating pod on a Node that is not Ready and
  carries the `node.kubernetes.io/out-of-service` taint is force-deleted at once;
- a Terminating pod bound to no node is force-deleted.
It never touches a Terminating pod on a node that merely stopped answering: that pod waits for
its kubelet (or for someone to force-delete it), which is why a dead node's pods stay.

The taint eviction controller (NoExecute taint manager) deletes, gracefully, every pod on a node
with a NoExecute taint it does not tolerate, at once, or `tolerationSeconds` after the taint
was first seen when it tolerates it for a while (pods get 300 s for not-ready and unreachable
from admission; `node.kubernetes.io/out-of-service` is tolerated by nobody).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nodefence.hwsim.kube.errors import ApiError, Conflict, NotFound
from nodefence.hwsim.kube.objects import timestamp, wall_clock
from nodefence.hwsim.kube.patch import STRATEGIC
from nodefence.hwsim.kube.periodic import Periodic, PeriodicController
from nodefence.hwsim.kube.pods import is_terminal, is_terminating, tolerates
from nodefence.hwsim.kube.store import ObjectStore

log = logging.getLogger(__name__)
Obj = dict[str, Any]
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def node_ready(node: Obj) -> bool:
    """The Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def has_taint_key(node: Obj, key: str) -> bool:
    """Any taint with this key (any effect), as `taints.TaintKeyExists`."""
    return any(t.get("key") == key for t in (node.get("spec") or {}).get("taints") or [])


class PodGC(PeriodicController):
    """Garbage-collects pods of deleted and out-of-service nodes (see the module doc)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        quarantine: float = 40.0,
        period: float = 20.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], Any] = wall_clock,
    ) -> None:
        self.store = store
        self.quarantine = quarantine
        self.monotonic = monotonic
        self.clock = clock
        self.deleted: list[tuple[float, str, str]] = []  # (when, namespace/name, why)
        self._missing: dict[str, float] = {}  # node name -> first seen missing
        self._loop = Periodic(self.tick, period, "pod-gc")

    def tick(self) -> None:
        """One garbage collection pass."""
        now = self.monotonic()
        nodes = {n["metadata"]["name"]: n for n in self.store.list("nodes")["items"]}
        pods = self.store.list("pods")["items"]
        for name in [n for n in self._missing if n in nodes]:
            del self._missing[name]  # registered again within the quarantine: keep its pods
        for pod in pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name and node_name not in nodes:
                self._missing.setdefault(node_name, now)
        gone = {n for n, since in self._missing.items() if now - since >= self.quarantine}
        for pod in pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name in gone:
                self._delete(pod, "PodGC: node no longer exists", condition=True)
            elif is_terminating(pod) and not is_terminal(pod):
                node = nodes.get(node_name or "")
                if not node_name:
                    self._delete(pod, "PodGC: unscheduled and terminating", condition=False)
                elif node and not node_ready(node) and has_taint_key(node, OUT_OF_SERVICE):
                    self._delete(pod, "PodGC: terminating on an out-of-service node", False)
        for name in [
            n for n in gone if not any((p.get("spec") or {}).get("nodeName") == n for p in pods)
        ]:
            self._missing.pop(name, None)

    def _delete(self, pod: Obj, why: str, condition: bool) -> None:
        meta = pod["metadata"]
        try:
            if not is_terminal(pod):
                status: Obj = {"phase": "Failed"}
                if condition:
                    status["conditions"] = [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "DeletionByPodGC",
                            "message": why,
                            "lastTransitionTime": timestamp(self.clock()),
                        }
                    ]
                self.store.patch(
                    "pods",
                    meta["name"],
                    {"status": status},
                    meta["namespace"],
                    patch_type=STRATEGIC,
                    subresource="status",
                )
            self.store.delete(
                "pods",
                meta["name"],
                meta["namespace"],
                preconditions={"uid": meta["uid"]},
                grace_period_seconds=0,
            )
        except (NotFound, Conflict):
            return
        self.deleted.append((self.monotonic(), f"{meta['namespace']}/{meta['name']}", why))
        log.info("pod-gc: deleted %s/%s: %s", meta["namespace"], meta["name"], why)


class TaintEvictionController(PeriodicController):
    """Evicts pods from nodes with NoExecute taints they do not tolerate (see the module doc)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        period: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], Any] = wall_clock,
    ) -> None:
        self.store = store
        self.monotonic = monotonic
        self.clock = clock
        self.evicted: list[tuple[float, str, str]] = []  # (when, namespace/name, taint key)
        self._seen: dict[tuple[str, str], float] = {}  # (node, taint key) -> first seen
        self._loop = Periodic(self.tick, period, "taint-eviction-controller")

    def tick(self) -> None:
        """Evict whatever is due."""
        now = self.monotonic()
        taints: dict[str, list[Obj]] = {}
        for node in self.store.list("nodes")["items"]:
            name = node["metadata"]["name"]
            found = [
                t
                for t in (node.get("spec") or {}).get("taints") or []
                if t.get("effect") == "NoExecute"
            ]
            taints[name] = found
            for t in found:
                self._seen.setdefault((name, str(t.get("key"))), now)
        live = {(n, str(t.get("key"))) for n, ts in taints.items() for t in ts}
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]
        for pod in self.store.list("pods")["items"]:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if not node_name or is_terminating(pod) or is_terminal(pod):
                continue
            for taint in taints.get(node_name, []):
                ok, seconds = tolerates(pod, taint)
                since = self._seen[(node_name, str(taint.get("key")))]
                if not ok or (seconds is not None and now - since >= seconds):
                    self._evict(pod, str(taint.get("key")))
                    break

    def _evict(self, pod: Obj, key: str) -> None:
        meta = pod["metadata"]
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": f"Taint manager: deleting due to NoExecute taint {key}",
            "lastTransitionTime": timestamp(self.clock()),
        }
        try:
            self.store.patch(
                "pods",
                meta["name"],
                {"status": {"conditions": [condition]}},
                meta["namespace"],
                patch_type=STRATEGIC,
                subresource="status",
            )
            self.store.delete(
                "pods", meta["name"], meta["namespace"], preconditions={"uid": meta["uid"]}
            )
        except (NotFound, Conflict):
            return
        except ApiError as err:
            log.warning("taint eviction of %s/%s failed: %s", meta["namespace"], meta["name"], err)
            return
        self.evicted.append((self.monotonic(), f"{meta['namespace']}/{meta['name']}", key))
        log.info("taint-eviction: %s/%s for %s", meta["namespace"], meta["name"], key)
