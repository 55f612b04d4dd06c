"""PodGC, the NoExecute taint manager and the attach/detach controller of the API emulator.

Each test states the upstream behaviour (kube-controller-manager: pkg/controller/podgc,
pkg/controller/tainteviction, pkg/controller/volume/attachdetach) and drives `tick()` on an
injected clock over the store, with nodes registered by `SimKubelet`s whose power the test holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from nodefence.hwsim.kube import ObjectStore, SimKubelet
from nodefence.hwsim.kube.attachdetach import AttachDetachController, finalizer_for
from nodefence.hwsim.kube.controllers import ControllerTimers
from nodefence.hwsim.kube.podgc import OUT_OF_SERVICE, PodGC, TaintEvictionController
from nodefence.hwsim.kube.volumes import DEFAULT_DRIVER, attachment_name, create_disk
from tests.support.clock import FakeClock

Obj = dict[str, Any]
VOLUME = f"kubernetes.io/csi/{DEFAULT_DRIVER}^0001-default-disk"


@dataclass
class Cluster:
    store: ObjectStore
    clock: FakeClock
    power: dict[str, bool]
    kubelets: dict[str, SimKubelet] = field(default_factory=dict)

    def pod(self, name: str, node: str, disk: str | None = None) -> None:
        spec: Obj = {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}
        if disk:
            spec["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": disk}}]
        self.store.create("pods", {"metadata": {"name": name}, "spec": spec}, "default")
        self.store.patch(
            "pods", name, {"status": {"phase": "Running"}}, "default", subresource="status"
        )

    def pods(self) -> dict[str, Obj]:
        return {p["metadata"]["name"]: p for p in self.store.list("pods", "default")["items"]}

    def sync_kubelets(self) -> None:
        for k in self.kubelets.values():
            k.tick()
            k.sync_pods()

    def taint(self, node: str, key: str = OUT_OF_SERVICE, effect: str = "NoExecute") -> None:
        self.store.patch("nodes", node, {"spec": {"taints": [{"key": key, "effect": effect}]}})

    def not_ready(self, node: str) -> None:
        cond = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]
        self.store.patch(
            "nodes",
            node,
            {"status": {"conditions": cond}},
            patch_type=("application/strategic-merge-patch+json"),
            subresource="status",
        )

    def attachments(self) -> dict[str, Obj]:
        return {v["spec"]["nodeName"]: v for v in self.store.list("volumeattachments")["items"]}

    def events(self, reason: str) -> list[Obj]:
        return [e for e in self.store.list("events", "default")["items"] if e["reason"] == reason]


@pytest.fixture
def cluster() -> Cluster:
    store = ObjectStore()
    c = Cluster(store, FakeClock(1000.0), {"node-1": True, "node-2": True})
    for name in c.power:
        c.kubelets[name] = SimKubelet(store, name, lambda n=name: c.power[n])
        c.kubelets[name].tick()
    create_disk(store, "disk", "default")
    return c


# ---- PodGC -----------------------------------------------------------------------------------


def test_pods_of_a_deleted_node_are_force_deleted_only_after_the_40_s_quarantine(
    cluster: Cluster,
) -> None:
    gc = PodGC(cluster.store, monotonic=cluster.clock)
    cluster.pod("orphan", "node-1")
    cluster.store.delete("pods", "orphan", "default")  # graceful: Terminating, nobody finishes it
    cluster.store.delete("nodes", "node-1")
    gc.tick()
    cluster.clock.now += 39.9
    gc.tick()
    assert "orphan" in cluster.pods()
    cluster.clock.now += 0.2
    gc.tick()
    assert cluster.pods() == {}
    assert gc.deleted[0][1:] == ("default/orphan", "PodGC: node no longer exists")


def test_a_node_registering_again_within_the_quarantine_keeps_its_pods(cluster: Cluster) -> None:
    gc = PodGC(cluster.store, monotonic=cluster.clock)
    cluster.pod("p", "node-1")
    cluster.store.delete("nodes", "node-1")
    gc.tick()
    cluster.clock.now += 30
    cluster.power["node-1"] = False
    cluster.kubelets["node-1"].tick()
    cluster.power["node-1"] = True
    cluster.kubelets["node-1"].tick()  # rebooted: registers again
    gc.tick()
    cluster.clock.now += 30
    gc.tick()
    assert "p" in cluster.pods()


def terminating_pod_and_gc(cluster: Cluster) -> PodGC:
    """Pod `p` on node-1, deleted gracefully (Terminating); a PodGC on the cluster's clock."""
    gc = PodGC(cluster.store, monotonic=cluster.clock)
    cluster.pod("p", "node-1")
    cluster.store.delete("pods", "p", "default")
    return gc


def test_a_terminating_pod_on_a_not_ready_out_of_service_node_is_force_deleted_at_once(
    cluster: Cluster,
) -> None:
    gc = terminating_pod_and_gc(cluster)
    cluster.taint("node-1")
    gc.tick()
    assert "p" in cluster.pods()  # the node still reads Ready: PodGC waits
    cluster.not_ready("node-1")
    gc.tick()
    assert cluster.pods() == {}


def test_a_terminating_pod_on_a_dead_node_without_the_taint_stays_terminating(
    cluster: Cluster,
) -> None:
    gc = terminating_pod_and_gc(cluster)
    cluster.not_ready("node-1")
    cluster.clock.now += 3600
    gc.tick()
    assert cluster.pods()["p"]["metadata"]["deletionTimestamp"]


# ---- the NoExecute taint manager -------------------------------------------------------------


def test_the_out_of_service_taint_evicts_every_pod_at_once_gracefully(cluster: Cluster) -> None:
    manager = TaintEvictionController(cluster.store, monotonic=cluster.clock)
    cluster.pod("a", "node-1")
    cluster.pod("b", "node-2")
    cluster.taint("node-1")
    manager.tick()
    pods = cluster.pods()
    assert pods["a"]["metadata"]["deletionTimestamp"]  # Terminating: a graceful delete
    assert not pods["b"]["metadata"].get("deletionTimestamp")
    [condition] = [c for c in pods["a"]["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert condition["reason"] == "DeletionByTaintManager"


def test_unreachable_evicts_only_after_the_pods_toleration_of_300_s(cluster: Cluster) -> None:
    manager = TaintEvictionController(cluster.store, monotonic=cluster.clock)
    cluster.pod("a", "node-1")
    cluster.taint("node-1", "node.kubernetes.io/unreachable")
    manager.tick()
    cluster.clock.now += 299
    manager.tick()
    assert not cluster.pods()["a"]["metadata"].get("deletionTimestamp")
    cluster.clock.now += 2
    manager.tick()
    assert cluster.pods()["a"]["metadata"]["deletionTimestamp"]


# ---- the attach/detach controller ------------------------------------------------------------


def controller(cluster: Cluster, **timers: float) -> AttachDetachController:
    return AttachDetachController(cluster.store, monotonic=cluster.clock, **timers)


def test_a_pods_volume_is_attached_to_its_node_through_a_volume_attachment(
    cluster: Cluster,
) -> None:
    ad = controller(cluster)
    cluster.pod("vm", "node-1", disk="disk")
    ad.tick()
    ad.tick()  # the external attacher marks it attached
    va = cluster.attachments()["node-1"]
    assert va["metadata"]["name"] == attachment_name("0001-default-disk", DEFAULT_DRIVER, "node-1")
    assert va["metadata"]["finalizers"] == [finalizer_for(DEFAULT_DRIVER)]
    assert va["spec"]["source"] == {"persistentVolumeName": "pvc-default-disk"}
    assert va["status"]["attached"] is True
    node = cluster.store.get("nodes", "node-1")
    assert node["status"]["volumesAttached"] == [{"name": VOLUME, "devicePath": ""}]


def dead_node_with_a_mounted_disk(cluster: Cluster) -> AttachDetachController:
    """vm-old runs on node-1 with the disk mounted; node-1 loses power; its pod is
    force-deleted and a new pod wants the disk on node-2."""
    ad = controller(cluster, max_wait_for_unmount=360.0)
    cluster.pod("vm-old", "node-1", disk="disk")
    ad.tick()
    cluster.sync_kubelets()  # node-1 reports the disk in use
    ad.tick()
    cluster.power["node-1"] = False
    cluster.not_ready("node-1")
    cluster.store.delete("pods", "vm-old", "default", grace_period_seconds=0)
    cluster.pod("vm-new", "node-2", disk="disk")
    ad.tick()
    return ad


def test_an_rwo_volume_mounted_on_a_dead_node_is_a_multi_attach_error_for_6_minutes(
    cluster: Cluster,
) -> None:
    ad = dead_node_with_a_mounted_disk(cluster)
    [event] = cluster.events("FailedAttachVolume")
    assert event["involvedObject"]["name"] == "vm-new"
    assert event["message"] == (
        'Multi-Attach error for volume "pvc-default-disk" Volume is already exclusively attached'
        " to one node and can't be attached to another"
    )
    cluster.clock.now += 359
    ad.tick()
    assert set(cluster.attachments()) == {"node-1"}
    assert len(cluster.events("FailedAttachVolume")) == 1  # reported once
    cluster.clock.now += 2
    ad.tick()  # maxWaitForUnmountDuration: force detach from the unhealthy node
    ad.tick()
    assert set(cluster.attachments()) == {"node-2"}
    assert ad.detached[-1][1:] == (
        "pvc-default-disk",
        "node-1",
        "maxWaitForUnmountDuration 360 s expired",
    )


def test_the_out_of_service_taint_detaches_at_once(cluster: Cluster) -> None:
    ad = dead_node_with_a_mounted_disk(cluster)
    cluster.taint("node-1")
    ad.tick()
    ad.tick()
    assert set(cluster.attachments()) == {"node-2"}
    assert cluster.store.get("nodes", "node-1")["status"].get("volumesAttached") is None


def test_a_deleted_nodes_last_volumes_in_use_still_hold_the_disk_for_6_minutes(
    cluster: Cluster,
) -> None:
    ad = dead_node_with_a_mounted_disk(cluster)
    cluster.taint("node-1")  # tainted and deleted before the controller looked: no help
    cluster.store.delete("nodes", "node-1")
    cluster.clock.now += 300
    ad.tick()
    assert set(cluster.attachments()) == {"node-1"}
    cluster.clock.now += 61
    ad.tick()
    ad.tick()
    assert set(cluster.attachments()) == {"node-2"}


def test_an_unmounted_volume_is_detached_at_once(cluster: Cluster) -> None:
    ad = controller(cluster)
    cluster.pod("vm", "node-1", disk="disk")
    ad.tick()
    cluster.sync_kubelets()
    cluster.store.delete("pods", "vm", "default")  # graceful; the live kubelet finishes it
    cluster.sync_kubelets()  # ...and no longer reports the disk in use
    assert cluster.pods() == {}
    ad.tick()  # detach: the VolumeAttachment is deleted...
    ad.tick()  # ...and goes once the external attacher drops its finalizer
    assert cluster.attachments() == {}


def test_a_volume_attachment_deleted_by_someone_else_is_noticed_at_the_next_sync(
    cluster: Cluster,
) -> None:
    ad = dead_node_with_a_mounted_disk(cluster)
    ad.sync_period = 60.0
    va = cluster.attachments()["node-1"]
    cluster.store.delete("volumeattachments", va["metadata"]["name"])
    ad.tick()  # the external attacher unpublishes and drops its finalizer: the object goes
    assert set(cluster.attachments()) == set()
    cluster.clock.now += 30
    ad.tick()
    assert set(cluster.attachments()) == set()  # still believed attached to node-1
    cluster.clock.now += 31
    ad.tick()  # the sync forgets it; the next reconcile attaches to node-2
    ad.tick()
    assert set(cluster.attachments()) == {"node-2"}


def test_compressed_timers_say_what_they_compress() -> None:
    assert ControllerTimers().describe() == "upstream defaults"
    text = ControllerTimers().compressed(30).describe()
    assert text.startswith("compressed: PodGC quarantine 40 s -> 1.33 s")
    assert "maxWaitForUnmountDuration 360 s -> 12 s" in text
