"""The Kubernetes API emulator (nodefence.hwsim.kube), witnessed by the official client and kubectl.

Every test talks to a real server on a free loopback port, started in a fixture and stopped even
when the test fails.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client, config, watch

from nodefence.hwsim.kube import (
    JSON_PATCH,
    MERGE,
    STRATEGIC,
    KubeApiServer,
    NodeLifecycleController,
    ObjectStore,
    ResourceType,
    SimKubelet,
    path_column,
)
from tests.support.kube import kube_server
from tests.support.wait import eventually_blocking

VIRT = ("virtualization.deckhouse.io", "v1alpha2")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with kube_server(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def crs(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def raw(
    kube: KubeApiServer,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> tuple[int, Any]:
    """One plain HTTP request; (status, parsed JSON body)."""
    conn = http.client.HTTPConnection(kube.host, kube.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, data, {"Content-Type": content_type, "Accept": accept})
        resp = conn.getresponse()
        text = resp.read().decode()
        return resp.status, json.loads(text) if text.strip().startswith("{") else text
    finally:
        conn.close()


def node(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def vm_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "/".join(VIRT),
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runPolicy": "AlwaysOn", "virtualMachineClassName": "generic", **spec},
    }


def ready_of(node: client.V1Node) -> client.V1NodeCondition:
    return next(c for c in node.status.conditions if c.type == "Ready")


class FakeTime:
    """An injected clock: wall time for timestamps, monotonic seconds for the controller."""

    def __init__(self) -> None:
        self.seconds = 1000.0
        self.start = datetime(2025, 1, 1, tzinfo=UTC)

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds


# ---- CRUD and errors -----------------------------------------------------------------------


def test_official_client_creates_reads_lists_patches_and_deletes_nodes(
    core: client.CoreV1Api,
) -> None:
    created = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-1")))
    assert created.metadata.name == "node-1"
    assert core.read_node("node-1").metadata.uid == created.metadata.uid
    assert [n.metadata.name for n in core.list_node().items] == ["node-1"]
    patched = core.patch_node("node-1", {"metadata": {"labels": {"zone": "a"}}})
    assert patched.metadata.labels == {"zone": "a"}
    core.delete_node("node-1")
    assert core.list_node().items == []


def test_objects_carry_uid_creation_time_generation_and_increasing_resource_versions(
    kube: KubeApiServer, core: client.CoreV1Api
) -> None:
    a = core.create_node(node("a"))
    b = core.create_node(node("b"))
    assert a.metadata.uid and a.metadata.uid != b.metadata.uid
    assert a.metadata.creation_timestamp is not None
    assert a.metadata.generation == 1
    assert int(b.metadata.resource_version) > int(a.metadata.resource_version)
    listed = core.list_node()
    assert listed.metadata.resource_version == b.metadata.resource_version
    assert kube.store.resource_version == b.metadata.resource_version


def test_creating_a_taken_name_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_node(node("n"))
    with pytest.raises(client.ApiException) as err:
        core.create_node(node("n"))
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "AlreadyExists"


def test_generate_name_gets_a_random_suffix(core: client.CoreV1Api) -> None:
    body = {"metadata": {"generateName": "fence-"}, "data": {"k": "v"}}
    first = core.create_namespaced_config_map("default", body)
    second = core.create_namespaced_config_map("default", body)
    assert first.metadata.name.startswith("fence-") and len(first.metadata.name) == 11
    assert first.metadata.name != second.metadata.name


def test_replacing_a_lease_with_a_stale_resource_version_is_409_conflict(
    kube_api: client.ApiClient,
) -> None:
    leases = client.CoordinationV1Api(kube_api)
    body = {"metadata": {"name": "nodefence-leader"}, "spec": {"holderIdentity": "agent-a"}}
    lease = leases.create_namespaced_lease("kube-system", body)
    lease.spec.holder_identity = "agent-b"
    leases.replace_namespaced_lease("nodefence-leader", "kube-system", lease)
    lease.spec.holder_identity = "agent-c"  # still carries the first resourceVersion
    with pytest.raises(client.ApiException) as err:
        leases.replace_namespaced_lease("nodefence-leader", "kube-system", lease)
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    current = leases.read_namespaced_lease("nodefence-leader", "kube-system")
    assert current.spec.holder_identity == "agent-b"


def test_a_missing_object_is_404_with_a_status_body(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        core.read_node("nowhere")
    assert err.value.status == 404
    assert json.loads(err.value.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "nowhere" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "nowhere", "kind": "nodes"},
    }


def test_creating_in_a_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map("nope", {"metadata": {"name": "c"}})
    assert err.value.status == 404


def test_an_invalid_name_is_422_invalid(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        core.create_node(node("Not_A_DNS_Name"))
    assert err.value.status == 422
    assert json.loads(err.value.body)["details"]["causes"][0]["field"] == "metadata.name"


# ---- patches ---------------------------------------------------------------------------------


def test_strategic_merge_replaces_the_atomic_taints_list_and_merges_conditions_by_type(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n", taints=[{"key": "a", "effect": "NoSchedule"}]))
    taint = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown"}
    patched = core.patch_node(
        "n", {"spec": {"taints": [{**taint, "effect": "NoExecute"}]}}, _content_type=STRATEGIC
    )
    assert [t.key for t in patched.spec.taints] == ["node.kubernetes.io/out-of-service"]
    heartbeat = {"type": "MemoryPressure", "status": "False"}
    status = core.patch_node_status(
        "n", {"status": {"conditions": [heartbeat]}}, _content_type=STRATEGIC
    )
    assert {c.type: c.status for c in status.status.conditions} == {
        "Ready": "True",
        "MemoryPressure": "False",
    }


def test_strategic_merge_directives_delete_a_condition_by_its_merge_key(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n"))
    deleting = {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}
    patched = core.patch_node_status("n", deleting, _content_type=STRATEGIC)
    assert not patched.status.conditions


def test_merge_patch_sets_and_null_removes_labels(core: client.CoreV1Api) -> None:
    core.create_node(node("n", {"keep": "1", "drop": "1"}))
    patch = {"metadata": {"labels": {"drop": None, "new": "2"}}}
    patched = core.patch_node("n", patch, _content_type=MERGE)
    assert patched.metadata.labels == {"keep": "1", "new": "2"}


def test_json_patch_appends_a_taint_and_a_failing_test_operation_is_422(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n", taints=[{"key": "a", "effect": "NoSchedule"}]))
    add = [{"op": "add", "path": "/spec/taints/-", "value": {"key": "b", "effect": "NoExecute"}}]
    patched = core.patch_node("n", add, _content_type=JSON_PATCH)
    assert [t.key for t in patched.spec.taints] == ["a", "b"]
    guarded = [
        {"op": "test", "path": "/spec/taints/0/key", "value": "zzz"},
        {"op": "remove", "path": "/spec/taints/0"},
    ]
    with pytest.raises(client.ApiException) as err:
        core.patch_node("n", guarded, _content_type=JSON_PATCH)
    assert err.value.status == 422
    assert len(core.read_node("n").spec.taints) == 2


def test_a_patch_carrying_a_stale_resource_version_is_a_conflict(core: client.CoreV1Api) -> None:
    stale = core.create_node(node("n")).metadata.resource_version
    core.patch_node("n", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(client.ApiException) as err:
        core.patch_node("n", {"metadata": {"resourceVersion": stale, "labels": {"x": "2"}}})
    assert err.value.status == 409


def test_strategic_merge_patch_of_a_custom_resource_is_415_as_on_a_real_server(
    kube: KubeApiServer, crs: client.CustomObjectsApi
) -> None:
    crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachines", vm_body("vm"))
    path = f"/apis/{'/'.join(VIRT)}/namespaces/default/virtualmachines/vm"
    status, body = raw(kube, "PATCH", path, {"spec": {"cpu": {"cores": 2}}}, STRATEGIC)
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")


def test_an_unchanged_update_does_not_bump_the_resource_version(core: client.CoreV1Api) -> None:
    created = core.create_node(node("n", {"a": "1"}))
    same = core.patch_node("n", {"metadata": {"labels": {"a": "1"}}})
    assert same.metadata.resource_version == created.metadata.resource_version


# ---- selectors and paging ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("role=worker", ["w1", "w2"]),
        ("role==worker", ["w1", "w2"]),
        ("role!=worker", ["m1", "x1"]),
        ("zone in (a, c)", ["m1", "w2"]),
        ("zone notin (a)", ["w1", "w2", "x1"]),
        ("zone", ["m1", "w1", "w2"]),
        ("!zone", ["x1"]),
        ("role=worker,zone=c", ["w2"]),
    ],
)
def test_label_selectors_support_equality_set_and_existence_operators(
    core: client.CoreV1Api, selector: str, expected: list[str]
) -> None:
    for name, labels in {
        "m1": {"role": "master", "zone": "a"},
        "w1": {"role": "worker", "zone": "b"},
        "w2": {"role": "worker", "zone": "c"},
        "x1": {},
    }.items():
        core.create_node(node(name, labels))
    found = core.list_node(label_selector=selector).items
    assert [n.metadata.name for n in found] == expected


def test_field_selector_on_spec_node_name_lists_only_that_nodes_pods(
    core: client.CoreV1Api,
) -> None:
    for pod_name, node_name in (("p1", "node-1"), ("p2", "node-2"), ("p3", "node-1")):
        pod = {
            "metadata": {"name": pod_name},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "i"}]},
        }
        core.create_namespaced_pod("default", pod)
    on_node_1 = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
    assert [p.metadata.name for p in on_node_1.items] == ["p1", "p3"]
    others = core.list_namespaced_pod("default", field_selector="spec.nodeName!=node-1")
    assert [p.metadata.name for p in others.items] == ["p2"]
    pending = core.list_namespaced_pod("default", field_selector="status.phase=Pending")
    assert len(pending.items) == 3


def test_a_field_selector_on_an_unindexed_field_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        core.list_node(field_selector="spec.podCIDR=10.0.0.0/24")
    assert err.value.status == 400
    assert "field label not supported" in json.loads(err.value.body)["message"]


def test_list_pages_with_limit_and_continue(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_node(node(f"n{i}"))
    first = core.list_node(limit=2)
    assert [n.metadata.name for n in first.items] == ["n0", "n1"]
    assert first.metadata.remaining_item_count == 3
    rest = core.list_node(limit=10, _continue=first.metadata._continue)
    assert [n.metadata.name for n in rest.items] == ["n2", "n3", "n4"]
    assert rest.metadata._continue is None


# ---- watch ---------------------------------------------------------------------------------


def test_watch_from_a_resource_version_gets_only_later_events_and_ends_at_its_timeout(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n"))
    after = core.patch_node("n", {"metadata": {"labels": {"step": "1"}}}).metadata
    core.patch_node("n", {"metadata": {"labels": {"step": "2"}}})
    core.create_node(node("m"))
    started = time.monotonic()
    events = [
        (e["type"], e["object"].metadata.name, (e["object"].metadata.labels or {}).get("step"))
        for e in watch.Watch().stream(
            core.list_node, resource_version=after.resource_version, timeout_seconds=1
        )
    ]
    elapsed = time.monotonic() - started
    assert events == [("MODIFIED", "n", "2"), ("ADDED", "m", None)]
    assert 0.9 <= elapsed < 5


def test_watch_without_a_resource_version_starts_with_the_current_objects(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n"))
    events = list(watch.Watch().stream(core.list_node, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "n")]


def test_watch_delivers_changes_made_while_it_is_open(
    kube: KubeApiServer, core: client.CoreV1Api
) -> None:
    rv = core.create_node(node("n")).metadata.resource_version
    w = watch.Watch()
    stream = w.stream(core.list_node, resource_version=rv, timeout_seconds=5)
    kube.store.patch("nodes", "n", {"spec": {"unschedulable": True}})
    event = next(stream)
    w.stop()
    assert (event["type"], event["object"].spec.unschedulable) == ("MODIFIED", True)


def test_watch_with_a_compacted_resource_version_gets_410_gone(
    kube: KubeApiServer, core: client.CoreV1Api
) -> None:
    old = core.create_node(node("n")).metadata.resource_version
    core.patch_node("n", {"metadata": {"labels": {"x": "1"}}})
    kube.store.compact()
    status, text = raw(kube, "GET", f"/api/v1/nodes?watch=1&resourceVersion={old}")
    event = json.loads(text.splitlines()[0]) if isinstance(text, str) else text
    assert status == 200  # as the real server: the watch opens, then an ERROR event says 410
    assert (event["type"], event["object"]["code"], event["object"]["reason"]) == (
        "ERROR",
        410,
        "Expired",
    )
    with pytest.raises(client.ApiException) as err:
        list(watch.Watch().stream(core.list_node, resource_version=old))
    assert err.value.status == 410


def test_watch_sends_bookmarks_at_the_current_resource_version_when_asked(
    core: client.CoreV1Api,
) -> None:
    rv = core.create_node(node("n")).metadata.resource_version
    events = list(
        watch.Watch().stream(
            core.list_node, resource_version=rv, timeout_seconds=1, allow_watch_bookmarks=True
        )
    )
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, "no BOOKMARK within a second at bookmark_interval=0.2"
    assert bookmarks[-1]["raw_object"]["metadata"]["resourceVersion"] == rv
    assert bookmarks[-1]["raw_object"]["kind"] == "Node"


def test_watch_without_bookmarks_asked_gets_none(core: client.CoreV1Api) -> None:
    rv = core.create_node(node("n")).metadata.resource_version
    events = list(watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=1))
    assert events == []


def test_watch_reports_an_object_leaving_its_label_selector_as_deleted(
    core: client.CoreV1Api,
) -> None:
    rv = core.create_node(node("n", {"fence": "yes"})).metadata.resource_version
    core.patch_node("n", {"metadata": {"labels": {"fence": "no"}}})
    events = watch.Watch().stream(
        core.list_node, label_selector="fence=yes", resource_version=rv, timeout_seconds=1
    )
    assert [e["type"] for e in events] == ["DELETED"]


# ---- custom resources and subresources ---------------------------------------------------------


def test_vm_and_vmop_crud_through_custom_objects_api(crs: client.CustomObjectsApi) -> None:
    crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachines", vm_body("linux-vm"))
    vmop = {
        "apiVersion": "/".join(VIRT),
        "kind": "VirtualMachineOperation",
        "metadata": {"name": "migrate-linux-vm-1700000000"},
        "spec": {"virtualMachineName": "linux-vm", "type": "Evict"},
    }
    crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachineoperations", vmop)
    got = crs.get_namespaced_custom_object(
        *VIRT, "default", "virtualmachineoperations", "migrate-linux-vm-1700000000"
    )
    assert got["spec"] == {"virtualMachineName": "linux-vm", "type": "Evict"}
    patched = crs.patch_namespaced_custom_object(
        *VIRT, "default", "virtualmachines", "linux-vm", {"spec": {"runPolicy": "Manual"}}
    )
    assert (patched["spec"]["runPolicy"], patched["metadata"]["generation"]) == ("Manual", 2)
    vms = crs.list_namespaced_custom_object(*VIRT, "default", "virtualmachines")
    assert [v["metadata"]["name"] for v in vms["items"]] == ["linux-vm"]
    crs.delete_namespaced_custom_object(*VIRT, "default", "virtualmachines", "linux-vm")
    assert crs.list_namespaced_custom_object(*VIRT, "default", "virtualmachines")["items"] == []


def test_a_vmop_spec_is_immutable(crs: client.CustomObjectsApi) -> None:
    vmop = {
        "metadata": {"name": "op"},
        "spec": {"virtualMachineName": "vm", "type": "Evict"},
    }
    crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachineoperations", vmop)
    with pytest.raises(client.ApiException) as err:
        crs.patch_namespaced_custom_object(
            *VIRT, "default", "virtualmachineoperations", "op", {"spec": {"type": "Stop"}}
        )
    assert err.value.status == 422


def test_status_subresource_changes_only_status_and_the_main_endpoint_keeps_status(
    crs: client.CustomObjectsApi,
) -> None:
    body = {**vm_body("vm"), "status": {"phase": "Running"}}
    created = crs.create_namespaced_custom_object(*VIRT, "default", "virtualmachines", body)
    assert "status" not in created  # a create cannot set status
    running = {"status": {"phase": "Running", "nodeName": "node-1"}, "spec": {"runPolicy": "X"}}
    after = crs.patch_namespaced_custom_object_status(
        *VIRT, "default", "virtualmachines", "vm", running
    )
    assert after["status"]["nodeName"] == "node-1"
    assert after["spec"]["runPolicy"] == "AlwaysOn"
    assert after["metadata"]["generation"] == 1
    after["status"]["phase"] = "Stopped"
    replaced = crs.replace_namespaced_custom_object(
        *VIRT, "default", "virtualmachines", "vm", after
    )
    assert replaced["status"]["phase"] == "Running"


def test_node_status_written_on_create_is_kept_as_kubelets_rely_on(
    core: client.CoreV1Api,
) -> None:
    created = core.create_node(node("n"))
    assert created.status.conditions[0].type == "Ready"


def test_delete_with_finalizers_only_marks_deletion_until_they_are_removed(
    core: client.CoreV1Api,
) -> None:
    meta = {"name": "rec", "finalizers": ["nodefence.io/record"]}
    core.create_namespaced_config_map("default", {"metadata": meta})
    core.delete_namespaced_config_map("rec", "default")
    marked = core.read_namespaced_config_map("rec", "default")
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("rec", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_config_map("rec", "default")
    assert err.value.status == 404


def test_delete_with_a_stale_uid_precondition_is_409_and_deletes_nothing(
    core: client.CoreV1Api,
) -> None:
    core.create_node(node("n"))
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-this-one"))
    with pytest.raises(client.ApiException) as err:
        core.delete_node("n", body=options)
    assert err.value.status == 409
    assert core.read_node("n").metadata.name == "n"


def test_deleting_a_node_deletes_its_lease_through_owner_references(
    core: client.CoreV1Api, kube_api: client.ApiClient
) -> None:
    uid = core.create_node(node("n")).metadata.uid
    owner = {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": uid}
    lease = {"metadata": {"name": "n", "ownerReferences": [owner]}, "spec": {}}
    leases = client.CoordinationV1Api(kube_api)
    leases.create_namespaced_lease("kube-node-lease", lease)
    core.delete_node("n")
    assert leases.list_namespaced_lease("kube-node-lease").items == []


def running_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
    }


def test_eviction_is_201_and_a_budget_with_no_disruption_left_makes_it_429(
    core: client.CoreV1Api, kube_api: client.ApiClient
) -> None:
    labels = {"app": "db"}
    for name in ("db-0", "db-1"):
        core.create_namespaced_pod("default", running_pod(name, labels))
        core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running"}})
    pdb = {
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }
    client.PolicyV1Api(kube_api).create_namespaced_pod_disruption_budget("default", pdb)
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "db-0"}}
    core.create_namespaced_pod_eviction("db-0", "default", eviction)
    # An evicted pod on a node is deleted gracefully: Terminating until its kubelet is done.
    evicted = core.read_namespaced_pod("db-0", "default")
    assert evicted.metadata.deletion_timestamp is not None
    assert evicted.metadata.deletion_grace_period_seconds == 30
    eviction["metadata"] = {"name": "db-1"}
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod_eviction("db-1", "default", eviction)
    assert err.value.status == 429
    assert json.loads(err.value.body)["details"]["causes"][0]["reason"] == "DisruptionBudget"


def test_register_serves_a_new_crd_style_resource_with_its_columns(
    kube: KubeApiServer, crs: client.CustomObjectsApi
) -> None:
    kube.register(
        ResourceType(
            group="nodefence.io",
            version="v1alpha1",
            kind="FenceRecord",
            plural="fencerecords",
            short_names=("fr",),
            status_subresource=True,
            columns=(path_column("Phase", ".status.phase"),),
        )
    )
    body = {"metadata": {"name": "node-1"}, "spec": {"node": "node-1"}}
    crs.create_namespaced_custom_object("nodefence.io", "v1alpha1", "default", "fencerecords", body)
    status, table = raw(
        kube,
        "GET",
        "/apis/nodefence.io/v1alpha1/namespaces/default/fencerecords",
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    assert status == 200 and table["kind"] == "Table"
    crd = crs.get_cluster_custom_object(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "fencerecords.nodefence.io"
    )
    assert crd["spec"]["names"]["shortNames"] == ["fr"]


def test_creating_a_crd_serves_its_resource(
    kube: KubeApiServer, crs: client.CustomObjectsApi
) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    crs.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", crd)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    crs.create_cluster_custom_object("example.com", "v1", "widgets", widget)
    assert crs.list_cluster_custom_object("example.com", "v1", "widgets")["items"][0]["kind"] == (
        "Widget"
    )


def test_every_request_is_recorded_with_verb_resource_namespace_name_and_subresource(
    kube: KubeApiServer, core: client.CoreV1Api
) -> None:
    core.create_node(node("n"))
    core.patch_node_status("n", {"status": {"phase": "Running"}})
    core.list_namespaced_pod("kube-system", label_selector="a=b")
    seen = [(r.verb, r.resource, r.namespace, r.name, r.subresource, r.code) for r in kube.requests]
    assert seen == [
        ("create", "nodes", "", "", "", 201),
        ("patch", "nodes", "", "n", "status", 200),
        ("list", "pods", "kube-system", "", "", 200),
    ]


def test_the_kubeconfig_it_writes_works_with_the_official_client(
    kube: KubeApiServer, tmp_path: Path
) -> None:
    kube.write_kubeconfig(tmp_path / "config")
    with config.new_client_from_config(config_file=str(tmp_path / "config")) as api_client:
        names = [ns.metadata.name for ns in client.CoreV1Api(api_client).list_namespace().items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]


def test_it_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        KubeApiServer(host="0.0.0.0")


async def test_the_server_and_a_kubelet_run_on_the_callers_event_loop() -> None:
    async with KubeApiServer() as srv:
        kubelet = SimKubelet(srv.store, "node-1", lambda: True, lease_interval=0.02)
        kubelet.start()
        try:
            deadline = asyncio.get_running_loop().time() + 5
            async with aiohttp.ClientSession() as session:
                while kubelet.renewals < 3:
                    assert asyncio.get_running_loop().time() < deadline, "the kubelet never ran"
                    await asyncio.sleep(0.02)
                async with session.get(f"{srv.url}/api/v1/nodes") as resp:
                    items = (await resp.json())["items"]
        finally:
            await kubelet.stop()
    assert [n["metadata"]["name"] for n in items] == ["node-1"]


# ---- kubectl as a witness ------------------------------------------------------------------


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def kubectl_for(kube: KubeApiServer, home: Path) -> Kubectl:
    """Run kubectl against `server` (through a kubeconfig and `--server`), HOME in `home`."""
    kube.write_kubeconfig(home / "kubeconfig")
    env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(home / "kubeconfig")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run(
            [KUBECTL, "--server", kube.url, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    return run


@pytest.fixture
def kubectl(kube: KubeApiServer, tmp_path: Path) -> Kubectl:
    return kubectl_for(kube, tmp_path)


def table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


@needs_kubectl
def test_kubectl_get_nodes_prints_status_roles_age_and_version(
    kube: KubeApiServer, kubectl: Kubectl
) -> None:
    body = node("node-1", {"node-role.kubernetes.io/worker": ""})
    body["status"]["nodeInfo"] = {"kubeletVersion": "v1.30.1"}
    kube.store.create("nodes", body)
    rows = table(kubectl("get", "nodes").stdout)
    assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows[1][:3] == ["node-1", "Ready", "worker"] and rows[1][4] == "v1.30.1"


@needs_kubectl
def test_kubectl_get_vm_prints_the_seeds_columns(tmp_path: Path) -> None:
    clock = FakeTime()
    with KubeApiServer(store=ObjectStore(clock=clock.wall)) as srv:
        created = srv.store.create("vm", vm_body("linux-vm"), "default")
        status = {"phase": "Running", "nodeName": "virtlab-pt-1", "ipAddress": "10.66.10.14"}
        srv.store.update_status("vm", {**created, "status": status})
        clock.seconds += 79 * 60
        rows = table(kubectl_for(srv, tmp_path)("get", "vm").stdout)
    assert rows == [
        ["NAME", "PHASE", "NODE", "IPADDRESS", "AGE"],
        ["linux-vm", "Running", "virtlab-pt-1", "10.66.10.14", "79m"],
    ]


@needs_kubectl
def test_kubectl_cordon_taint_and_uncordon_patch_the_node(
    kube: KubeApiServer, kubectl: Kubectl
) -> None:
    kube.store.create("nodes", node("node-1"))
    kubectl("cordon", "node-1")
    assert table(kubectl("get", "nodes").stdout)[1][1] == "Ready,SchedulingDisabled"
    kubectl("taint", "node", "node-1", "maintenance=true:NoSchedule")
    kubectl("taint", "node", "node-1", "fenced=yes:NoExecute")
    kubectl("taint", "node", "node-1", "maintenance-")
    taints = kube.store.get("nodes", "node-1")["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in taints] == [("fenced", "NoExecute")]
    kubectl("uncordon", "node-1")
    assert not kube.store.get("nodes", "node-1")["spec"].get("unschedulable")


@needs_kubectl
def test_kubectl_apply_creates_then_patches_a_vm_and_delete_removes_it(
    kube: KubeApiServer,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "vm.yaml"
    text = """apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachine
metadata:
  name: linux-vm
  namespace: default
spec:
  runPolicy: AlwaysOn
  virtualMachineClassName: generic
  cpu: {cores: CORES}
  memory: {size: 1Gi}
  blockDeviceRefs: [{kind: VirtualDisk, name: linux-vm-root}]
"""
    manifest.write_text(text.replace("CORES", "1"))
    assert "created" in kubectl("apply", "-f", str(manifest)).stdout
    manifest.write_text(text.replace("CORES", "4"))
    assert "configured" in kubectl("apply", "-f", str(manifest)).stdout
    vm = kube.store.get("vm", "linux-vm", "default")
    assert (vm["spec"]["cpu"], vm["metadata"]["generation"]) == ({"cores": 4}, 2)
    assert "deleted" in kubectl("delete", "-f", str(manifest)).stdout
    assert kube.store.list("vm")["items"] == []


@needs_kubectl
def test_kubectl_reads_leases_in_kube_node_lease_through_the_kubeconfig(
    kube: KubeApiServer,
    kubectl: Kubectl,
) -> None:
    kubelet = SimKubelet(kube.store, "node-1", lambda: True)
    kubelet.tick()
    rows = table(kubectl("get", "leases", "-n", "kube-node-lease").stdout)
    assert rows[0] == ["NAME", "HOLDER", "AGE"]
    assert rows[1][:2] == ["node-1", "node-1"]


@needs_kubectl
def test_kubectl_get_watch_prints_a_change(kube: KubeApiServer, tmp_path: Path) -> None:
    assert KUBECTL is not None
    kube.store.create("nodes", node("node-1"))
    env = {**os.environ, "HOME": str(tmp_path)}
    with subprocess.Popen(
        [KUBECTL, "--server", kube.url, "get", "nodes", "-w", "--request-timeout=3s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            eventually_blocking(
                "a watch", lambda: any(r.verb == "watch" for r in kube.requests), timeout=10
            )
            kube.store.patch("nodes", "node-1", {"spec": {"unschedulable": True}})
            out, _ = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert "Ready,SchedulingDisabled" in out


@needs_kubectl
def test_kubectl_drain_evicts_vm_pods_and_a_budget_stops_it(
    kube: KubeApiServer,
    core: client.CoreV1Api,
    kubectl: Kubectl,
) -> None:
    # node-1's kubelet finishes what the evictions start: evicted pods are Terminating until
    # their kubelet deletes them, and drain waits for that.
    kubelet = SimKubelet(kube.store, "node-1", lambda: True, pod_sync_interval=0.05)
    kubelet.tick()
    vm_label = {"vm.kubevirt.internal.virtualization.deckhouse.io/name": "linux-vm"}
    owner = {
        "apiVersion": "internal.virtualization.deckhouse.io/v1",
        "kind": "InternalVirtualizationVirtualMachineInstance",
        "name": "linux-vm",
        "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "controller": True,
    }
    for name in ("virt-launcher-linux-vm-a", "virt-launcher-linux-vm-b"):
        pod = running_pod(name, vm_label)
        pod["metadata"]["ownerReferences"] = [owner]
        core.create_namespaced_pod("default", pod)
        core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running"}})
    budget = {"minAvailable": 1, "selector": {"matchLabels": vm_label}}
    kube.store.create("pdb", {"metadata": {"name": "vms"}, "spec": budget}, "default")
    selector = "vm.kubevirt.internal.virtualization.deckhouse.io/name"
    kubelet.start_in_thread()
    try:
        blocked = kubectl(
            "drain", "node-1", "--pod-selector", selector, "--timeout=1s", check=False
        )
        assert blocked.returncode != 0
        assert len(kube.store.list("pods")["items"]) == 1  # one eviction allowed, not two
        kube.store.delete("pdb", "vms", "default")
        kubectl("drain", "node-1", "--pod-selector", selector, "--delete-emptydir-data")
    finally:
        kubelet.stop_thread()
    assert kube.store.list("pods")["items"] == []
    assert kube.store.get("nodes", "node-1")["spec"]["unschedulable"] is True


# ---- simulated kubelet and node lifecycle ---------------------------------------------------


def test_sim_kubelet_registers_its_node_and_renews_its_lease_only_while_powered(
    kube: KubeApiServer, core: client.CoreV1Api, kube_api: client.ApiClient
) -> None:
    clock, powered = FakeTime(), [True]
    kubelet = SimKubelet(kube.store, "node-1", lambda: powered[0], clock=clock.wall)
    leases = client.CoordinationV1Api(kube_api)
    kubelet.tick()
    registered = core.read_node("node-1")
    assert registered.metadata.labels["kubernetes.io/hostname"] == "node-1"
    assert ready_of(registered).status == "True"
    lease = leases.read_namespaced_lease("node-1", "kube-node-lease")
    assert (lease.spec.holder_identity, lease.spec.lease_duration_seconds) == ("node-1", 40)
    assert lease.metadata.owner_references[0].uid == registered.metadata.uid
    clock.seconds += 10
    kubelet.tick()
    renewed = leases.read_namespaced_lease("node-1", "kube-node-lease")
    assert renewed.spec.renew_time - lease.spec.renew_time == timedelta(seconds=10)
    assert ready_of(core.read_node("node-1")).last_heartbeat_time == clock.wall()
    powered[0] = False
    clock.seconds += 10
    kubelet.tick()
    silent = leases.read_namespaced_lease("node-1", "kube-node-lease")
    assert silent.metadata.resource_version == renewed.metadata.resource_version


def test_sim_kubelet_in_a_thread_stops_renewing_when_power_goes(
    kube: KubeApiServer,
) -> None:
    powered = [True]
    kubelet = SimKubelet(kube.store, "node-1", lambda: powered[0], lease_interval=0.02)
    kubelet.start_in_thread()
    try:
        eventually_blocking("three renewals", lambda: kubelet.renewals >= 3)
        powered[0] = False
        ticks = eventually_blocking(
            "ticks while not booted", lambda: kubelet.ticks if not kubelet.booted else None
        )
        renewals = kubelet.renewals
        eventually_blocking("three more ticks", lambda: kubelet.ticks >= ticks + 3)
        assert kubelet.renewals == renewals
    finally:
        kubelet.stop_thread()


def test_node_lifecycle_marks_a_silent_node_unknown_and_unreachable_after_the_grace(
    kube: KubeApiServer, core: client.CoreV1Api
) -> None:
    clock, powered = FakeTime(), [True]
    kubelet = SimKubelet(kube.store, "node-1", lambda: powered[0], clock=clock.wall)
    controller = NodeLifecycleController(
        kube.store, node_monitor_grace=40, clock=clock.wall, monotonic=clock.monotonic
    )
    kubelet.tick()
    controller.tick()
    powered[0] = False
    clock.seconds += 39
    kubelet.tick()
    controller.tick()
    assert ready_of(core.read_node("node-1")).status == "True"
    clock.seconds += 2
    controller.tick()
    dead = core.read_node("node-1")
    assert {c.status for c in dead.status.conditions} == {"Unknown"}
    ready = ready_of(dead)
    assert (ready.reason, ready.message) == (
        "NodeStatusUnknown",
        "Kubelet stopped posting node status.",
    )
    assert sorted((t.key, t.effect) for t in dead.spec.taints) == [
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoSchedule"),
    ]
    powered[0] = True  # power back: the kubelet boots, registers, the taints go
    clock.seconds += 1
    kubelet.tick()
    controller.tick()
    back = core.read_node("node-1")
    assert ready_of(back).status == "True"
    assert not back.spec.taints


def test_a_node_deleted_while_its_kubelet_runs_comes_back_only_after_a_power_cycle(
    kube: KubeApiServer,
) -> None:
    powered = [True]
    kubelet = SimKubelet(kube.store, "node-1", lambda: powered[0])
    kubelet.tick()
    kube.store.delete("nodes", "node-1")
    kubelet.tick()
    assert kube.store.list("nodes")["items"] == []
    powered[0] = False
    kubelet.tick()
    powered[0] = True
    kubelet.tick()
    assert [n["metadata"]["name"] for n in kube.store.list("nodes")["items"]] == ["node-1"]
