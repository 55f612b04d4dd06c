"""`SimKubelet`: what a node's kubelet does to the API while its machine has power.

On each tick while `is_powered()`: register the Node after a boot, renew the node's Lease in
`kube-node-lease` and refresh the Ready condition's heartbeat. While unpowered it does nothing,
as a dead kubelet does; `NodeLifecycleController` (lifecycle.py) then marks the node Unknown.
A Node deleted while the kubelet runs is not re-created until the next boot (power cycle),
like the real kubelet, which registers only at start.

Its pod sync (`sync_pods`, every `pod_sync_interval`, only while powered) does what the real
kubelet does to the pods bound to its node: a Terminating pod is deleted with grace 0 once its
containers stopped (at once here); after a boot, a pod with restartPolicy Never that was
running before goes Failed (its containers died with the power); and the CSI volumes of its
pods are reported in `status.volumesInUse` before they are used, as the volume manager must
before it mounts anything. A powered-off node reports nothing: its last `volumesInUse` stays,
which is what keeps the attach/detach controller from detaching a volume that may be mounted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from nodefence.hwsim.kube.errors import AlreadyExists, Conflict, NotFound
from nodefence.hwsim.kube.objects import micro_timestamp, timestamp, wall_clock
from nodefence.hwsim.kube.patch import STRATEGIC
from nodefence.hwsim.kube.periodic import Periodic
from nodefence.hwsim.kube.pods import is_terminal, is_terminating
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.volumes import pod_volumes

log = logging.getLogger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
# What a node offers pods (and so VMs) when the test does not say: room for plenty of small VMs.
DEFAULT_ALLOCATABLE = {"cpu": "16", "memory": "64Gi", "pods": "110"}
_PRESSURES = ("MemoryPressure", "DiskPressure", "PIDPressure")


class SimKubelet:
    """One node's kubelet against `store`; run with `start()` (task) or `start_in_thread()`."""

    def __init__(
        self,
        store: ObjectStore,
        node_name: str,
        is_powered: Callable[[], bool],
        *,
        lease_interval: float = 10.0,
        lease_duration_seconds: int = 40,
        labels: dict[str, str] | None = None,
        internal_ip: str = "",
        kubelet_port: int = 0,
        kubelet_version: str = "v1.32.0",
        clock: Callable[[], datetime] = wall_clock,
        allocatable: dict[str, str] | None = None,
        pod_sync_interval: float = 0.5,
        power_changes: Callable[[], int] | None = None,
    ) -> None:
        """`is_powered`: the kubelet runs and reaches the API. `power_changes`: how often its
        machine's power switched so far; with it, the kubelet reboots when that count moves
        (also a quick reset between two looks), and only then: one that merely lost the API
        (a network cut, the machine kept power) did not reboot, and its pods run on. Without
        it, every look without `is_powered` counts as a power loss."""
        self.store = store
        self.power_changes = power_changes
        self._power_changes_seen: int | None = None
        self.allocatable = dict(allocatable or DEFAULT_ALLOCATABLE)
        self.node_name = node_name
        self.is_powered = is_powered
        self.lease_duration_seconds = lease_duration_seconds
        self.labels = dict(labels or {})
        self.internal_ip = internal_ip
        self.kubelet_port = kubelet_port
        self.kubelet_version = kubelet_version
        self.clock = clock
        self.booted = False
        self._machine_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node_name}.hwsim"))
        self.renewals = 0
        self.ticks = 0
        self._loop = Periodic(self.tick, lease_interval, f"kubelet-{node_name}")
        self._pods = Periodic(self.sync_pods, pod_sync_interval, f"kubelet-pods-{node_name}")
        self._before_boot: set[str] = set()  # uids of pods bound here when it (re)booted
        self.finalized = 0  # Terminating pods this kubelet deleted

    def power_lost(self) -> None:
        """The machine lost power just now: the next powered look is a boot, even if the power
        is back before it (a power cycle between two ticks)."""
        self.booted = False

    def tick(self) -> None:
        """One kubelet iteration: nothing when unpowered; else register (after boot) and renew."""
        self.ticks += 1
        if self.power_changes is not None:
            changes = self.power_changes()
            if changes != self._power_changes_seen:
                self._power_changes_seen = changes
                self.booted = False  # the power went: it boots (and registers) again
        if not self.is_powered():
            if self.power_changes is None:
                self.booted = False
            return
        if not self.booted:
            pods = self.store.list("pods", field_selector=f"spec.nodeName={self.node_name}")
            self._before_boot = {p["metadata"]["uid"] for p in pods["items"]}
            self._register()
            self.booted = True
        self._renew_lease()
        self._heartbeat()

    def sync_pods(self) -> None:
        """One pod sync (see the module doc); nothing before the Node is registered."""
        if not self.is_powered() or not self.booted:
            return
        pods = self.store.list("pods", field_selector=f"spec.nodeName={self.node_name}")["items"]
        stale, self._before_boot = self._before_boot, set()
        in_use: set[str] = set()
        for pod in pods:
            meta = pod["metadata"]
            if is_terminating(pod):
                try:
                    self.store.delete(
                        "pods",
                        meta["name"],
                        meta["namespace"],
                        preconditions={"uid": meta["uid"]},
                        grace_period_seconds=0,
                    )
                    self.finalized += 1
                except (NotFound, Conflict):
                    pass  # gone already, or another pod of that name now
                continue
            if is_terminal(pod):
                continue
            never = (pod.get("spec") or {}).get("restartPolicy") == "Never"
            if never and meta["uid"] in stale:
                self._failed_at_boot(pod)
                continue
            in_use.update(v.unique_name for v in pod_volumes(self.store, pod))
        self._report_volumes(sorted(in_use))

    def _failed_at_boot(self, pod: dict[str, object]) -> None:
        meta = pod["metadata"]
        assert isinstance(meta, dict)
        status = {
            "phase": "Failed",
            "reason": "NodeRestarted",
            "message": "the node restarted; containers with restartPolicy Never are not rerun",
        }
        try:
            self.store.patch(
                "pods", meta["name"], {"status": status}, meta["namespace"], subresource="status"
            )
        except NotFound:
            pass

    def _report_volumes(self, in_use: list[str]) -> None:
        try:
            node = self.store.get("nodes", self.node_name)
        except NotFound:
            return
        if sorted((node.get("status") or {}).get("volumesInUse") or []) == in_use:
            return
        self.store.patch(
            "nodes",
            self.node_name,
            {"status": {"volumesInUse": in_use or None}},
            patch_type=STRATEGIC,
            subresource="status",
        )

    def _ready(self, now: str, since: str) -> dict[str, str]:
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    def _register(self) -> None:
        now = timestamp(self.clock())
        conditions = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{'No' if t != 'PIDPressure' else 'Sufficient'}{t}",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t in _PRESSURES
        ]
        conditions.append(self._ready(now, now))
        addresses = [{"type": "Hostname", "address": self.node_name}]
        if self.internal_ip:
            addresses.insert(0, {"type": "InternalIP", "address": self.internal_ip})
        status: dict[str, object] = {
            "conditions": conditions,
            "addresses": addresses,
            "capacity": dict(self.allocatable),
            "allocatable": dict(self.allocatable),
            "nodeInfo": {
                "machineID": self._machine_id,
                "systemUUID": self._machine_id,
                "bootID": str(uuid.uuid4()),
                "kernelVersion": "6.1.0-hwsim",
                "osImage": "hwsim",
                "containerRuntimeVersion": "containerd://1.7.0",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": self.kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        if self.kubelet_port:
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.kubelet_port}}
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        node = {
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {},
            "status": status,
        }
        try:
            self.store.create("nodes", node)
        except AlreadyExists:  # a reboot: the Node outlived the kubelet
            self.store.patch(
                "nodes", self.node_name, {"metadata": {"labels": labels}}, patch_type=STRATEGIC
            )
            self.store.patch(
                "nodes",
                self.node_name,
                {"status": status},
                patch_type=STRATEGIC,
                subresource="status",
            )

    def _renew_lease(self) -> None:
        now = micro_timestamp(self.clock())
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "renewTime": now,
        }
        try:
            lease = self.store.get("leases", self.node_name, NODE_LEASE_NAMESPACE)
        except NotFound:
            meta: dict[str, object] = {"name": self.node_name, "namespace": NODE_LEASE_NAMESPACE}
            try:
                node = self.store.get("nodes", self.node_name)
                meta["ownerReferences"] = [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node_name,
                        "uid": node["metadata"]["uid"],
                    }
                ]
            except NotFound:
                pass
            self.store.create("leases", {"metadata": meta, "spec": spec})
        else:
            lease["spec"] = {**(lease.get("spec") or {}), **spec}
            self.store.update("leases", lease)
        self.renewals += 1

    def _heartbeat(self) -> None:
        now = timestamp(self.clock())
        try:
            node = self.store.get("nodes", self.node_name)
        except NotFound:
            log.warning(
                "kubelet %s: its Node is gone; it registers again after a reboot", self.node_name
            )
            return
        conditions = (node.get("status") or {}).get("conditions") or []
        ready: dict[str, str] = next((c for c in conditions if c.get("type") == "Ready"), {})
        since = ready.get("lastTransitionTime", now) if ready.get("status") == "True" else now
        patch = {"status": {"conditions": [self._ready(now, since)]}}
        self.store.patch("nodes", self.node_name, patch, patch_type=STRATEGIC, subresource="status")

    def start(self) -> asyncio.Task[None]:
        """Run as tasks on the running loop (returns the Lease loop's)."""
        task = self._loop.start()
        self._pods.start()
        return task

    async def stop(self) -> None:
        """Stop the tasks."""
        await self._pods.stop()
        await self._loop.stop()

    def start_in_thread(self) -> None:
        """Run in daemon threads."""
        self._loop.start_in_thread()
        self._pods.start_in_thread()

    def stop_thread(self) -> None:
        """Stop the threads."""
        self._pods.stop_thread()
        self._loop.stop_thread()
