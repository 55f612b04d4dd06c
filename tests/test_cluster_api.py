"""`agent.cluster.ClusterApi` against the Kubernetes API emulator over real HTTP: the fencing
steps touch only the Node object that was decided dead, never one registered since."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cluster import ClusterApi, load_api_client
from hwsim.kube import KubeApiServer


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    server = KubeApiServer()
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()


@pytest.fixture
def api(kube: KubeApiServer, tmp_path: Path) -> ClusterApi:
    kube.write_kubeconfig(tmp_path / "kubeconfig")
    return ClusterApi(load_api_client(str(tmp_path / "kubeconfig")))


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
