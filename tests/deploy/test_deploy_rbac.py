"""RBAC as shipped: the rendered objects apply to the hwsim Kubernetes API emulator with
kubectl; every API call of an end-to-end fencing run (the fencers) and of a maintenance run (the
CLI) is granted to the fencers' ServiceAccount, every grant is used, none is broad (what a
compromised node can do with its account: tests/e2e/test_compromised_node.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nodefence.hwsim.kube import KubeApiServer, RequestRecord
from nodefence.hwsim.kube.controllers import ControllerTimers
from nodefence.hwsim.simcluster import ClusterSettings, SimCluster
from nodefence.hwsim.virtualization.vm_views import vm_views
from nodefence.hwsim.virtualization.vms import RESTARTED_POLICIES
from tests.support.deploy import (
    ACCOUNT,
    FENCER,
    NAMESPACE,
    REPO,
    TARGETS,
    Obj,
    ShippedBrokerCluster,
    client_calls,
    kubectl,
    record_validator,
    render,
    rendered_text,
    shipped_acl,
)
from tests.support.rbac import denied, grants_for, rec, serve_rbac, unused
from tests.support.timings import RUN_TIMINGS

SLOW_ATTACH_DETACH = 5.0  # s: the release, not the controller, deletes the VolumeAttachments


def kubectl_apply(kubeconfig: Path, manifests: str) -> str:
    result = subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_rendered_objects_apply_to_the_api_emulator_and_reapply_unchanged(
    tmp_path: Path,
) -> None:
    server = KubeApiServer()
    serve_rbac(server)
    with server:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        for target in TARGETS:
            kubectl_apply(tmp_path / "kubeconfig", rendered_text(target))
        last = TARGETS[-1]
        again = kubectl_apply(tmp_path / "kubeconfig", rendered_text(last))
        assert again and all(line.endswith(" unchanged") for line in again.splitlines()), again
        store = server.store
        for doc in render(last):
            meta = doc["metadata"]
            assert store.get(doc["kind"].lower(), meta["name"], meta.get("namespace"))
        assert store.list("fenceoperations", NAMESPACE)["items"] == []  # the CRD is served


EVALUATOR_CASES = [
    # (request, allowed) against the little policy below
    (rec("list", "nodes"), True),
    (rec("delete", "nodes", name="n1"), False),  # verb not granted
    (rec("create", "pods/eviction", "ns1", "p"), True),  # subresource granted explicitly
    (rec("create", "pods", "ns1"), False),  # ...which grants nothing on the pod itself
    (rec("get", "leases", "app", "leader", group="coordination.k8s.io"), True),
    (rec("get", "leases", "app", "other", group="coordination.k8s.io"), False),  # resourceNames
    (rec("update", "leases", "elsewhere", "leader", group="coordination.k8s.io"), False),
    (rec("create", "leases", "app", group="coordination.k8s.io"), False),  # names can't allow it
    (rec("list", "leases", group="coordination.k8s.io"), False),  # a Role is never cluster-wide
]
EVALUATOR_POLICY: list[Obj] = [
    {"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    ]},
    {"kind": "ClusterRoleBinding", "metadata": {"name": "c"},
     "roleRef": {"kind": "ClusterRole", "name": "c"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}]},
    {"kind": "Role", "metadata": {"name": "r", "namespace": "app"}, "rules": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["leader"], "verbs": ["get", "update", "create"]},
    ]},
    {"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "app"},
     "roleRef": {"kind": "Role", "name": "r"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "app"}]},
    {"kind": "ClusterRoleBinding", "metadata": {"name": "other"},
     "roleRef": {"kind": "ClusterRole", "name": "c"},
     "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "elsewhere"}]},
]  # fmt: skip


@pytest.mark.parametrize(("request_", "allowed"), EVALUATOR_CASES)
def test_the_rbac_evaluator_decides_as_the_api_server_does(
    request_: RequestRecord, allowed: bool
) -> None:
    grants = grants_for(EVALUATOR_POLICY, "app", "sa")
    assert (denied(grants, [request_]) == []) is allowed


def test_rbac_grants_nothing_broad_and_no_secret() -> None:
    docs = render("overlays/example")
    assert grants_for(docs, NAMESPACE, ACCOUNT) == []  # the node agents: no right at all
    watchdog = grants_for(render("overlays/watchdog"), NAMESPACE, ACCOUNT)
    assert {(g.role, v, r) for g in watchdog for v in g.verbs for r in g.resources} == {
        ("Role/nodefence-agent-watchdog", "list", "fenceoperations"),
        ("Role/nodefence-agent-watchdog", "watch", "fenceoperations"),
        ("ClusterRole/nodefence-agent-watchdog", "list", "nodes"),  # its own, by field selector
        ("ClusterRole/nodefence-agent-watchdog", "watch", "nodes"),
    }
    grants = grants_for(docs, NAMESPACE, FENCER)
    assert {g.role for g in grants} == {
        "ClusterRole/nodefence-fencer",
        "ClusterRole/nodefence-maintenance",
        "Role/nodefence-fencer",
        "Role/nodefence-fencer-node-leases",
        "Role/nodefence-maintenance",
    }
    for g in grants + watchdog:
        assert "*" not in g.api_groups | g.resources | g.verbs, g
        assert not g.resources & {"secrets", "configmaps", "serviceaccounts/token"}, g
        assert not g.verbs & {"escalate", "bind", "impersonate", "deletecollection"}, g
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert all(r.get("rules") and "aggregationRule" not in r for r in roles)


@contextmanager
def shipped_cluster(
    tmp_path: Path, target: str, **settings: Any
) -> Iterator[tuple[ShippedBrokerCluster, str]]:
    """A cluster of four nodes with BMCs and eight VMs (short timings, `settings`) whose broker
    enforces the shipped ACL and whose API holds `target`'s objects (kubectl apply), its node
    agents and fencers started: (the cluster, the leader's node) once there is a leader."""
    cluster = ShippedBrokerCluster(
        tmp_path,
        ClusterSettings(nodes=4, bmcs=True, vms=8, **settings, **RUN_TIMINGS),
        shipped_acl(),
    )
    serve_rbac(cluster.kube)
    try:
        cluster.start(agents=False)
        kubectl_apply(cluster.kubeconfig, rendered_text(target))
        for node in cluster.nodes:
            cluster.start_agent(node)
        for node in cluster.fencer_hosts:
            cluster.start_fencer(node)
        yield cluster, cluster.wait_for("a leader", cluster.leader, 30)
    finally:
        cluster.stop()


def recovered(cluster: ShippedBrokerCluster) -> list[Obj]:
    """The FenceOperation records that reached Recovered."""
    items = cluster.kube.store.list("fenceoperations", NAMESPACE)["items"]
    return [r for r in items if (r.get("status") or {}).get("phase") == "Recovered"]


def test_every_api_call_of_a_fencing_run_is_granted_and_every_grant_is_used(
    tmp_path: Path,
) -> None:
    docs = render("overlays/example")
    # A busy kube-controller-manager: the attach/detach controller looks only every 5 s, so the
    # release finds the VolumeAttachments still there and deletes them itself (at 2 s a loaded
    # machine let the controller go first, and the grant to delete them went unused).
    slow = ControllerTimers(attach_detach_loop=SLOW_ATTACH_DETACH)
    with shipped_cluster(tmp_path, "overlays/example", timers=slow) as (cluster, leader):
        restartable = [  # a victim whose VMs must run again elsewhere: recovery calls too
            vm["status"]["nodeName"]
            for vm in cluster.kube.store.list("virtualmachines")["items"]
            if vm["spec"]["runPolicy"] in RESTARTED_POLICIES
            and (vm.get("status") or {}).get("phase") == "Running"
        ]
        victim = next(n for n in restartable if n != leader)
        cluster.fleet[victim].cut_power()
        (record,) = cluster.wait_for("a Recovered FenceOperation", lambda: recovered(cluster), 60)
        cluster.wait_for(  # Events about VMs go to the VMs' own namespaces
            "VM Events",
            lambda: [
                e
                for e in cluster.kube.store.list("events")["items"]
                if e["involvedObject"].get("kind") == "VirtualMachine"
            ],
            10,
        )
    assert client_calls(cluster.kube, ACCOUNT) == []  # the node agents ask nothing
    calls = client_calls(cluster.kube, FENCER)
    assert calls and len(calls) == len(client_calls(cluster.kube))
    fencer_grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if "maintenance" not in g.role]
    assert denied(fencer_grants, calls) == []
    assert unused(fencer_grants, calls) == []
    assert {"delete", "patch"} <= {c.verb for c in calls if c.resource == "nodes"}
    # the release ran: pods force-deleted, VolumeAttachments looked at
    assert {"list", "delete"} <= {c.verb for c in calls if c.resource == "pods"}
    assert {"list", "delete"} <= {c.verb for c in calls if c.resource == "volumeattachments"}
    # nodefence's own writes never rely on an unconditional update (422 on a real server)
    assert [c for c in calls if c.code == 422] == []
    # What the agents stored is what the CRD keeps (nothing pruned on a real API server).
    assert list(record_validator().iter_errors(record)) == []


def test_on_a_cluster_serving_both_vm_apis_the_fenced_nodes_vms_of_both_are_verified(
    tmp_path: Path,
) -> None:
    """The kubevirt overlay's RBAC on a cluster running Deckhouse and KubeVirt VMs: the leader
    finds both APIs by discovery, verifies every restartable VM of either kind on the fenced
    node, and needs exactly what the overlay grants (the KubeVirt component included)."""
    docs = render("overlays/kubevirt")
    slow = ControllerTimers(attach_detach_loop=SLOW_ATTACH_DETACH)  # see the test above
    with shipped_cluster(tmp_path, "overlays/kubevirt", virt="both", timers=slow) as (
        cluster,
        leader,
    ):
        must_return = [v for v in vm_views(cluster.kube.store) if v.restarts and v.running]
        victim = next(  # hosts a restartable VM of each API
            n
            for n in cluster.nodes
            if n != leader
            and {"deckhouse", "kubevirt"} <= {v.api for v in must_return if v.node == n}
        )
        expected = {(v.api, v.name) for v in must_return if v.node == victim}
        cluster.fleet[victim].cut_power()
        (record,) = cluster.wait_for("a Recovered FenceOperation", lambda: recovered(cluster), 60)
        moved = {v.name: v for v in vm_views(cluster.kube.store)}
        split_brains = cluster.vm_violations()
    verified = {
        (vm["virtualization"], vm["name"])
        for vm in record["status"]["vms"]
        if vm["expectedRestart"] and vm["runningOn"] not in (None, victim)
    }
    assert verified == expected
    assert all(moved[name].running and moved[name].node != victim for _, name in expected)
    assert split_brains == []
    assert client_calls(cluster.kube, ACCOUNT) == []  # the node agents ask nothing
    calls = client_calls(cluster.kube, FENCER)
    fencer_grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if "maintenance" not in g.role]
    assert denied(fencer_grants, calls) == []
    assert unused(fencer_grants, calls) == []
    assert list(record_validator().iter_errors(record)) == []


def test_every_api_call_of_maintenance_is_granted_by_the_maintenance_role(
    tmp_path: Path,
) -> None:
    docs = render("overlays/example")
    cluster = SimCluster(
        tmp_path, ClusterSettings(nodes=3, vms=6, boot_delay=0.5, migration_delay=0.5)
    )
    try:
        cluster.start(agents=False)
        vms = cluster.kube.store.list("virtualmachines")["items"]
        running = [v for v in vms if (v.get("status") or {}).get("phase") == "Running"]
        node = running[0]["status"]["nodeName"]
        other = next(v for v in running if v["status"]["nodeName"] != node)
        cluster.kube.store.create(  # one ordinary pod for the drain to evict
            "pods",
            {
                "metadata": {
                    "name": "web-1",
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": "web",
                            "uid": "u1",
                            "controller": True,
                        }
                    ],
                },
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running"},
            },
            "default",
        )
        kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
        meta = other["metadata"]
        for args in (
            ["maintenance", "enter", node, "--timeout", "30"],
            ["maintenance", "list"],
            ["maintenance", "exit", node],
            ["migrate", meta["name"], "-n", meta["namespace"], "--wait", "--timeout", "30"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "nodefence.agent.cli.main", *args, *kubeconfig],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    finally:
        cluster.stop()
    calls = client_calls(cluster.kube)
    assert calls
    maintenance = ("ClusterRole/nodefence-maintenance", "Role/nodefence-maintenance")
    grants = [g for g in grants_for(docs, NAMESPACE, FENCER) if g.role in maintenance]
    assert denied(grants, calls) == []  # enough on its own, when bound to a person
    assert unused(grants, calls) == []
    assert [c for c in calls if c.code == 422] == []  # no unconditional update anywhere
