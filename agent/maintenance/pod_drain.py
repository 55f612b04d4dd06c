"""The pods left on a node after its VMs, drained as `kubectl drain --ignore-daemonsets
--delete-emptydir-data` does (pure; `nodefence.agent.maintenance.drain_executor` evicts them).

- `classify_pod`: evict, skip (DaemonSet, static), wait (already deleting) or refuse (no
  controller would recreate it, unless `evict_unmanaged`: kubectl drain's `--force`);
- `eviction_retry_delay`: how long to wait after a PodDisruptionBudget said no;
- `PodDrain`: how it went.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class PodAction(enum.StrEnum):
    """What a drain does with a pod, as `kubectl drain --ignore-daemonsets
    --delete-emptydir-data` decides."""

    EVICT = "evict"
    SKIP_DAEMONSET = "skip-daemonset"  # its DaemonSet would put it straight back
    SKIP_MIRROR = "skip-mirror"  # a static pod: the kubelet owns it, the API cannot remove it
    WAIT_DELETING = "wait-deleting"  # already being deleted
    REFUSE_UNMANAGED = "refuse-unmanaged"  # no controller would recreate it


def _owner_kinds(meta: Mapping[str, Any]) -> list[str]:
    refs = meta.get("ownerReferences") or []
    return [str(r.get("kind")) for r in refs if isinstance(r, dict) and r.get("controller")]


def classify_pod(pod: Mapping[str, Any], evict_unmanaged: bool = False) -> PodAction:
    """What the drain does with `pod`; `evict_unmanaged` evicts pods no controller manages."""
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    if meta.get("deletionTimestamp"):
        return PodAction.WAIT_DELETING
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return PodAction.SKIP_MIRROR
    owners = _owner_kinds(meta)
    if "DaemonSet" in owners:
        return PodAction.SKIP_DAEMONSET
    finished = status.get("phase") in ("Succeeded", "Failed")
    if not owners and not finished and not evict_unmanaged:
        return PodAction.REFUSE_UNMANAGED
    return PodAction.EVICT


def pod_key(pod: Mapping[str, Any]) -> str:
    """`namespace/name` of a pod."""
    meta = _dict(pod.get("metadata"))
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def pod_node(pod: Mapping[str, Any]) -> str:
    """The node a pod is bound to ("" when none)."""
    return str(_dict(pod.get("spec")).get("nodeName") or "")


def pod_running(pod: Mapping[str, Any]) -> bool:
    """The pod may still hold something: it is neither finished nor being deleted."""
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    return not meta.get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed")


def eviction_retry_delay(attempt: int, base: float = 0.5, cap: float = 5.0) -> float:
    """Seconds before asking again after the `attempt`-th refusal (1, 2, ...): doubling, capped
    at kubectl drain's fixed 5 s."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class PodDrain:
    """How the pods after the VMs went."""

    evicted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # DaemonSet and static pods, left by design
    unmanaged: tuple[str, ...] = ()  # refused: no controller would recreate them
    stuck: tuple[tuple[str, str], ...] = ()  # (pod, why) still there at the deadline

    @property
    def ok(self) -> bool:
        """Every pod that had to go is gone."""
        return not self.unmanaged and not self.stuck
