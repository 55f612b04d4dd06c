"""In-memory stand-ins for the fence executor's edges (the Kubernetes API and BMC backends),
for unit tests of the executor's ordering rules. Each records what it was asked, in order, in
one shared `calls` list so tests can assert what happened before what."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

from agent.cluster import ClusterError, NodeInfo
from agent.cluster_release import AttachmentInfo
from backends.base import PowerBackend, PowerState
from backends.errors import BmcUnreachable
from backends.spec import DeviceSpec


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
