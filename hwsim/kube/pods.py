"""What the API server does to Pods beyond generic storage: defaults on create, graceful deletion.

Pure functions over pod dicts, as the real server's pod strategy and admission decide:
- on create, `spec.terminationGracePeriodSeconds` defaults to 30 and the DefaultTolerationSeconds
  admission plugin adds NoExecute tolerations for `node.kubernetes.io/not-ready` and
  `node.kubernetes.io/unreachable` with `tolerationSeconds: 300`, unless the pod has its own;
- a DELETE of a pod bound to a node and not yet terminal (Succeeded/Failed) is graceful: the pod
  is marked with `deletionTimestamp` = now + grace and `deletionGracePeriodSeconds` and stays,
  Terminating, until its kubelet deletes it with grace 0 (or someone force-deletes it). The grace
  is the request's `gracePeriodSeconds`, else the pod's `terminationGracePeriodSeconds`. An
  unscheduled or terminal pod, or grace 0, goes at once. A second DELETE may only shorten a
  pending grace period (pod strategy `CheckGracefulDelete`, `rest.BeforeDelete`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nodefence.hwsim.kube.objects import timestamp
from nodefence.hwsim.kube.resources import ResourceType

Obj = dict[str, Any]

DEFAULT_GRACE_SECONDS = 30
DEFAULT_TOLERATION_SECONDS = 300
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
TERMINAL_PHASES = ("Succeeded", "Failed")


def is_pod(rt: ResourceType) -> bool:
    """Whether `rt` is core/v1 pods."""
    return rt.built_in and rt.group == "" and rt.plural == "pods"


def is_terminal(pod: Obj) -> bool:
    """Succeeded or Failed: nothing runs any more."""
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def is_terminating(pod: Obj) -> bool:
    """Marked for deletion (Terminating in kubectl)."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def admit(pod: Obj, toleration_seconds: float = DEFAULT_TOLERATION_SECONDS) -> Obj:
    """The pod as create stores it: grace and default tolerations filled in (a copy).
    `toleration_seconds` is the admission plugin's --default-*-toleration-seconds."""
    out = copy.deepcopy(pod)
    spec = out.setdefault("spec", {})
    if not isinstance(spec, dict):
        return out  # not a pod spec at all; validation is not this emulator's business
    spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    tolerations = list(spec.get("tolerations") or [])
    for key in (NOT_READY, UNREACHABLE):
        if not any(_tolerates_key(t, key) for t in tolerations if isinstance(t, dict)):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": round(toleration_seconds),
                }
            )
    spec["tolerations"] = tolerations
    return out


def _tolerates_key(toleration: Obj, key: str) -> bool:
    effect = toleration.get("effect") or ""
    if effect not in ("", "NoExecute"):
        return False
    return toleration.get("key") == key or (
        not toleration.get("key") and toleration.get("operator") == "Exists"
    )


@dataclass(frozen=True)
class DeletePlan:
    """What a DELETE does to a pod: `remove` it now, or store `marked` (Terminating)."""

    remove: bool
    marked: Obj | None = None  # the pod with its (new) deletion marks, when not removed


def plan_delete(pod: Obj, grace: int | None, now: datetime) -> DeletePlan:
    """How a DELETE with `gracePeriodSeconds` = `grace` (None: not given) treats `pod`."""
    meta = pod.get("metadata") or {}
    period = grace
    if period is None:
        period = int((pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 0)
    if not (pod.get("spec") or {}).get("nodeName") or is_terminal(pod):
        period = 0
    period = max(period, 0)
    if meta.get("deletionTimestamp"):
        pending = meta.get("deletionGracePeriodSeconds")
        if not pending:
            return DeletePlan(remove=True)
        if grace is None or period >= int(pending):
            return DeletePlan(remove=False)  # graceful deletion already pending: unchanged
        if period == 0:
            return DeletePlan(remove=True)
        started = _parse(meta["deletionTimestamp"]) - timedelta(seconds=int(pending))
        return DeletePlan(False, _marked(pod, started + timedelta(seconds=period), period))
    if period == 0:
        return DeletePlan(remove=True)
    return DeletePlan(False, _marked(pod, now + timedelta(seconds=period), period))


def _marked(pod: Obj, when: datetime, period: int) -> Obj:
    out = copy.deepcopy(pod)
    meta = out["metadata"]
    if not meta.get("deletionTimestamp"):
        meta["generation"] = int(meta.get("generation") or 1) + 1
    meta["deletionTimestamp"] = timestamp(when)
    meta["deletionGracePeriodSeconds"] = period
    return out


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def tolerates(pod: Obj, taint: Obj) -> tuple[bool, float | None]:
    """Whether the pod tolerates a NoExecute `taint`, and for how long (None: forever)."""
    for t in (pod.get("spec") or {}).get("tolerations") or []:
        if not isinstance(t, dict):
            continue
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("key") and t.get("key") != taint.get("key"):
            continue
        if not t.get("key") and t.get("operator") != "Exists":
            continue
        equal = t.get("operator", "Equal") == "Equal" and t.get("key")
        if equal and (t.get("value") or "") != (taint.get("value") or ""):
            continue
        seconds = t.get("tolerationSeconds")
        return True, None if seconds is None else max(0.0, float(seconds))
    return False, 0.0
