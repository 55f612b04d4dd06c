"""The pod eviction subresource with minimal PodDisruptionBudget checks.

The real server refuses an eviction (429) when the pod's PodDisruptionBudget allows no more
disruptions. Here the budget is computed on the spot from the pods that match the PDB selector
in the pod's namespace: healthy pods are Running, not deleting, and not marked not-Ready.
`expectedPods` is the number of matching pods (no controller scale lookup).
"""

from __future__ import annotations

import math
from typing import Any

from nodefence.hwsim.kube.errors import BadRequest, InternalError, TooManyRequests
from nodefence.hwsim.kube.selectors import from_label_selector_object, labels_match
from nodefence.hwsim.kube.store import ObjectStore

Obj = dict[str, Any]


def _healthy(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") != "Running":
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "False":
            return False
    return True


def _count(value: Any, total: int) -> int:
    """An IntOrString budget: `2` or `"50%"` of `total` (rounded up, as the controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def disruptions_allowed(pdb: Obj, pods: list[Obj]) -> tuple[int, int, int]:
    """(allowed, desired healthy, currently healthy) for a PDB over its matching pods."""
    spec = pdb.get("spec") or {}
    healthy = sum(1 for p in pods if _healthy(p))
    expected = len(pods)
    if spec.get("minAvailable") is not None:
        desired = _count(spec["minAvailable"], expected)
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _count(spec["maxUnavailable"], expected))
    else:
        desired = 0
    return max(0, healthy - desired), desired, healthy


def evict(
    store: ObjectStore, namespace: str, name: str, body: Obj, *, dry_run: bool = False
) -> Obj:
    """Evict a pod (delete it, gracefully when it is bound to a node) unless a
    PodDisruptionBudget forbids it; the 201 Status body. A dry run checks and changes nothing."""
    if body.get("kind") not in (None, "Eviction"):
        raise BadRequest(f"expected an Eviction, got {body.get('kind')}")
    if (body.get("metadata") or {}).get("name", name) != name:
        raise BadRequest("name in URL does not match name in Eviction object")
    with store.transaction():
        pod = store.get("pods", name, namespace)
        store.admit("CREATE", "pods", pod, "eviction")  # e.g. KubeVirt's: evacuate, not delete
        if _healthy(pod):
            all_pods = store.list("pods", namespace)["items"]
            pdbs = []
            for pdb in store.list("poddisruptionbudgets", namespace)["items"]:
                selector = from_label_selector_object((pdb.get("spec") or {}).get("selector"))
                if selector and labels_match(selector, pod):
                    pdbs.append((pdb, [p for p in all_pods if labels_match(selector, p)]))
            if len(pdbs) > 1:
                raise InternalError(
                    "This pod has more than one PodDisruptionBudget, which the eviction "
                    "subresource does not support."
                )
            for pdb, covered in pdbs:
                allowed, desired, healthy = disruptions_allowed(pdb, covered)
                if allowed <= 0:
                    raise TooManyRequests(
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        causes=[
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb['metadata']['name']} "
                                f"needs {desired} healthy pods and has {healthy} currently",
                            }
                        ],
                    )
        options = body.get("deleteOptions") or {}
        grace = options.get("gracePeriodSeconds")
        store.delete(
            "pods",
            name,
            namespace,
            preconditions=options.get("preconditions"),
            propagation_policy=options.get("propagationPolicy"),
            grace_period_seconds=None if grace is None else int(grace),
            dry_run=dry_run,
        )
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
