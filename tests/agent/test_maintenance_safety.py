"""`nodefence maintenance` and `migrate` must never call a node safe while it is not (issue 21):
each test here names the defect it guards against. They run against the in-memory API of
`tests.support.maintenance_fakes`, whose controller and admission webhook behave as Deckhouse's."""

from __future__ import annotations

from typing import Any

import pytest

from nodefence.agent.cli.main import build_parser
from nodefence.agent.kube.client import MAINTENANCE_LABEL, ClusterError
from nodefence.agent.maintenance.vmops_executor import VmopsError, exit_maintenance, migrate_vm
from tests.support.clock import FakeClock
from tests.support.maintenance_fakes import FakeApi, N, Recorder, as_api, cluster, enter


def on(api: FakeApi, vm: str) -> str:
    return str(api.vms[vm]["status"].get("nodeName") or "")


def settle(api: FakeApi, steps: int = 20) -> None:
    """Let the controller finish what is under way."""
    for _ in range(steps):
        api.tick()


# ---- 1: a VM migrating onto the node --------------------------------------------------------


@pytest.mark.parametrize("vms_only", [True, False])
async def test_enter_is_not_done_while_a_vm_is_migrating_onto_the_node(vms_only: bool) -> None:
    api = cluster(vms_on_node=1)
    api.add_vm("incoming", "node-2")
    api.start_migration("incoming", N)  # someone's Evict chose node-1 before the cordon
    ok, lines, rec = await enter(api, vms_only=vms_only)
    settle(api)
    assert ok, lines
    assert on(api, "incoming") not in ("", N)  # it landed, and was moved off again
    assert any("incoming" in line and "arriving" in line for line in rec.lines), rec.lines


# ---- 3: protection while the VMs are still there ------------------------------------------


async def test_enter_refuses_a_node_that_is_not_ready_and_changes_nothing() -> None:
    api = cluster()
    api.nodes[N]["ready"] = False  # failing: a fence of it may be pending
    with pytest.raises(VmopsError, match="not Ready"):
        await enter(api)
    assert api.calls == []
    assert api.nodes[N]["labels"] == {} and not api.nodes[N]["unschedulable"]


class MarkAtCreate(FakeApi):
    """Remembers the node's maintenance mark each time an operation is created."""

    marks: list[str]

    async def create_vm_operation(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.marks.append(self.nodes[N]["labels"].get(MAINTENANCE_LABEL, ""))
        return await super().create_vm_operation(namespace, body)


def marking_cluster() -> MarkAtCreate:
    api = MarkAtCreate()
    api.__dict__.update(cluster().__dict__)
    api.marks = []
    return api


async def test_the_node_stays_guarded_while_vms_are_on_it_and_after_a_failed_run() -> None:
    api = marking_cluster()
    ok, lines, _ = await enter(api, vms_only=True)
    assert ok, lines
    assert api.marks and "true" not in api.marks  # fencing guards the VMs still there
    assert api.nodes[N]["labels"][MAINTENANCE_LABEL] == "true"  # only once they are gone

    api = marking_cluster()
    api.unmovable = {"vm-1"}
    ok, lines, _ = await enter(api, vms_only=True)
    assert not ok
    assert api.nodes[N]["labels"].get(MAINTENANCE_LABEL) != "true"  # vm-1 keeps its failover
    assert api.nodes[N]["unschedulable"]


# ---- 4: an operation that already exists ---------------------------------------------------


async def test_enter_adopts_an_unfinished_evict_instead_of_colliding_with_the_webhook() -> None:
    api = cluster()
    api.add_op("evacuation-x7k2p", "vm-0")  # e.g. from an earlier `kubectl drain`
    api.hold = {"vm-0": 10}  # still queued when the drain gets to it
    ok, lines, rec = await enter(api, vms_only=True)
    assert ok, lines
    assert not any(c.startswith("create migrate-vm-0-") for c in api.calls)
    assert on(api, "vm-0") != N
    assert any("evacuation-x7k2p" in line for line in rec.lines)


async def test_enter_waits_for_another_operation_of_a_vm_rather_than_colliding() -> None:
    api = cluster()
    api.add_op("restart-vm-1", "vm-1", "Restart", "InProgress")
    ok, lines, _ = await enter(api, vms_only=True, timeout=3)
    assert not ok
    assert not any(c.startswith("create migrate-vm-1-") for c in api.calls)
    assert "default/vm-1" in "\n".join(lines) and "restart-vm-1" in "\n".join(lines)


# ---- 5: Superseded -------------------------------------------------------------------------


async def test_a_superseded_operation_is_final_for_migrate_wait() -> None:
    api = cluster(vms_on_node=1)
    api.supersede = {"vm-0"}
    clock = FakeClock(step=0.1)
    out = await migrate_vm(
        as_api(api), "default", "vm-0", wait=True, timeout=300, reporter=Recorder(), poll=0,
        clock=clock, wall=lambda: 1700000000,
    )  # fmt: skip
    assert not out.ok
    assert "Superseded by stop-vm-0" in out.lines[0]
    assert clock.now < 30  # it did not wait for the timeout


# ---- 6: room for the VMs -------------------------------------------------------------------


async def test_enter_refuses_when_the_other_nodes_have_no_room_and_changes_nothing() -> None:
    api = FakeApi()
    api.add_node(N, cpu="16", memory="64Gi")
    api.add_node("node-2", cpu="4", memory="8Gi")
    api.add_node("node-3", cpu="4", memory="8Gi")
    api.add_node("node-4", cpu="64", memory="256Gi")
    api.nodes["node-4"]["labels"][MAINTENANCE_LABEL] = "true"  # another node in maintenance
    api.nodes["node-4"]["unschedulable"] = True
    for i in range(3):
        api.add_vm(f"big-{i}", N, cores=2, memory="6Gi")
    with pytest.raises(VmopsError, match=r"room.*default/big-"):
        await enter(api)
    assert api.calls == [] and api.nodes[N]["labels"] == {}


# ---- 7: exit ---------------------------------------------------------------------------------


async def test_exit_keeps_a_cordon_that_enter_did_not_make() -> None:
    api = cluster(vms_on_node=0)
    api.nodes[N]["unschedulable"] = True  # someone's `kubectl cordon`
    ok, lines, _ = await enter(api)
    assert ok, lines
    out = await exit_maintenance(as_api(api), N, reporter=Recorder())
    assert out.ok
    assert MAINTENANCE_LABEL not in api.nodes[N]["labels"]
    assert api.nodes[N]["unschedulable"]  # still theirs


async def test_a_failed_exit_never_leaves_the_node_schedulable_and_still_marked() -> None:
    api = cluster(vms_on_node=0)
    ok, lines, _ = await enter(api)
    assert ok, lines
    api.fail_writes = {"label", "patch"}
    with pytest.raises(ClusterError):
        await exit_maintenance(as_api(api), N, reporter=Recorder())
    marked = MAINTENANCE_LABEL in api.nodes[N]["labels"]
    assert not (marked and not api.nodes[N]["unschedulable"])


# ---- 9: the leader's node and the broker's ---------------------------------------------------


async def test_enter_on_the_leaders_node_hands_leadership_off_before_any_vm_moves() -> None:
    api = cluster()
    api.lease_holder = f"{N}_1a2b3c4d"
    api.handoff_after = 2
    ok, lines, rec = await enter(api, vms_only=True)
    assert ok, lines
    handed = api.calls.index("leader node-2")
    first_create = next(i for i, c in enumerate(api.calls) if c.startswith("create "))
    assert handed < first_create
    assert any("leader" in line and "node-2" in line for line in rec.lines), rec.lines


async def test_enter_warns_when_the_broker_runs_on_the_node() -> None:
    api = cluster(vms_on_node=1)
    api.system_pods = [
        {
            "metadata": {
                "namespace": "nodefence",
                "name": "nodefence-mqtt-5d8f-x",
                "labels": {"app.kubernetes.io/component": "mqtt"},
            },
            "spec": {"nodeName": N},
        }
    ]
    ok, lines, rec = await enter(api, vms_only=True)
    assert ok, lines
    assert any("broker" in line and "nodefence-mqtt-5d8f-x" in line for line in rec.lines)


# ---- 10: no cluster-wide listing every poll --------------------------------------------------


async def test_the_drain_does_not_list_every_vm_and_operation_at_every_look() -> None:
    api = cluster(vms_on_node=3)
    api.hold = {"vm-0": 20, "vm-1": 20, "vm-2": 20}  # many looks before anything moves
    ok, lines, _ = await enter(api, vms_only=True)
    assert ok, lines
    assert api.cluster_lists <= 2  # one look at the start, one to check before "done"


# ---- 11: spec.force ------------------------------------------------------------------------


async def test_enter_force_asks_the_controller_to_force_convergence() -> None:
    api = cluster()
    ok, lines, _ = await enter(api, vms_only=True, force=True)
    assert ok, lines
    created = [o for o in api.ops.values() if o["metadata"]["name"].startswith("migrate-")]
    assert created and all(o["spec"].get("force") is True for o in created)


def test_force_means_spec_force_and_unmanaged_pods_have_their_own_option() -> None:
    args = build_parser().parse_args(["maintenance", "enter", N, "--force", "--evict-unmanaged"])
    assert args.force is True and args.evict_unmanaged is True
    args = build_parser().parse_args(["migrate", "vm-0", "--no-force"])
    assert args.force is False
    assert build_parser().parse_args(["migrate", "vm-0"]).force is None
