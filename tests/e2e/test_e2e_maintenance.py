"""Maintenance mode and live migration end to end: `nodefence migrate` and `nodefence
maintenance` run as real processes against the Kubernetes API emulator, with the ColdStandby
controller performing the Evict operations; the last two tests add mosquitto, emulated BMCs
and one real agent per node to show that the leader never fences a node in maintenance."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodefence.hwsim.simcluster import SimCluster
from nodefence.hwsim.virtualization.migration_state import DIRTY_ANNOTATION as DIRTY
from nodefence.hwsim.virtualization.migration_state import MigrationLimits
from nodefence.hwsim.virtualization.vms import place_vms
from tests.conftest import REPO, run_cli
from tests.support.e2e import one_fence_slot_held, records, start, vms_on
from tests.support.timings import ONE_FENCE_AT_A_TIME
from tests.support.wait import eventually

Make = Callable[..., SimCluster]
LABEL = "nodefence.io/maintenance"


@pytest.fixture
def sim(make_cluster: Make) -> Make:
    """A cluster of API emulator, kubelets and the VM controller, without agents (the
    commands under test need only the API)."""

    def make(**settings: Any) -> SimCluster:
        settings.setdefault("migration_delay", 0.5)
        return make_cluster(agents=False, **settings)

    return make


async def nodefence(cluster: SimCluster, *args: str) -> Any:
    return await run_cli(*args, "--kubeconfig", str(cluster.kubeconfig))


@dataclass
class RunningCli:
    """A `nodefence` command still running, its output read line by line as it comes."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def until(self, text: str, what: str) -> None:
        """Read output until a line holds `text`; fail saying `what` if the command ends first."""
        assert self.proc.stdout is not None
        while not any(text in line for line in self.lines):
            line = await asyncio.wait_for(self.proc.stdout.readline(), 40)
            assert line, f"{what}:\n" + "".join(self.lines)
            self.lines.append(line.decode())

    async def rest(self) -> tuple[str, str]:
        """Wait for the end (40 s at most): (all its output, its stderr when kept apart)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), 40)
        return "".join(self.lines) + out.decode(), (err or b"").decode()


@asynccontextmanager
async def nodefence_running(
    cluster: SimCluster, *args: str, stderr_too: bool = False
) -> AsyncIterator[RunningCli]:
    """`nodefence ARGS --kubeconfig <the cluster's>` as a process (stderr merged into stdout
    with `stderr_too`); killed if still running when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodefence.agent.cli.main", *args,
        "--kubeconfig", str(cluster.kubeconfig),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if stderr_too else asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        yield RunningCli(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def node(cluster: SimCluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.kube.store.get("nodes", name)
    return found


def marked(cluster: SimCluster, name: str) -> bool:
    return (node(cluster, name)["metadata"].get("labels") or {}).get(LABEL) == "true"


def cordoned(cluster: SimCluster, name: str) -> bool:
    return bool((node(cluster, name).get("spec") or {}).get("unschedulable"))


def cordon(cluster: SimCluster, name: str) -> None:
    cluster.kube.store.patch("nodes", name, {"spec": {"unschedulable": True}})


def vmops(cluster: SimCluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kube.store.list("virtualmachineoperations")["items"]
    return items


def where(cluster: SimCluster) -> dict[str, tuple[str, str]]:
    """VM name -> (phase, node)."""
    return {
        vm["metadata"]["name"]: (vm["status"].get("phase"), vm["status"].get("nodeName") or "")
        for vm in cluster.kube.store.list("virtualmachines")["items"]
    }


def put_pod(cluster: SimCluster, name: str, node_name: str, owner: str, **labels: str) -> None:
    store = cluster.kube.store
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels}
    meta["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": owner, "name": f"{name}-owner", "uid": f"uid-{name}",
         "controller": True}
    ]  # fmt: skip
    pod = {
        "metadata": meta,
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }
    store.create("pods", pod, "default")
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    store.patch("pods", name, {"status": status}, "default", subresource="status")


def pods_on(cluster: SimCluster, node_name: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in cluster.kube.store.list("pods")["items"]
        if (p.get("spec") or {}).get("nodeName") == node_name
    }


# ---- migrate -----------------------------------------------------------------------------------


async def test_migrate_moves_a_running_vm_to_another_node_and_follows_it(sim: Make) -> None:
    cluster = sim(nodes=3, vms=3)
    assert where(cluster)["vm-1"] == ("Running", "node-1")
    r = await nodefence(cluster, "migrate", "vm-1", "--wait", "--timeout", "20")
    assert r.code == 0, r.out + r.err
    phase, now_on = where(cluster)["vm-1"]
    assert phase == "Running" and now_on not in ("", "node-1")
    assert "Migrating  node-1 -> " in r.out
    assert f"migrated default/vm-1 from node-1 to {now_on}" in r.out
    [op] = vmops(cluster)
    assert op["metadata"]["name"].startswith("migrate-vm-1-")
    assert op["metadata"]["name"].removeprefix("migrate-vm-1-").isdigit()  # unix time
    assert op["spec"] == {"type": "Evict", "virtualMachineName": "vm-1"}
    assert op["status"]["phase"] == "Completed"
    assert cluster.vm_controller.running_places("default", "vm-1") == {now_on}
    assert cluster.vm_controller.violations() == []


async def test_a_typo_in_a_vm_or_node_name_is_a_clear_error_and_creates_nothing(
    sim: Make,
) -> None:
    cluster = sim(nodes=2, vms=2)
    vm, enter, leave = await asyncio.gather(
        nodefence(cluster, "migrate", "vm-11", "--wait"),
        nodefence(cluster, "maintenance", "enter", "node-3"),
        nodefence(cluster, "maintenance", "exit", "nod-1"),
    )
    assert vm.code == 2 and "no VirtualMachine 'vm-11' in namespace 'default'" in vm.err
    assert "did you mean vm-1" in vm.err
    assert enter.code == 2 and "no node named 'node-3'" in enter.err
    assert leave.code == 2 and "no node named 'nod-1' (did you mean node-1" in leave.err
    assert vmops(cluster) == []
    for n in ("node-1", "node-2"):
        assert not marked(cluster, n) and not cordoned(cluster, n)


async def test_a_second_operation_for_a_busy_vm_is_refused_with_the_webhooks_words(
    sim: Make,
) -> None:
    cluster = sim(nodes=3, vms=3)
    cluster.vm_controller.migrations.limits = MigrationLimits(per_cluster=0)  # all queue
    first = await nodefence(cluster, "migrate", "vm-1")
    assert first.code == 0, first.out + first.err
    second = await nodefence(cluster, "migrate", "vm-1")  # the first is still Pending
    assert second.code == 1, second.out + second.err
    assert "denied the request: VMOP cannot be executed now" in second.err
    assert "403 Forbidden: admission webhook" in second.err and "ClusterError" not in second.err
    assert len(vmops(cluster)) == 1


def migration_target(cluster: SimCluster, vm: str) -> str:
    status = cluster.kube.store.get("virtualmachines", vm, "default").get("status") or {}
    if status.get("phase") != "Migrating":
        return ""
    return str(((status.get("migrationState") or {}).get("target") or {}).get("node") or "")


async def test_enter_never_reports_done_while_a_vm_is_still_arriving(sim: Make) -> None:
    cluster = sim(nodes=3, vms=2)  # node-3 runs nothing
    store = cluster.kube.store

    def busy(on: bool) -> None:  # vm-1's migration stalls half way until its load drops
        value = "high" if on else None
        store.patch("vm", "vm-1", {"metadata": {"annotations": {DIRTY: value}}}, "default")

    busy(True)
    store.create(  # someone moves vm-1: the emptiest node is the target
        "virtualmachineoperations",
        {
            "apiVersion": "virtualization.deckhouse.io/v1alpha2",
            "kind": "VirtualMachineOperation",
            "metadata": {"name": "someones-evict"},
            "spec": {"type": "Evict", "virtualMachineName": "vm-1"},
        },
        "default",
    )
    target = await eventually("vm-1 migrating", lambda: migration_target(cluster, "vm-1"), 10)
    enter = ("maintenance", "enter", target, "--vms-only", "--timeout", "40")
    async with nodefence_running(cluster, *enter, stderr_too=True) as cli:
        await cli.until(" VMs: ", "enter ended before its drain looked")  # the drain has looked
        busy(False)  # now it converges and lands on the node under maintenance
        out, _ = await cli.rest()
    assert cli.proc.returncode == 0, out
    assert "vm default/vm-1: arriving from node-1" in out
    assert where(cluster)["vm-1"][1] not in ("", target), out  # moved off again
    assert where(cluster)["vm-1"][0] == "Running"
    assert cluster.vm_controller.violations() == []


# ---- maintenance enter / exit / list ---------------------------------------------------------


async def test_enter_moves_five_vms_off_never_onto_a_cordoned_node_and_drains_pods(
    sim: Make,
) -> None:
    cluster = sim(nodes=4, vms=1)  # vm-1 on node-1
    place_vms(cluster.kube.store, cluster.vm_controller, 4, ["node-1"], ["AlwaysOn"], prefix="db-")
    five = sorted(n for n, (_, on) in where(cluster).items() if on == "node-1")
    assert len(five) == 5
    cordon(cluster, "node-3")  # someone else's cordon: no VM may land there
    put_pod(cluster, "agent-ds", "node-1", "DaemonSet")
    put_pod(cluster, "web-a", "node-1", "ReplicaSet", app="web")
    cluster.kube.store.create(
        "poddisruptionbudgets",
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        },
        "default",
    )
    async with nodefence_running(
        cluster, "maintenance", "enter", "node-1", "--timeout", "40"
    ) as cli:
        # The budget refuses web-a until its replacement runs elsewhere, as a ReplicaSet would.
        await cli.until("eviction refused", "the command ended before trying to evict web-a")
        put_pod(cluster, "web-b", "node-2", "ReplicaSet", app="web")
        out, err = await cli.rest()
    assert cli.proc.returncode == 0, out + err
    for name in five:
        assert f"vm default/{name}: moved node-1 -> " in out
        phase, now_on = where(cluster)[name]
        assert phase == "Running" and now_on in ("node-2", "node-4"), (name, now_on)
    assert "The disruption budget web needs 1 healthy pods" in out
    assert out.index(LABEL) < out.index("cordoned") < out.index("moved node-1")
    assert marked(cluster, "node-1") and cordoned(cluster, "node-1")
    assert pods_on(cluster, "node-1") == {"agent-ds"}  # DaemonSet pods stay, as in drain
    ours = [o for o in vmops(cluster) if o["metadata"]["labels"] == {LABEL + "-node": "node-1"}]
    assert len(ours) == 5 and all(o["status"]["phase"] == "Completed" for o in ours)
    assert cluster.vm_controller.violations() == []

    listing = await nodefence(cluster, "maintenance", "list")
    assert listing.code == 0
    [row] = [line.split() for line in listing.out.splitlines() if line.startswith("node-")]
    assert row == ["node-1", "in", "maintenance", "yes", "True", "0"]


async def test_enter_with_no_other_schedulable_node_is_refused_and_changes_nothing(
    sim: Make,
) -> None:
    cluster = sim(nodes=2, vms=3)  # vm-1 and vm-3 on node-1
    cordon(cluster, "node-2")
    before = where(cluster)
    launchers = pods_on(cluster, "node-1")
    r = await nodefence(cluster, "maintenance", "enter", "node-1", "--timeout", "20")
    assert r.code == 1, r.out + r.err
    assert "no other node can take the 2 VMs of node-1" in r.err and "Nothing changed" in r.err
    assert not marked(cluster, "node-1") and not cordoned(cluster, "node-1")
    assert where(cluster) == before  # nothing moved, nothing stopped
    assert pods_on(cluster, "node-1") == launchers  # and no pod was evicted
    assert vmops(cluster) == []


async def test_a_vm_that_cannot_move_is_named_with_the_controllers_reason_node_stays_guarded(
    sim: Make,
) -> None:
    cluster = sim(nodes=3, vms=3)  # vm-1 on node-1
    status = cluster.kube.store.get("virtualmachines", "vm-1", "default")["status"]
    conditions = [c for c in status["conditions"] if c["type"] != "Migratable"]
    conditions.append({"type": "Migratable", "status": "False", "reason": "NotMigratable"})
    cluster.kube.store.patch(
        "vm", "vm-1", {"status": {"conditions": conditions}}, "default", subresource="status"
    )
    r = await nodefence(cluster, "maintenance", "enter", "node-1", "--timeout", "20")
    assert r.code == 1, r.out + r.err
    assert (
        "default/vm-1: OperationFailed: VirtualMachine is not migratable, cannot be processed."
        in r.err
    )
    assert "still guards it" in r.err
    node = cluster.kube.store.get("nodes", "node-1")
    assert node["metadata"]["labels"][LABEL] == "draining" and cordoned(cluster, "node-1")
    assert where(cluster)["vm-1"] == ("Running", "node-1")


async def test_exit_restores_scheduling(sim: Make) -> None:
    cluster = sim(nodes=3, vms=6)
    enter = await nodefence(cluster, "maintenance", "enter", "node-1", "--vms-only")
    assert enter.code == 0, enter.out + enter.err
    assert all(on != "node-1" for _, on in where(cluster).values())
    leave = await nodefence(cluster, "maintenance", "exit", "node-1")
    assert leave.code == 0, leave.out + leave.err
    assert not marked(cluster, "node-1") and not cordoned(cluster, "node-1")
    # The emptiest node again: a migration now goes there.
    vm = next(n for n, (_, on) in sorted(where(cluster).items()) if on == "node-2")
    r = await nodefence(cluster, "migrate", vm, "--wait", "--timeout", "20")
    assert r.code == 0 and where(cluster)[vm] == ("Running", "node-1"), r.out + r.err


# ---- the leader and maintenance --------------------------------------------------------------


def start_with_leader(make: Make, **overrides: Any) -> SimCluster:
    return start(make, **{"migration_delay": 0.5, **overrides})


def events_about(cluster: SimCluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(reason) if e["involvedObject"]["name"] == name]


async def test_the_leaders_node_hands_off_enters_maintenance_and_is_never_fenced(
    make_cluster: Make,
) -> None:
    cluster = start_with_leader(make_cluster, nodes=3, vms=6)
    victim = str(cluster.leader())  # the hardest case: the node that does the fencing
    r = await nodefence(cluster, "maintenance", "enter", victim, "--vms-only", "--timeout", "30")
    assert r.code == 0, r.out + r.err
    assert f"node {victim} holds the nodefence leader Lease" in r.out
    assert "leadership handed off: " in r.out  # to a named node, or freed for one to take
    cluster.wait_for("another leader", lambda: cluster.leader() not in (None, victim), 10)
    assert vms_on(cluster, victim) == []
    cluster.fleet[victim].cut_power()  # the planned work begins
    await eventually(
        "the leader's maintenance alert",
        lambda: events_about(cluster, victim, "AlertMaintenance"),
        30,
    )
    await asyncio.sleep(2)  # a fence would start right after the verdict: none may follow
    alert = events_about(cluster, victim, "AlertMaintenance")[0]
    assert "is in maintenance; not fenced" in alert["message"]
    assert records(cluster, victim) == []
    assert events_about(cluster, victim, "NodeDeclaredDead") == []
    assert any(n["metadata"]["name"] == victim for n in cluster.kube.store.list("nodes")["items"])
    assert cluster.vm_controller.history == []  # no VM was lost with the node
    assert cluster.vm_controller.violations() == []


async def test_a_node_marked_in_maintenance_while_its_fence_waits_is_aborted_safely(
    make_cluster: Make,
) -> None:
    # One fence at a time: the first victim's slow BMC holds the only slot while the second
    # victim's operation waits; an operator then marks that node in maintenance by hand
    # (`nodefence maintenance enter` would refuse a failing node, or mark it `draining`, which
    # keeps it guarded), so when the slot frees the operation is aborted before any power
    # request is sent.
    cluster = start_with_leader(make_cluster, power_timeout=16.0, **ONE_FENCE_AT_A_TIME)
    slow, late = one_fence_slot_held(cluster, off_delay=12.0)
    await eventually(f"{late}'s pending operation", lambda: records(cluster, late), 30)
    cluster.kube.store.patch("nodes", late, {"metadata": {"labels": {LABEL: "true"}}})
    assert records(cluster, slow)[0]["status"]["phase"] == "Fencing"  # slot still held
    await eventually(
        f"{late} aborted",
        lambda: [r for r in records(cluster, late) if r["status"]["phase"] == "Aborted"],
        40,
    )
    [rec] = records(cluster, late)
    assert rec["status"]["reason"] == "node entered maintenance before the power-off was sent"
    assert not rec["status"]["powerOffSent"]
    assert cluster.fleet[late].power_state() == "on" and cluster.fleet[late].power_changes == 0
    assert any(n["metadata"]["name"] == late for n in cluster.kube.store.list("nodes")["items"])
    # The Event follows the stored record: wait for it.
    await eventually("FenceAborted event", lambda: events_about(cluster, late, "FenceAborted"), 10)
