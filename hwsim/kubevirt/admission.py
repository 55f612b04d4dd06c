"""virt-api's validating webhooks that nodefence meets
(`pkg/virt-api/webhooks/validating-webhook/admitters`).

Answered before anything is stored, in the webhooks' own words:
- `migration-create-validator.kubevirt.io` on VirtualMachineInstanceMigration CREATE (400): the
  instance must exist ("the VMI "ns/name" does not exist"), not be finished ("Cannot migrate
  VMI in finalized state."), be live-migratable ("Cannot migrate VMI, Reason: ..., Message:
  ...", from its LiveMigratable condition) and have no migration in flight ("in-flight
  migration detected. ...").
- `virt-launcher-eviction-interceptor.kubevirt.io` on `pods/eviction` of a launcher pod (429),
  by the instance's evictionStrategy (its own, else the KubeVirt resource's): None lets the
  eviction through (the pod goes, the guest is shut down); LiveMigrate refuses it for an
  instance that cannot migrate; LiveMigrate, LiveMigrateIfPossible (when it can migrate) and
  External mark the instance (`status.evacuationNodeName`) and refuse: "Eviction triggered
  evacuation of VMI". The evacuation controller (`nodefence.hwsim.kubevirt.migrations`) then
  migrates it; for External, an external controller is expected to act.
"""

from __future__ import annotations

from typing import Any

from nodefence.hwsim.kube.errors import ApiError, BadRequest, NotFound, TooManyRequests
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kubevirt.objects import (
    APP_LABEL,
    DOMAIN_ANNOTATION,
    FINAL,
    KUBEVIRT,
    VMI,
    VMIM,
)
from nodefence.hwsim.virtualization.vm_admission import denied

Obj = dict[str, Any]
MIGRATION_WEBHOOK = "migration-create-validator.kubevirt.io"
EVICTION_WEBHOOK = "virt-launcher-eviction-interceptor.kubevirt.io"
IN_FLIGHT = ("", "Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _migratable(vmi: Obj) -> tuple[bool, str, str]:
    """(can migrate, reason, message) from the LiveMigratable condition."""
    for cond in _dict(vmi.get("status")).get("conditions") or []:
        said = isinstance(cond, dict) and cond.get("type") == "LiveMigratable"
        if said and cond.get("status") == "False":
            return False, str(cond.get("reason") or ""), str(cond.get("message") or "")
    return True, "", ""


class KubevirtWebhooks:
    """The webhooks above on `store`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def install(self) -> None:
        """Register with the store (once)."""
        if not any(getattr(w, "__self__", None) is self for w in self.store.admission):
            self.store.admission.append(self.admit)

    def admit(self, operation: str, rt: ResourceType, obj: Obj, subresource: str) -> None:
        """The store's admission hook: raise to refuse."""
        if operation != "CREATE" or rt.group not in ("", "kubevirt.io"):
            return
        if rt.plural == "virtualmachineinstancemigrations" and not subresource:
            why = self.migration_refusal(obj)
            if why:
                raise BadRequest(denied(MIGRATION_WEBHOOK, why))
        elif rt.plural == "pods" and subresource == "eviction":
            self._intercept_eviction(obj)

    def migration_refusal(self, migration: Obj) -> str:
        """Why the webhook refuses `migration` ("" when it allows it)."""
        meta, spec = _dict(migration.get("metadata")), _dict(migration.get("spec"))
        namespace, name = str(meta.get("namespace") or ""), str(spec.get("vmiName") or "")
        if not name:
            return "spec.vmiName is required"
        try:
            vmi = self.store.get(VMI, name, namespace)
        except NotFound:
            return f'the VMI "{namespace}/{name}" does not exist'
        if _dict(vmi.get("status")).get("phase") in FINAL:
            return "Cannot migrate VMI in finalized state."
        ok, reason, message = _migratable(vmi)
        if not ok:
            return f"Cannot migrate VMI, Reason: {reason}, Message: {message}"
        for other in self.store.list(VMIM, namespace)["items"]:
            if _dict(other.get("spec")).get("vmiName") != name:
                continue
            if _dict(other.get("status")).get("phase", "") in IN_FLIGHT:
                uid = other["metadata"].get("uid", "")
                return (
                    f"in-flight migration detected. Active migration job ({uid}) is currently "
                    f"already in progress for VMI {name}."
                )
        return ""

    def _strategy(self, vmi: Obj) -> str:
        own = _dict(vmi.get("spec")).get("evictionStrategy")
        if own:
            return str(own)
        for kv in self.store.list(KUBEVIRT)["items"]:
            config = _dict(_dict(kv.get("spec")).get("configuration"))
            return str(config.get("evictionStrategy") or "None")
        return "None"

    def _intercept_eviction(self, pod: Obj) -> None:
        meta = _dict(pod.get("metadata"))
        if _dict(meta.get("labels")).get(APP_LABEL) != "virt-launcher":
            return
        if _dict(pod.get("status")).get("phase") in ("Succeeded", "Failed"):
            return
        name = _dict(meta.get("annotations")).get(DOMAIN_ANNOTATION)
        if not name:
            return
        namespace = str(meta.get("namespace") or "")
        try:
            vmi = self.store.get(VMI, str(name), namespace)
        except NotFound:
            raise TooManyRequests(
                denied(EVICTION_WEBHOOK, f"kubevirt failed getting the vmi: {name} not found")
            ) from None
        strategy = self._strategy(vmi)
        ok, _, _ = _migratable(vmi)
        if strategy == "LiveMigrate" and not ok:
            message = (
                f"VMI {name} is configured with an eviction strategy but is not live-migratable"
            )
            raise TooManyRequests(denied(EVICTION_WEBHOOK, message))
        mark = strategy in ("LiveMigrate", "External") or (
            strategy == "LiveMigrateIfPossible" and ok
        )
        if not mark:
            return  # None: evicted as any pod; the guest is shut down
        status = _dict(vmi.get("status"))
        evacuation = f'Eviction triggered evacuation of VMI "{namespace}/{name}"'
        if status.get("evacuationNodeName"):
            raise TooManyRequests(denied(EVICTION_WEBHOOK, f"Evacuation in progress: {evacuation}"))
        node = _dict(pod.get("spec")).get("nodeName")
        if status.get("nodeName") != node:
            raise TooManyRequests(denied(EVICTION_WEBHOOK, "Eviction request for target Pod"))
        try:
            self.store.update(
                VMI, {**vmi, "status": {**status, "evacuationNodeName": node}}, namespace
            )
        except ApiError as err:
            message = f"kubevirt failed marking the vmi for eviction: {err}"
            raise TooManyRequests(denied(EVICTION_WEBHOOK, message)) from None
        raise TooManyRequests(denied(EVICTION_WEBHOOK, evacuation))
