"""`NodeLifecycleController`: the part of kube-controller-manager that notices dead kubelets.

Like the real node lifecycle controller it keeps, per node, the last time *it* saw the kubelet
post something (a new Lease `renewTime` or Ready `lastHeartbeatTime`), measured on its own
monotonic clock. When that is older than `node_monitor_grace`, every node condition becomes
Unknown (`NodeStatusUnknown`, "Kubelet stopped posting node status.") and the node gets the
`node.kubernetes.io/unreachable` NoSchedule and NoExecute taints; the taints go when the kubelet
reports Ready again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.kubelet import NODE_LEASE_NAMESPACE
from nodefence.hwsim.kube.objects import timestamp, wall_clock
from nodefence.hwsim.kube.periodic import Periodic
from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]
UNREACHABLE = "node.kubernetes.io/unreachable"


def _ready(node: Obj) -> Obj:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return {}


class NodeLifecycleController:
    """Marks nodes whose kubelet went silent; run with `start()` or `start_in_thread()`."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        node_monitor_grace: float = 40.0,
        monitor_period: float = 5.0,
        clock: Callable[[], datetime] = wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.node_monitor_grace = node_monitor_grace
        self.clock = clock
        self.monotonic = monotonic
        self._seen: dict[str, tuple[tuple[str, str], float]] = {}
        self._loop = Periodic(self.tick, monitor_period, "node-lifecycle-controller")

    def tick(self) -> None:
        """Look at every node once."""
        now = self.monotonic()
        nodes = self.store.list("nodes")["items"]
        for node in nodes:
            name = node["metadata"]["name"]
            try:
                lease = self.store.get("leases", name, NODE_LEASE_NAMESPACE)
                renewed = str((lease.get("spec") or {}).get("renewTime", ""))
            except NotFound:
                renewed = ""
            probe = (renewed, str(_ready(node).get("lastHeartbeatTime", "")))
            last = self._seen.get(name)
            if last is None or last[0] != probe:
                self._seen[name] = (probe, now)
                last = self._seen[name]
            if now - last[1] > self.node_monitor_grace:
                self._mark_unknown(node)
            elif _ready(node).get("status") == "True":
                self._untaint(node)
        for gone in set(self._seen) - {n["metadata"]["name"] for n in nodes}:
            del self._seen[gone]

    def _mark_unknown(self, node: Obj) -> None:
        now = timestamp(self.clock())
        conditions = (node.get("status") or {}).get("conditions") or []
        if not conditions:
            conditions = [{"type": "Ready"}]
        changed = False
        for cond in conditions:
            if cond.get("status") != "Unknown":
                changed = True
                cond.update(
                    status="Unknown",
                    reason="NodeStatusUnknown",
                    message="Kubelet stopped posting node status.",
                    lastTransitionTime=now,
                )
        if changed:
            node.setdefault("status", {})["conditions"] = conditions
            node = self.store.update_status("nodes", node)
        taints = list((node.get("spec") or {}).get("taints") or [])
        have = {(t.get("key"), t.get("effect")) for t in taints}
        missing = [e for e in ("NoSchedule", "NoExecute") if (UNREACHABLE, e) not in have]
        taints += [{"key": UNREACHABLE, "effect": e, "timeAdded": now} for e in missing]
        if missing:
            node.setdefault("spec", {})["taints"] = taints
            self.store.update("nodes", node)

    def _untaint(self, node: Obj) -> None:
        taints = (node.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != UNREACHABLE]
        if len(kept) != len(taints):
            node["spec"]["taints"] = kept
            self.store.update("nodes", node)

    def start(self) -> asyncio.Task[None]:
        """Run as a task on the running loop."""
        return self._loop.start()

    async def stop(self) -> None:
        """Stop the task."""
        await self._loop.stop()

    def start_in_thread(self) -> None:
        """Run in a daemon thread."""
        self._loop.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the thread."""
        self._loop.stop_thread()
