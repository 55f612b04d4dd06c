"""Node and kubelet Lease objects of realistic size, and kubelets that renew them in bulk.

A kubelet's Node is 10-30 KB: labels and annotations from the kubelet, the CNI and the CSI
drivers, five conditions with messages, addresses, capacity, daemon endpoints, node info, and
the images the node holds (each with its digest, a tag and a size), which are most of it.
`kubelet_node` builds one like that (about 15 KB with the default 60 images) so a bench of the
API load (`bench/api_load.py`) pays what a real list or watch of Nodes costs.

`KubeletFleet` plays thousands of kubelets at the store, without sockets: every node's Lease is
renewed every `lease_period` seconds (phases spread), and its Node status posted every
`status_period` seconds (a kubelet's nodeStatusReportFrequency: 5 minutes while nothing
changed). Each write is counted in the server's `Traffic` under the client "kubelet" with the
bytes a real kubelet would send and receive, as the reference a bench compares others with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nodefence.hwsim.kube.errors import NotFound
from nodefence.hwsim.kube.objects import micro_timestamp as _micro
from nodefence.hwsim.kube.objects import timestamp as _seconds
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.traffic import Traffic

NODE_LEASE_NAMESPACE = "kube-node-lease"
KUBELET = "kubelet"  # the client name kubelets' writes are counted under


def timestamp(when: float) -> str:
    """`when` (seconds since the epoch) as `metav1.Time`."""
    return _seconds(datetime.fromtimestamp(when, UTC))


def micro_timestamp(when: float) -> str:
    """`when` (seconds since the epoch) as `metav1.MicroTime`."""
    return _micro(datetime.fromtimestamp(when, UTC))


def _size(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


@functools.cache
def _images(count: int) -> list[dict[str, object]]:
    """`count` images with digests, tags and sizes; the same on every node (the daemonsets'
    images are), so the list is made once."""
    rng = random.Random(count)
    repos = ["registry.deckhouse.io/deckhouse/ce", "quay.io/cilium", "registry.k8s.io", "ghcr.io"]
    images: list[dict[str, object]] = []
    for i in range(count):
        repo = f"{rng.choice(repos)}/component-{i:02d}"
        digest = f"{rng.getrandbits(256):064x}"
        images.append(
            {
                "names": [f"{repo}@sha256:{digest}", f"{repo}:v1.{rng.randrange(40)}.{i}"],
                "sizeBytes": rng.randrange(5_000_000, 900_000_000),
            }
        )
    return images


def _condition(kind: str, status: str, reason: str, message: str, now: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def kubelet_node(name: str, index: int, *, images: int = 60, seed: int = 0) -> dict[str, object]:
    """A Node as a real kubelet (with a CNI and a CSI driver) registers and reports it."""
    rng = random.Random(f"{seed}/{name}")
    now = timestamp(time.time())
    ip = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
    zone = f"zone-{index % 3}"
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node-role.kubernetes.io/worker": "",
        "node.deckhouse.io/group": "worker",
        "node.deckhouse.io/type": "Static",
        "topology.kubernetes.io/region": "region-1",
        "topology.kubernetes.io/zone": zone,
        "failure-domain.beta.kubernetes.io/zone": zone,
    }
    annotations = {
        "csi.volume.kubernetes.io/nodeid": json.dumps({"rbd.csi.ceph.com": name}),
        "node.alpha.kubernetes.io/ttl": "0",
        "node.deckhouse.io/configuration-checksum": f"{rng.getrandbits(256):064x}",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "io.cilium.network.ipv4-cilium-host": f"10.111.{index % 250}.1",
        "io.cilium.network.ipv4-pod-cidr": f"10.111.{index % 250}.0/24",
    }
    capacity: dict[str, str] = {
        "cpu": "64",
        "ephemeral-storage": "459924000Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "528001868Ki",
        "pods": "220",
    }
    conditions = [
        _condition(
            "NetworkUnavailable", "False", "CiliumIsUp", "Cilium is running on this node", now
        ),
        _condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
            now,
        ),
        _condition(
            "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", now
        ),
        _condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
            now,
        ),
        _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"podCIDR": f"10.111.{index % 250}.0/24", "providerID": f"static://{name}"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": capacity | {"cpu": "63", "memory": "524000000Ki"},
            "capacity": capacity,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": _images(images),
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": f"{rng.getrandbits(128):032x}",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kernelVersion": "5.15.0-105-generic",
                "kubeProxyVersion": "v1.29.4",
                "kubeletVersion": "v1.29.4",
                "machineID": f"{rng.getrandbits(128):032x}",
                "operatingSystem": "linux",
                "osImage": "Ubuntu 22.04.4 LTS",
                "systemUUID": f"{rng.getrandbits(128):032x}",
            },
        },
    }


def kubelet_lease(name: str, now: float, duration: int = 40) -> dict[str, object]:
    """The kubelet's Lease of `name` in kube-node-lease, renewed at `now`."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration,
            "renewTime": micro_timestamp(now),
        },
    }


def populate(
    store: ObjectStore, count: int, *, images: int = 60, names: list[str] | None = None
) -> list[str]:
    """Create `count` Nodes (`names`, by default `node-00001`, ...) and their Leases; their
    names."""
    names = names or [f"node-{i:05d}" for i in range(1, count + 1)]
    now = time.time()
    for i, name in enumerate(names, 1):
        store.create("nodes", kubelet_node(name, i, images=images))
        store.create("leases", kubelet_lease(name, now), NODE_LEASE_NAMESPACE)
    return names


class KubeletFleet:
    """The kubelets of `nodes` (see the module doc); `run()` until cancelled, `stop(node)`
    silences one (its machine lost power)."""

    def __init__(
        self,
        store: ObjectStore,
        traffic: Traffic,
        nodes: list[str],
        *,
        lease_period: float = 10.0,
        status_period: float = 300.0,
        tick: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.traffic = traffic
        self.nodes = list(nodes)
        self.lease_period = lease_period
        self.status_period = status_period
        self.tick = tick
        self.clock = clock
        self.silent: set[str] = set()
        self.renewals = 0
        self.status_posts = 0

    def stop(self, node: str) -> None:
        """`node`'s kubelet stops writing."""
        self.silent.add(node)

    def _renew(self, node: str, now: float) -> None:
        lease = self.store.get("leases", node, NODE_LEASE_NAMESPACE)
        lease["spec"] = {**(lease.get("spec") or {}), "renewTime": micro_timestamp(now)}
        answer = self.store.update("leases", lease, NODE_LEASE_NAMESPACE)
        self.traffic.request(KUBELET, "update", bytes_in=_size(lease), bytes_out=_size(answer))
        self.renewals += 1

    def _post_status(self, node: str, now: float) -> None:
        stamp = timestamp(now)
        obj = self.store.get("nodes", node)
        status = dict(obj.get("status") or {})
        status["conditions"] = [
            {**c, "lastHeartbeatTime": stamp} for c in status.get("conditions") or []
        ]
        patch = {"status": {"conditions": status["conditions"]}}
        answer = self.store.patch(
            "nodes", node, patch, patch_type="application/merge-patch+json", subresource="status"
        )
        self.traffic.request(KUBELET, "patch", bytes_in=_size(patch), bytes_out=_size(answer))
        self.status_posts += 1

    async def run(self) -> None:
        """Renew and post on schedule, every `tick` seconds, until cancelled."""
        n = len(self.nodes)
        if n == 0:
            return
        started = self.clock()
        done_leases = done_status = 0  # writes due so far, spread evenly over each period
        while True:
            await asyncio.sleep(self.tick)
            now = self.clock()
            elapsed = now - started
            due_leases = int(elapsed / self.lease_period * n)
            due_status = int(elapsed / self.status_period * n)
            for k in range(done_leases, due_leases):
                node = self.nodes[k % n]
                if node not in self.silent:
                    with contextlib.suppress(NotFound):
                        self._renew(node, now)
            for k in range(done_status, due_status):
                node = self.nodes[k % n]
                if node not in self.silent:
                    with contextlib.suppress(NotFound):
                        self._post_status(node, now)
            done_leases, done_status = due_leases, due_status
