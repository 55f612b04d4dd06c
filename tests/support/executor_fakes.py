"""In-memory stand-ins for the fence executor's edges (the Kubernetes API, BMC backends and the
leader's callbacks), for unit tests of the executor's ordering rules, and the world they build
(`world`, `make`): node w1 with one VM and an IPMI device. Each records what it was asked, in
order, in one shared `calls` list so tests can assert what happened before what."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from nodefence.agent.config.inventory_file import parse_inventory
from nodefence.agent.fencing.executor import FenceExecutor
from nodefence.agent.fencing.machine import Timing
from nodefence.agent.kube.client import ClusterApi, ClusterError, NodeInfo, PodInfo
from nodefence.agent.kube.release_client import AttachmentInfo, pod_infos
from nodefence.backends.base import PowerBackend, PowerState
from nodefence.backends.errors import BmcUnreachable
from nodefence.backends.spec import DeviceSpec


@dataclass
class FakeNode:
    uid: str
    maintenance: bool = False
    tainted: bool = False
    fenced_by: str = ""
    ready: bool | None = None
    volumes_attached: list[str] = field(default_factory=list)


@dataclass
class FakeApi:
    """Records with resourceVersions and 409s, Nodes with uids, VMs, events."""

    calls: list[str] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    vms: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rv: int = 0
    # Faults: the next save of a record whose phase/powerOffSent matches fails this way.
    fail_saves: list[tuple[str, ClusterError]] = field(default_factory=list)
    land_then_fail: list[str] = field(default_factory=list)  # phases: applied, then a timeout
    fail_get_node: int = 0
    # pods: (namespace, name, uid, node); attachments: (name, node, volume, deleting)
    pods: list[tuple[str, str, str, str]] = field(default_factory=list)
    attachments: list[list[Any]] = field(default_factory=list)
    detach_after: int = 0  # deleted attachments stay (finalizer) for this many looks

    async def list_records(self, namespace: str, node: str | None = None) -> list[dict[str, Any]]:
        self.calls.append("list_records")
        return [
            copy.deepcopy(r)
            for r in self.records.values()
            if node is None or r["spec"]["nodeName"] == node
        ]

    def _key(self, body: dict[str, Any]) -> str:
        st = body.get("status") or {}
        return f"{st.get('phase')}{'+sent' if st.get('powerOffSent') else ''}"

    async def save_record(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key(body)
        self.calls.append(f"save {key}")
        for i, (match, err) in enumerate(self.fail_saves):
            if match == key:
                del self.fail_saves[i]
                raise err
        name = body["metadata"]["name"]
        old = self.records.get(name)
        given = body["metadata"].get("resourceVersion")
        if old is not None and given != old["metadata"]["resourceVersion"]:
            raise ClusterError(f"update {name}: 409 Conflict", 409)
        if old is None and given:
            raise ClusterError(f"update {name}: 404 Not Found", 404)
        self.rv += 1
        saved = copy.deepcopy(body)
        saved["metadata"]["resourceVersion"] = str(self.rv)
        self.records[name] = saved
        if key in self.land_then_fail:
            self.land_then_fail.remove(key)
            raise ClusterError(f"update {name}: no answer within 5 s")
        return copy.deepcopy(saved)

    async def get_node(self, node: str) -> NodeInfo | None:
        self.calls.append("get_node")
        if self.fail_get_node:
            self.fail_get_node -= 1
            raise ClusterError(f"read node {node}: 503 Service Unavailable", 503)
        n = self.nodes.get(node)
        if n is None:
            return None
        return self._info(node, n, n.ready)

    async def list_nodes(self) -> list[NodeInfo]:
        return [self._info(name, n, True) for name, n in self.nodes.items()]

    @staticmethod
    def _info(name: str, n: FakeNode, ready: bool | None) -> NodeInfo:
        return NodeInfo(
            name, n.uid, None, 10250, ready, False, n.maintenance, None,
            out_of_service=n.tainted, fenced_by=n.fenced_by,
        )  # fmt: skip

    async def taint_out_of_service(
        self, node: str, uid: str | None = None, operation: str = ""
    ) -> bool:
        self.calls.append("taint")
        n = self.nodes.get(node)
        if n is None or (uid is not None and n.uid != uid):
            return False
        n.tainted, n.fenced_by = True, operation
        return True

    async def remove_out_of_service(self, node: str, uid: str | None = None) -> bool:
        self.calls.append("untaint")
        n = self.nodes.get(node)
        if n is None or (uid is not None and n.uid != uid):
            return False
        n.tainted, n.fenced_by = False, ""
        return True

    async def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        self.calls.append("list_pods")
        return [
            {"metadata": {"namespace": ns, "name": name, "uid": uid}, "spec": {"nodeName": on}}
            for ns, name, uid, on in self.pods
            if on == node
        ]

    async def pods_to_release(self, node: str) -> list[PodInfo]:
        return pod_infos(await self.list_node_pods(node))

    async def force_delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append(f"delete_pod {name}")
        for pod in self.pods:
            if pod[:3] == (namespace, name, uid):
                self.pods.remove(pod)
                if not any(p[3] == pod[3] for p in self.pods):
                    self._restart_vms(pod[3])  # the launcher pods are gone
                return True
        return False

    async def list_volume_attachments(self, node: str) -> list[AttachmentInfo]:
        self.calls.append("list_attachments")
        for va in list(self.attachments):
            if va[3]:
                if self.detach_after <= 0:
                    self.attachments.remove(va)  # the CSI attacher let go of it
                else:
                    self.detach_after -= 1
        return [
            AttachmentInfo(v[0], f"uid-{v[0]}", v[2], v[3])
            for v in self.attachments
            if v[1] == node
        ]

    async def delete_volume_attachment(self, name: str, uid: str) -> bool:
        self.calls.append(f"delete_attachment {name}")
        for va in self.attachments:
            if va[0] == name:
                va[3] = True
                return True
        return False

    async def volumes_attached(self, node: str) -> list[str]:
        n = self.nodes.get(node)
        return [] if n is None else list(n.volumes_attached)

    def _restart_vms(self, node: str) -> None:
        for vm in self.vms:  # the VM controller starts the node's VMs elsewhere
            if vm["status"].get("nodeName") == node:
                vm["status"] = {"phase": "Running", "nodeName": "w2"}

    async def delete_node(self, node: str, uid: str | None = None) -> None:
        self.calls.append("delete_node")
        n = self.nodes.get(node)
        if n is not None and (uid is None or n.uid == uid):
            del self.nodes[node]
            self._restart_vms(node)  # (PodGC would free the pods; the fake does it at once)

    async def list_vms(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.vms)

    async def node_event(self, node: str, uid: str, reason: str, message: str, *a: Any) -> None:
        self.events.append(reason)

    async def vm_event(self, *a: Any) -> None:
        return None


@dataclass
class FakeMachine:
    """One node's power as its BMC sees it; records every request in `api.calls`."""

    calls: list[str]
    on: bool = True
    reachable: bool = True
    offs: int = 0
    ons: int = 0


class FakeBackend(PowerBackend):
    """A BMC channel of a `FakeMachine`: Off is read back at once."""

    def __init__(self, machine: FakeMachine) -> None:
        self.m = machine

    async def power_state(self) -> PowerState:
        await asyncio.sleep(0)
        if not self.m.reachable:
            raise BmcUnreachable("no answer", node="w1", device="ipmi")
        return PowerState.ON if self.m.on else PowerState.OFF

    async def power_off(self) -> None:
        if not self.m.reachable:
            raise BmcUnreachable("no answer", node="w1", device="ipmi")
        self.m.calls.append("power_off")
        self.m.offs += 1
        self.m.on = False

    async def power_on(self) -> None:
        self.m.calls.append("power_on")
        self.m.ons += 1
        self.m.on = True

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def factory(machine: FakeMachine) -> Any:
    def build(node: str, spec: DeviceSpec) -> PowerBackend:
        return FakeBackend(machine)

    return build


N = "w1"


INVENTORY = """
nodes:
  w1:
    levels:
      - devices:
          - {type: ipmi, name: ipmi, address: 127.0.0.1, port: 9, username: a, password_env: PW}
"""


TIMING = Timing(retry_base=0.05, retry_max=0.1, recovery_timeout=0.5)


VMS = [
    {
        "metadata": {"namespace": "prod", "name": "a"},
        "spec": {"runPolicy": "AlwaysOn"},
        "status": {"phase": "Running", "nodeName": N},
    }
]


class Leader:
    """The leader-side callbacks the executor asks: Lease checks and life since a moment."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.heartbeat_at: float | None = None  # leader clock of the node's last heartbeat
        self.heartbeat_after_save = False  # a heartbeat arrives while PowerOffSending is stored
        self.lease_failures = 0
        self.leader = True

    async def confirm(self) -> None:
        self.calls.append("confirm_leader")
        if self.lease_failures:
            self.lease_failures -= 1
            raise RuntimeError("lease renewal timed out")
        if not self.leader:
            raise RuntimeError("not the leader")

    def alive_since(self, node: str, since: float, *, certain: bool = False) -> str | None:
        self.calls.append("alive_check")
        if self.heartbeat_after_save and any(c.startswith("save Fencing+sent") for c in self.calls):
            return "heartbeat received 0.0 s ago"
        if self.heartbeat_at is not None and self.heartbeat_at >= since:
            return "heartbeat received 0.1 s ago"
        return None


def make(
    tmp_path: Path, api: FakeApi, machine: FakeMachine, leader: Leader, **kw: Any
) -> FenceExecutor:
    inventory = parse_inventory(
        yaml.safe_load(INVENTORY), path=tmp_path / "inv.yaml", env={"PW": "pw"}
    )
    return FenceExecutor(
        cast(ClusterApi, api),
        "nodefence",
        kw.pop("identity", "leader-a_1"),
        inventory=lambda: inventory,
        confirm_leader=leader.confirm,
        alive_since=leader.alive_since,
        in_maintenance=lambda node: False,
        timing=TIMING,
        check_interval=0.01,
        reconcile_interval=0.05,
        backend_factory=factory(machine),
        **kw,
    )


def submitted(tmp_path: Path, api: FakeApi, machine: FakeMachine, leader: Leader) -> FenceExecutor:
    """An executor (`make`) given node-1 (uid-1) to fence, declared dead at 10.0."""
    ex = make(tmp_path, api, machine, leader)
    ex.submit(N, decided_at=10.0, uid="uid-1")
    return ex


def world() -> tuple[FakeApi, FakeMachine, Leader]:
    api = FakeApi()
    api.nodes[N] = FakeNode("uid-1")
    api.vms = [dict(v) for v in VMS]
    return api, FakeMachine(api.calls), Leader(api.calls)


def record(api: FakeApi) -> dict[str, Any]:
    [rec] = api.records.values()
    return rec


async def settle(executor: FenceExecutor, timeout: float = 5.0) -> None:
    await asyncio.wait_for(executor.wait_idle(), timeout)
