"""The admission webhooks of Deckhouse Virtualization (and KubeVirt's eviction interceptor).

Validating webhooks answer before anything is stored, so a refused request changes nothing and
the client sees the webhook's own words:
- `vmop.virtualization-controller.validate.d8-virtualization` on VirtualMachineOperation
  CREATE (403 Forbidden), as the controller's `vmop_webhook.go`:
  - `activeVMOPValidator`: no new operation while an unfinished one (not Completed, Failed or
    Superseded; a Terminating one counts) exists for the VM, unless the new one may supersede
    it (`supersede.CanSupersede`: a Stop or Restart supersedes an Evict, a forced Stop or
    Restart a Stop or Restart that was not forced, a Stop a Start);
  - `localStorageMigrationValidator`, Community Edition only: no Evict or Migrate of a VM with
    a VirtualDisk whose PersistentVolumeClaim is not ReadWriteMany (checked where the cluster
    serves VirtualDisks and PVCs);
  - `nodeSelectorValidator`: `spec.migrate.nodeSelector` is not in the Community Edition.
- `virt-launcher-eviction-interceptor.kubevirt.io` on `pods/eviction`: a VM's launcher pod is
  never simply deleted by an eviction. For a migratable VM the request is refused (429) with
  "Eviction triggered evacuation", and the VM gets the condition `EvictionRequired`, on which the
  controller creates an `evacuation-` operation (a live migration); a VM that cannot migrate
  refuses the eviction.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kube.errors import ApiError, Forbidden, TooManyRequests
from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.virtualization.vms import VM_LABEL, condition

Obj = dict[str, Any]
VMOP_WEBHOOK = "vmop.virtualization-controller.validate.d8-virtualization"
EVICTION_WEBHOOK = "virt-launcher-eviction-interceptor.kubevirt.io"
FINISHED = frozenset({"Completed", "Failed", "Superseded"})
MIGRATIONS = frozenset({"Evict", "Migrate"})
EVICTION_REQUIRED = "EvictionRequired"


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def denied(webhook: str, message: str) -> str:
    """The API server's words for a webhook's refusal."""
    return f'admission webhook "{webhook}" denied the request: {message}'


def can_supersede(old: Obj, new: Obj) -> bool:
    """Whether operation `new` may replace the unfinished `old` of the same VM."""
    o, n = _dict(old.get("spec")), _dict(new.get("spec"))
    if o.get("virtualMachineName") != n.get("virtualMachineName"):
        return False
    old_type, new_type = o.get("type"), n.get("type")
    old_force, new_force = bool(o.get("force")), bool(n.get("force"))
    if old_type == "Start":
        return new_type == "Stop"
    if old_type in MIGRATIONS:
        return new_type in ("Stop", "Restart")
    if old_type in ("Stop", "Restart"):
        return not old_force and new_force and new_type in ("Stop", "Restart")
    return False


def unfinished(op: Obj) -> bool:
    """Not Completed, Failed or Superseded (the controller's `IsFinished`)."""
    return _dict(op.get("status")).get("phase") not in FINISHED


class VirtualizationWebhooks:
    """The webhooks above on `store`; `edition` is `CE` or `EE`."""

    def __init__(self, store: ObjectStore, edition: str = "CE") -> None:
        self.store = store
        self.edition = edition

    def install(self) -> None:
        """Register with the store (once)."""
        if not any(getattr(w, "__self__", None) is self for w in self.store.admission):
            self.store.admission.append(self.admit)

    def admit(self, operation: str, rt: ResourceType, obj: Obj, subresource: str) -> None:
        """The store's admission hook: raise to refuse."""
        if operation != "CREATE":
            return
        if rt.plural == "virtualmachineoperations" and not subresource:
            why = self.vmop_refusal(obj)
            if why:
                raise Forbidden(denied(VMOP_WEBHOOK, why))
        elif rt.plural == "pods" and subresource == "eviction":
            self._intercept_eviction(obj)

    # ---- VirtualMachineOperation -----------------------------------------------------------

    def vmop_refusal(self, op: Obj) -> str:
        """Why the webhook refuses to create `op` ("" when it allows it)."""
        meta, spec = _dict(op.get("metadata")), _dict(op.get("spec"))
        namespace, vm = str(meta.get("namespace") or ""), spec.get("virtualMachineName")
        if _dict(spec.get("migrate")).get("nodeSelector") and self.edition == "CE":
            return "the `nodeSelector` field is not available in the Community Edition version"
        if spec.get("type") in MIGRATIONS and self.edition == "CE" and self._local_disk(op):
            return (
                "migration of virtual machines with local (RWO) virtual disks is available only "
                "in the Enterprise Edition (EE)"
            )
        for other in self.store.list("virtualmachineoperations", namespace)["items"]:
            if _dict(other.get("spec")).get("virtualMachineName") != vm or not unfinished(other):
                continue
            if not can_supersede(other, op):
                name = other["metadata"]["name"]
                return (
                    f'VMOP cannot be executed now. Previously created operation "{name}" '
                    "should finish first"
                )
        return ""

    def _local_disk(self, op: Obj) -> bool:
        """Whether the VM has a VirtualDisk on a PVC without ReadWriteMany (where served)."""
        meta, spec = _dict(op.get("metadata")), _dict(op.get("spec"))
        namespace = str(meta.get("namespace") or "")
        try:
            vm = self.store.get("virtualmachines", str(spec.get("virtualMachineName")), namespace)
            for ref in _dict(vm.get("spec")).get("blockDeviceRefs") or []:
                if _dict(ref).get("kind") != "VirtualDisk":
                    continue
                disk = self.store.get("virtualdisks", str(ref.get("name")), namespace)
                claim = _dict(_dict(disk.get("status")).get("target")).get("persistentVolumeClaim")
                if not claim:
                    continue
                pvc = self.store.get("persistentvolumeclaims", str(claim), namespace)
                if "ReadWriteMany" not in (_dict(pvc.get("spec")).get("accessModes") or []):
                    return True
        except ApiError:  # no such VM, or the cluster serves no disks or claims: nothing local
            return False
        return False

    # ---- pods/eviction ---------------------------------------------------------------------

    def _intercept_eviction(self, pod: Obj) -> None:
        meta, spec = _dict(pod.get("metadata")), _dict(pod.get("spec"))
        name = _dict(meta.get("labels")).get(VM_LABEL)
        if not name or _dict(pod.get("status")).get("phase") != "Running":
            return
        namespace = str(meta.get("namespace") or "")
        try:
            vm = self.store.get("virtualmachines", str(name), namespace)
        except ApiError:
            return
        status = _dict(vm.get("status"))
        if status.get("nodeName") != spec.get("nodeName") or status.get("phase") not in (
            "Running",
            "Migrating",
        ):
            return  # not the pod the VM runs in (a target, a leftover): evicted as any pod
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        migratable = [c for c in conditions if c.get("type") == "Migratable"]
        if migratable and migratable[0].get("status") == "False":
            message = (
                f"VMI {name} is configured with an eviction strategy but is not live-migratable"
            )
            raise TooManyRequests(denied(EVICTION_WEBHOOK, message))
        if not any(c.get("type") == EVICTION_REQUIRED for c in conditions):
            conditions.append(
                condition(
                    EVICTION_REQUIRED,
                    True,
                    EVICTION_REQUIRED,
                    "VirtualMachine should be evicted from current node or restarted.",
                    timestamp(self.store.clock()),
                )
            )
            self.store.patch(
                "virtualmachines",
                str(name),
                {"status": {"conditions": conditions}},
                namespace,
                subresource="status",
            )
        message = f'Eviction triggered evacuation of VMI "{namespace}/{name}"'
        raise TooManyRequests(denied(EVICTION_WEBHOOK, message))
