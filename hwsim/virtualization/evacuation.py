"""Evacuation: a VM whose launcher pod eviction was intercepted gets a live migration
(Deckhouse's evacuation controller, `controller/evacuation`).

KubeVirt's eviction interceptor (`nodefence.hwsim.virtualization.vm_admission`) refuses to delete
the launcher pod of a migratable VM and marks the VM `EvictionRequired`. For such a running VM
without an unfinished migration operation, the controller creates an Evict named
`evacuation-<random>`, annotated
`virtualization.deckhouse.io/evacuation`; after failed evacuations it waits, doubling (from
`backoff` seconds, at most a minute). The condition goes once the VM runs elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nodefence.hwsim.kube.store import ObjectStore

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]
EVACUATION_ANNOTATION = "virtualization.deckhouse.io/evacuation"
FINISHED = ("Completed", "Failed", "Superseded")


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


class Evacuation:
    """Creates evacuation operations for the VMs that need one; `check()` each VM per tick."""

    def __init__(self, store: ObjectStore, spend: Callable[[], bool], backoff: float) -> None:
        self.store = store
        self.spend = spend
        self.backoff = backoff
        self._last: dict[Key, float] = {}

    def check(self, vm: Obj, ops: list[Obj], migrating: bool, now: float) -> None:
        """Evacuate `vm` now if it needs it; `ops` are every operation, `migrating` whether a
        migration of it is under way."""
        status = _dict(vm.get("status"))
        required = any(
            c.get("type") == "EvictionRequired" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not required or status.get("phase") != "Running" or migrating:
            return
        meta = vm["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        mine = [
            o
            for o in ops
            if _dict(o.get("spec")).get("virtualMachineName") == key[1]
            and _dict(o.get("metadata")).get("namespace") == key[0]
        ]
        if any(_dict(o.get("status")).get("phase") not in FINISHED for o in mine):
            return
        failed = sum(
            1
            for o in mine
            if EVACUATION_ANNOTATION in (_dict(o.get("metadata")).get("annotations") or {})
            and _dict(o.get("status")).get("phase") == "Failed"
        )
        wait = min(60.0, self.backoff * 2 ** (failed - 1)) if failed else 0.0
        if now - self._last.get(key, float("-inf")) < wait or not self.spend():
            return
        self._last[key] = now
        self.store.create(
            "virtualmachineoperations",
            {
                "apiVersion": "virtualization.deckhouse.io/v1alpha2",
                "kind": "VirtualMachineOperation",
                "metadata": {
                    "generateName": "evacuation-",
                    "namespace": key[0],
                    "annotations": {EVACUATION_ANNOTATION: "true"},
                },
                "spec": {"type": "Evict", "virtualMachineName": key[1]},
            },
            key[0],
        )
        log.info("vm %s/%s: eviction required: evacuation operation created", *key)
