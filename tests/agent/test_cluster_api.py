"""`nodefence.agent.kube.client.ClusterApi` against the Kubernetes API emulator over real HTTP: the
fencing steps touch only the Node object that was decided dead, never one registered since."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nodefence.agent.kube.client import ClusterApi
from nodefence.hwsim.kube import KubeApiServer
from tests.support.kube import cluster_api_of


@pytest.fixture
def api(kube: KubeApiServer, tmp_path: Path) -> ClusterApi:
    return cluster_api_of(kube, tmp_path)


def node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {}}


def registered_again(kube: KubeApiServer, name: str) -> tuple[str, str]:
    """Create the Node, delete it, create it again: (old uid, new uid)."""
    old = kube.store.create("nodes", node(name))["metadata"]["uid"]
    kube.store.delete("nodes", name)
    new = kube.store.create("nodes", node(name))["metadata"]["uid"]
    assert old != new
    return old, new


async def test_taint_and_delete_with_the_decided_uid_never_touch_a_re_registered_node(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    old, new = registered_again(kube, "w1")
    assert await api.taint_out_of_service("w1", old) is False
    await api.delete_node("w1", old)  # the object decided on is gone: nothing to do
    now = kube.store.get("nodes", "w1")
    assert now["metadata"]["uid"] == new
    assert not (now.get("spec") or {}).get("taints")


async def test_taint_and_delete_with_the_right_uid_do_their_work(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    uid = kube.store.create("nodes", node("w2"))["metadata"]["uid"]
    assert await api.taint_out_of_service("w2", uid) is True
    taints = kube.store.get("nodes", "w2")["spec"]["taints"]
    assert [t["key"] for t in taints] == ["node.kubernetes.io/out-of-service"]
    await api.delete_node("w2", uid)
    await asyncio.sleep(0)
    assert not [n for n in kube.store.list("nodes")["items"] if n["metadata"]["name"] == "w2"]


# -- releasing a fenced node --------------------------------------------------------------------


def bound_pod(kube: KubeApiServer, name: str, node_name: str) -> str:
    body = {"metadata": {"name": name}, "spec": {"nodeName": node_name, "containers": []}}
    uid: str = kube.store.create("pods", body, "default")["metadata"]["uid"]
    kube.store.delete("pods", name, "default")  # graceful: Terminating, its kubelet is gone
    return uid


async def test_force_deleting_a_terminating_pod_of_a_dead_node_removes_it_at_once(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    uid = bound_pod(kube, "web-1", "w1")
    assert await api.force_delete_pod("default", "web-1", "not-this-one") is False  # uid guard
    assert await api.force_delete_pod("default", "web-1", uid) is True
    assert kube.store.list("pods", "default")["items"] == []
    assert await api.force_delete_pod("default", "web-1", uid) is False  # gone already


def attachment(name: str, node_name: str, pv: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "finalizers": ["external-attacher/rbd-csi-ceph-com"]},
        "spec": {
            "attacher": "rbd.csi.ceph.com",
            "nodeName": node_name,
            "source": {"persistentVolumeName": pv},
        },
    }


async def test_the_volume_attachments_of_a_node_are_listed_and_deleted_up_to_their_finalizer(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    kube.store.create("volumeattachments", attachment("csi-1", "w1", "pv-a"))
    kube.store.create("volumeattachments", attachment("csi-2", "w2", "pv-b"))
    [mine] = await api.list_volume_attachments("w1")
    assert (mine.name, mine.volume, mine.deleting) == ("csi-1", "pv-a", False)
    assert await api.delete_volume_attachment("csi-1", mine.uid) is True
    [waiting] = await api.list_volume_attachments("w1")
    assert waiting.deleting  # the CSI attacher's finalizer holds it until it unpublished
    assert [a.name for a in await api.list_volume_attachments("w2")] == ["csi-2"]


async def test_volumes_attached_reads_what_the_attach_detach_controller_reports(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    kube.store.create("nodes", node("w1"))
    attached = [{"name": "kubernetes.io/csi/rbd.csi.ceph.com^v1", "devicePath": ""}]
    kube.store.patch("nodes", "w1", {"status": {"volumesAttached": attached}}, subresource="status")
    assert await api.volumes_attached("w1") == ["kubernetes.io/csi/rbd.csi.ceph.com^v1"]
    assert await api.volumes_attached("gone") == []


async def test_the_taint_marks_the_operation_and_the_untaint_removes_both_keeping_other_taints(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    body = node("w1")
    body["spec"] = {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}
    uid = kube.store.create("nodes", body)["metadata"]["uid"]
    assert await api.taint_out_of_service("w1", uid, "op-1") is True
    info = await api.get_node("w1")
    assert info is not None and info.out_of_service and info.fenced_by == "op-1"
    assert await api.remove_out_of_service("w1", "another-uid") is False
    assert await api.remove_out_of_service("w1", uid) is True
    after = kube.store.get("nodes", "w1")
    assert [t["key"] for t in after["spec"]["taints"]] == ["dedicated"]
    assert "nodefence.io/fenced-by" not in (after["metadata"].get("annotations") or {})


async def test_node_info_shows_deckhouse_fencing_and_its_maintenance_annotations(
    kube: KubeApiServer, api: ClusterApi
) -> None:
    labels = {"node-manager.deckhouse.io/fencing-enabled": ""}
    annotations = {"node-manager.deckhouse.io/fencing-disable": ""}
    body = {"metadata": {"name": "w1", "labels": labels, "annotations": annotations}}
    kube.store.create("nodes", body)
    info = await api.get_node("w1")
    assert info is not None
    assert info.deckhouse_fencing == "Watchdog"  # the default mode when none is labelled
    assert info.deckhouse_maintenance == "node-manager.deckhouse.io/fencing-disable"
