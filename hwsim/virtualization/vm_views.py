"""Every VM of a simulated cluster, of either API, as the scenarios, chaos runs and the live
view judge them: where it runs, and whether it must come back after its node is lost.

Read straight from the store, independently of the agent's own parsing: Deckhouse's
VirtualMachines (`spec.runPolicy`, `status.phase` / `nodeName`) and KubeVirt's (`spec.runStrategy`
or `spec.running`, joined with their VirtualMachineInstance by namespace and name). A KubeVirt
VM's phase is its instance's (Migrating while a migration moves it), Stopped without one; its
node is the instance's while it is not finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import ApiError
from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]
DECKHOUSE_VM = "virtualmachines.virtualization.deckhouse.io"
KUBEVIRT_VM = "virtualmachines.kubevirt.io"
KUBEVIRT_VMI = "virtualmachineinstances.kubevirt.io"
DECKHOUSE_RESTART = ("AlwaysOn", "AlwaysOnUnlessStoppedManually")
KUBEVIRT_RESTART = ("Always", "RerunOnFailure")  # RerunOnFailure: its instance Failed with it
RESTARTABLE = DECKHOUSE_RESTART + KUBEVIRT_RESTART


@dataclass(frozen=True)
class VmView:
    """One VM: `key` is `namespace/name` (KubeVirt's: `kubevirt:namespace/name`)."""

    key: str
    namespace: str
    name: str
    api: str  # deckhouse, kubevirt
    policy: str  # runPolicy or runStrategy
    phase: str
    node: str | None

    @property
    def restarts(self) -> bool:
        """It must run again elsewhere once its node is lost."""
        return self.policy in RESTARTABLE

    @property
    def running(self) -> bool:
        """Running (and not moving)."""
        return self.phase == "Running"


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _items(store: ObjectStore, resource: str) -> list[Obj]:
    """Every object of `resource`; none when the cluster does not serve it."""
    try:
        items: list[Obj] = store.list(resource)["items"]
    except ApiError:
        return []
    return items


def deckhouse_views(store: ObjectStore) -> list[VmView]:
    """Deckhouse Virtualization's VMs."""
    out = []
    for vm in _items(store, DECKHOUSE_VM):
        meta, st = vm["metadata"], _dict(vm.get("status"))
        ns, name = str(meta["namespace"]), str(meta["name"])
        policy = str(_dict(vm.get("spec")).get("runPolicy") or "AlwaysOnUnlessStoppedManually")
        node = st.get("nodeName") or None
        out.append(
            VmView(f"{ns}/{name}", ns, name, "deckhouse", policy, str(st.get("phase", "")), node)
        )
    return out


def kubevirt_views(store: ObjectStore) -> list[VmView]:
    """KubeVirt's VMs (and instances without a VirtualMachine, which never come back)."""
    instances = {
        (str(i["metadata"]["namespace"]), str(i["metadata"]["name"])): i
        for i in _items(store, KUBEVIRT_VMI)
    }
    out = []
    for vm in _items(store, KUBEVIRT_VM):
        key = (str(vm["metadata"]["namespace"]), str(vm["metadata"]["name"]))
        spec = _dict(vm.get("spec"))
        policy = str(spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted"))
        out.append(_kubevirt_view(key, policy, instances.pop(key, None)))
    out += [_kubevirt_view(key, "", vmi) for key, vmi in instances.items()]
    return out


def _kubevirt_view(key: tuple[str, str], policy: str, vmi: Obj | None) -> VmView:
    status = _dict((vmi or {}).get("status"))
    phase = str(status.get("phase") or ("Pending" if vmi else "Stopped"))
    state = _dict(status.get("migrationState"))
    if phase == "Running" and state.get("targetNode") and not state.get("completed"):
        phase = "Migrating"
    node = None if phase in ("Succeeded", "Failed") else status.get("nodeName") or None
    return VmView(f"kubevirt:{key[0]}/{key[1]}", key[0], key[1], "kubevirt", policy, phase, node)


def vm_views(store: ObjectStore) -> list[VmView]:
    """Every VM of every API the cluster serves, by key."""
    return sorted(deckhouse_views(store) + kubevirt_views(store), key=lambda v: v.key)
