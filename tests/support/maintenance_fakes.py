"""An in-memory Kubernetes API for `nodefence.agent.maintenance.vmops_executor`, with a tiny
virtualization controller.

`FakeApi` answers the `ClusterApi` calls the maintenance commands make and behaves as Deckhouse
Virtualization does where it matters to them: an Evict operation is Pending, then InProgress
(the VM `Migrating` with a target), then Completed (the VM Running on the target), one step per
read of the cluster; the admission webhook refuses a second unfinished operation for a VM
(403, in the webhook's words); every VM that runs (or arrives) on a node has a launcher pod
there. Knobs: `unmovable` (the operation fails), `hold` (it stays Pending for a number of
steps), `supersede` (it ends Superseded), `fail_writes`, a leader Lease that the agent on a
marked node hands off after `handoff_after` reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

from nodefence.agent.kube.client import (
    MAINTENANCE_LABEL,
    ClusterApi,
    ClusterError,
    LeaseInfo,
    NodeInfo,
)
from nodefence.agent.maintenance.vmops_executor import enter_maintenance
from tests.support.clock import FakeClock

N = "node-1"
VM_LABEL = "vm.kubevirt.internal.virtualization.deckhouse.io/name"
WEBHOOK = 'admission webhook "vmop.virtualization-controller.validate.d8-virtualization"'
FINISHED = ("Completed", "Failed", "Superseded")
MIGRATIONS = ("Evict", "Migrate")


def condition(reason: str, message: str = "", status: str = "False") -> dict[str, Any]:
    return {"type": "Completed", "status": status, "reason": reason, "message": message}


@dataclass
class FakeApi:
    """Nodes, VMs, operations and pods in memory; see the module doc."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # other than launchers
    system_pods: list[dict[str, Any]] = field(default_factory=list)  # namespace nodefence
    unmovable: set[str] = field(default_factory=set)
    hold: dict[str, int] = field(default_factory=dict)  # VM -> steps its operation stays Pending
    supersede: set[str] = field(default_factory=set)
    slow: dict[str, int] = field(default_factory=dict)  # VM -> steps its migration takes
    refusals: dict[str, int] = field(default_factory=dict)  # pod -> 429s before it goes
    fail_writes: set[str] = field(default_factory=set)  # "label", "uncordon", "patch", ...
    calls: list[str] = field(default_factory=list)
    max_in_flight: int = 0
    cluster_lists: int = 0  # lists of every VM or every operation of the cluster
    lease_holder: str | None = None
    handoff_after: int | None = None  # Lease reads, once the holder's node is marked
    lease_reads: int = 0
    _created: int = 0

    # ---- building the cluster ---------------------------------------------------------------

    def add_node(
        self, name: str, ready: bool | None = True, cpu: str = "", memory: str = ""
    ) -> None:
        self.nodes[name] = {
            "labels": {},
            "annotations": {},
            "unschedulable": False,
            "ready": ready,
            "cpu": cpu,
            "memory": memory,
        }

    def add_vm(
        self, name: str, node: str, phase: str = "Running", cores: int = 1, memory: str = "1Gi"
    ) -> dict[str, Any]:
        self.vms[name] = {
            "metadata": {"namespace": "default", "name": name},
            "spec": {"cpu": {"cores": cores}, "memory": {"size": memory}},
            "status": {"phase": phase, "nodeName": node},
        }
        return self.vms[name]

    def add_op(
        self, name: str, vm: str, op_type: str = "Evict", phase: str = "Pending"
    ) -> dict[str, Any]:
        """An operation someone else created (no maintenance label)."""
        self._created += 1
        self.ops[name] = {
            "metadata": {
                "namespace": "default",
                "name": name,
                "creationTimestamp": f"2024-01-01T00:00:{self._created:02d}Z",
            },
            "spec": {"type": op_type, "virtualMachineName": vm},
            "status": {"phase": phase} if phase else {},
        }
        return self.ops[name]

    def start_migration(self, vm: str, target: str, steps: int = 10) -> None:
        """`vm` is migrating to `target` by someone else's operation, under way for `steps`
        more steps of the controller."""
        self.add_op(f"someone-{vm}", vm, phase="InProgress")
        self.slow[vm] = steps
        self.vms[vm]["status"].update(
            phase="Migrating",
            migrationState={
                "startTimestamp": "2024-01-01T00:00:00Z",
                "source": {"node": self.vms[vm]["status"]["nodeName"]},
                "target": {"node": target},
            },
        )

    # ---- the controller ---------------------------------------------------------------------

    def _schedulable(self, source: str) -> list[str]:
        return sorted(
            n
            for n, v in self.nodes.items()
            if n != source and not v["unschedulable"] and v["ready"] is True
        )

    def tick(self) -> None:
        """One step of the controller over every unfinished operation."""

        def created(o: dict[str, Any]) -> str:
            return str((o.get("metadata") or {}).get("creationTimestamp", ""))

        for o in sorted(self.ops.values(), key=created):
            status = o.setdefault("status", {})
            name, phase = o["spec"]["virtualMachineName"], status.get("phase", "")
            if phase in FINISHED or o["spec"].get("type") not in MIGRATIONS:
                continue
            vm = self.vms.get(name)
            if vm is None:
                status.update(phase="Failed", conditions=[condition("VirtualMachineNotFound")])
                continue
            vst = vm["status"]
            if name in self.supersede:
                why = f"Superseded by stop-{name} with type Stop"
                status.update(phase="Superseded", conditions=[condition("Superseded", why, "True")])
            elif name in self.unmovable:
                status.update(
                    phase="Failed", conditions=[condition("TargetUnschedulable", "no room")]
                )
            elif self.hold.get(name, 0) > 0:
                self.hold[name] -= 1
                status.update(
                    phase="Pending",
                    conditions=[condition("MigrationPending", "Waiting for a free slot.")],
                )
            elif phase in ("", "Pending"):
                free = self._schedulable(vst.get("nodeName", ""))
                if not free:
                    status.update(
                        phase="Failed", conditions=[condition("TargetUnschedulable", "no node")]
                    )
                    continue
                status.update(phase="InProgress", progress="10%", conditions=[condition("Syncing")])
                vst.update(
                    phase="Migrating",
                    migrationState={
                        "startTimestamp": "2024-01-01T00:00:00Z",
                        "source": {"node": vst["nodeName"]},
                        "target": {"node": free[0]},
                    },
                )
            elif phase == "InProgress" and self.slow.get(name, 0) > 0:
                self.slow[name] -= 1
            elif phase == "InProgress":
                status.update(
                    phase="Completed", progress="100%", conditions=[condition("Completed")]
                )
                state = vst.get("migrationState") or {}
                target = state.get("target", {}).get("node", vst.get("nodeName"))
                state.update(endTimestamp="2024-01-01T00:01:00Z", result="Succeeded")
                vst.update(phase="Running", nodeName=target, migrationState=state)

    def _in_flight(self) -> int:
        return sum(
            1
            for o in self.ops.values()
            if (o.get("status") or {}).get("phase") not in FINISHED
            and o["spec"].get("type") in MIGRATIONS
        )

    # ---- nodes ------------------------------------------------------------------------------

    def _fail(self, kind: str, what: str) -> None:
        if kind in self.fail_writes:
            raise ClusterError(f"{what}: 503 Service Unavailable", 503)

    async def get_node(self, node: str) -> NodeInfo | None:
        n = self.nodes.get(node)
        if n is None:
            return None
        mark = n["labels"].get(MAINTENANCE_LABEL, "")
        return NodeInfo(
            name=node,
            uid="uid",
            internal_ip=None,
            kubelet_port=0,
            ready=n["ready"],
            unschedulable=n["unschedulable"],
            maintenance=mark == "true",
            health_endpoint=None,
            maintenance_mark=mark,
            cordoned_by_maintenance=bool(n["annotations"].get("nodefence.io/maintenance-cordon")),
            allocatable_cpu=n["cpu"],
            allocatable_memory=n["memory"],
        )

    async def list_nodes(self) -> list[NodeInfo]:
        return [i for n in self.nodes if (i := await self.get_node(n)) is not None]

    async def label_node(self, node: str, key: str, value: str | None) -> None:
        self.calls.append(f"label {node} {key}={value}")
        self._fail("label", f"label node {node}")
        if value is None:
            self.nodes[node]["labels"].pop(key, None)
        else:
            self.nodes[node]["labels"][key] = value

    async def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        verb = "cordon" if unschedulable else "uncordon"
        self.calls.append(f"{verb} {node}")
        self._fail(verb, f"{verb} node {node}")
        self.nodes[node]["unschedulable"] = unschedulable

    async def patch_node(self, node: str, body: dict[str, Any]) -> None:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        said = [f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())]
        said += [f"@{k}={v}" for k, v in sorted((meta.get("annotations") or {}).items())]
        if "unschedulable" in spec:
            said.append(f"unschedulable={bool(spec['unschedulable'])}")
        self.calls.append(f"patch {node} " + " ".join(said))
        self._fail("patch", f"patch node {node}")
        n = self.nodes[node]
        for part in ("labels", "annotations"):
            for k, v in (meta.get(part) or {}).items():
                if v is None:
                    n[part].pop(k, None)
                else:
                    n[part][k] = v
        if "unschedulable" in spec:
            n["unschedulable"] = bool(spec["unschedulable"])

    # ---- VMs and operations -----------------------------------------------------------------

    async def list_vms(self) -> list[dict[str, Any]]:
        self.cluster_lists += 1
        self.tick()
        return list(self.vms.values())

    async def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.tick()
        return self.vms.get(name)

    async def list_vm_operations(
        self, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        if namespace is None and not label_selector:
            self.cluster_lists += 1
        key, _, value = label_selector.partition("=")
        return [
            o
            for o in self.ops.values()
            if (namespace is None or (o.get("metadata") or {}).get("namespace") == namespace)
            and (not key or ((o.get("metadata") or {}).get("labels") or {}).get(key) == value)
        ]

    async def get_vm_operation(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.ops.get(name)

    async def create_vm_operation(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name, vm = body["metadata"]["name"], body["spec"]["virtualMachineName"]
        self.calls.append(f"create {name}")
        if name in self.ops:
            raise ClusterError("exists", 409)
        for other in self.ops.values():
            unfinished = (other.get("status") or {}).get("phase") not in FINISHED
            if other["spec"]["virtualMachineName"] == vm and unfinished:
                raise ClusterError(
                    f"create virtual machine operation {namespace}/{name}: 403 Forbidden: "
                    f"{WEBHOOK} denied the request: VMOP cannot be executed now. Previously "
                    f'created operation "{(other.get("metadata") or {}).get("name")}" should '
                    "finish first",
                    403,
                )
        self._created += 1
        meta = {**body["metadata"], "creationTimestamp": f"2024-01-01T00:01:{self._created:02d}Z"}
        self.ops[name] = {**body, "metadata": meta, "status": {}}
        self.max_in_flight = max(self.max_in_flight, self._in_flight())
        return self.ops[name]

    # ---- pods -------------------------------------------------------------------------------

    def _launchers(self, node: str) -> list[dict[str, Any]]:
        pods = []
        for name, vm in sorted(self.vms.items()):
            st = vm["status"]
            hosts = {st.get("nodeName") or ""} if st.get("phase") != "Stopped" else set()
            if st.get("phase") == "Migrating":
                hosts.add(((st.get("migrationState") or {}).get("target") or {}).get("node", ""))
            if node in hosts:
                pods.append(
                    {
                        "metadata": {
                            "namespace": "default",
                            "name": f"virt-launcher-{name}-{node}",
                            "labels": {VM_LABEL: name},
                            "ownerReferences": [{"kind": "VirtualMachine", "controller": True}],
                        },
                        "spec": {"nodeName": node},
                        "status": {"phase": "Running"},
                    }
                )
        return pods

    async def list_node_pods(self, node: str, label_selector: str = "") -> list[dict[str, Any]]:
        self.tick()
        launchers = self._launchers(node)
        if label_selector == VM_LABEL:
            return launchers
        others = [
            p for p in self.pods.values() if (p.get("spec") or {}).get("nodeName", node) == node
        ]
        return launchers + others

    async def list_pods(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        key, _, value = label_selector.partition("=")
        return [
            p
            for p in self.system_pods
            if p["metadata"]["namespace"] == namespace
            and (not key or p["metadata"].get("labels", {}).get(key) == value)
        ]

    async def evict_pod(self, namespace: str, name: str) -> str:
        self.calls.append(f"evict {name}")
        if self.refusals.get(name, 0) > 0:
            self.refusals[name] -= 1
            return "The disruption budget web needs 1 healthy pods and has 1 currently"
        self.pods.pop(name, None)
        return ""

    # ---- the leader Lease -------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        self.lease_reads += 1
        if self.lease_holder is None:
            return None
        holder_node = self.lease_holder.split("_", 1)[0]
        marked = self.nodes.get(holder_node, {}).get("labels", {}).get(MAINTENANCE_LABEL)
        if marked and self.handoff_after is not None:
            self.handoff_after -= 1
            if self.handoff_after <= 0:
                other = next(n for n in sorted(self.nodes) if n != holder_node)
                self.lease_holder = f"{other}_5678"
                self.calls.append(f"leader {other}")
        now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        return LeaseInfo(name, namespace, self.lease_holder, now, now, 15, 1, "1")


@dataclass
class Recorder:
    """A `vmops.Reporter` that keeps every line."""

    lines: list[str] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def step(self, text: str) -> None:
        self.lines.append(text)

    def status(self, text: str) -> None:
        pass


def cluster(vms_on_node: int = 3) -> FakeApi:
    """node-1 with `vms_on_node` VMs, node-2 with one, node-3 empty."""
    api = FakeApi()
    for n in (N, "node-2", "node-3"):
        api.add_node(n)
    for i in range(vms_on_node):
        api.add_vm(f"vm-{i}", N)
    api.add_vm("other", "node-2")
    return api


def as_api(fake: FakeApi) -> ClusterApi:
    return cast(ClusterApi, fake)


async def enter(api: FakeApi, **kw: Any) -> tuple[bool, list[str], Recorder]:
    """`enter_maintenance` of node-1 on `api` (a clock that moves, 30 s unless `timeout` is
    given): (ok, the lines it printed, what it reported)."""
    rec = Recorder()
    kw.setdefault("timeout", 30)
    out = await enter_maintenance(
        as_api(api),
        N,
        reporter=rec,
        poll=0,
        clock=FakeClock(step=0.1),
        wall=lambda: 1700000000,
        **kw,
    )
    return out.ok, list(out.lines), rec
