"""Named failure-detection profiles (fast / default / conservative) and their validation.

A `DetectionProfile` says how often agents heartbeat, when the leader suspects a silent node,
when it may call it dead, and which second signals must agree first (`require`) or may overrule
(`veto`). Every threshold is in seconds. `profile_from_mapping` builds one from config: start from
a named profile (`profile:`, default `default`) and override fields; any problem raises
`ProfileError` naming the field.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nodefence.agent.brief import brief

MAX_INTERVAL = 60.0
_SECONDS = ("interval", "suspect_after", "fence_after", "peer_probe_timeout", "kubelet_stale_after")


class Signal(enum.StrEnum):
    """An independent source of evidence about a silent node, besides its heartbeats."""

    PEERS = "peers"  # other agents probe the node's agent health endpoint directly
    KUBELET = "kubelet"  # the kubelet's Lease in kube-node-lease and the Node's Ready condition


class NoPeers(enum.StrEnum):
    """What a profile that requires peers does when no peer is available to probe."""

    KUBELET = "kubelet"  # require the kubelet signal instead
    HOLD = "hold"  # never declare the node dead; it stays suspect


class ProfileError(ValueError):
    """An invalid detection setting; `field` names it, the message says what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class DetectionProfile:
    """Thresholds and second-signal rules of the failure detector.

    `suspect_after` / `fence_after`: seconds without a heartbeat (leader's clock) before a node
    is suspect / may be declared dead. `peer_quorum`: peer reports needed (all available peers
    when fewer exist). `kubelet_stale_after`: seconds without a seen kubelet Lease renewal before
    the kubelet counts as stale. Invariant: 0 < interval < suspect_after <= fence_after.
    """

    interval: float
    suspect_after: float
    fence_after: float
    peer_quorum: int
    peer_probe_timeout: float
    kubelet_stale_after: float
    require: frozenset[Signal]
    veto: frozenset[Signal]
    on_no_peers: NoPeers

    def __post_init__(self) -> None:
        for name in _SECONDS:
            _positive_seconds(name, getattr(self, name))
        if self.interval > MAX_INTERVAL:
            raise ProfileError("interval", f"at most {MAX_INTERVAL:g} s, got {self.interval:g}")
        if self.suspect_after <= self.interval:
            raise ProfileError(
                "suspect_after",
                f"must exceed interval ({self.interval:g} s), else healthy nodes flap to suspect"
                f" between heartbeats; got {self.suspect_after:g}",
            )
        if self.fence_after < self.suspect_after:
            raise ProfileError(
                "fence_after",
                f"must be at least suspect_after ({self.suspect_after:g} s);"
                f" got {self.fence_after:g}",
            )
        if isinstance(self.peer_quorum, bool) or not isinstance(self.peer_quorum, int):
            raise ProfileError("peer_quorum", f"must be an integer, got {brief(self.peer_quorum)}")
        if self.peer_quorum < 1:
            raise ProfileError("peer_quorum", f"must be at least 1, got {self.peer_quorum}")
        if not self.require:
            raise ProfileError(
                "require",
                "name at least one second signal (peers, kubelet): heartbeats alone"
                " never prove a node dead",
            )

    @property
    def peer_window(self) -> float:
        """How long a peer report counts as evidence: one full `fence_after`."""
        return self.fence_after


def _positive_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(name, f"must be a number of seconds, got {brief(value)}")
    if not 0 < value <= 1e9 or not math.isfinite(value):
        raise ProfileError(name, f"must be a number of seconds in (0, 1e9], got {brief(value)}")


def _signals(name: str, value: object) -> frozenset[Signal]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ProfileError(name, f"must be a list of signals (peers, kubelet), got {brief(value)}")
    items = list(value)
    out: set[Signal] = set()
    for item in items:
        try:
            out.add(Signal(item))
        except ValueError:
            raise ProfileError(
                name, f"unknown signal {brief(item)}; choose from peers, kubelet"
            ) from None
    if len(out) != len(items):
        raise ProfileError(name, f"lists a signal twice: {brief(items)}")
    return frozenset(out)


FAST = DetectionProfile(
    interval=0.5,
    suspect_after=1.0,
    fence_after=2.0,
    peer_quorum=2,
    peer_probe_timeout=0.5,
    kubelet_stale_after=15.0,
    require=frozenset({Signal.PEERS}),
    veto=frozenset({Signal.KUBELET}),
    on_no_peers=NoPeers.KUBELET,
)
# A powered-off node: suspect at 2.5 s, peers probe (1 s timeout), dead at 4 s: well within 6 s.
DEFAULT = DetectionProfile(
    interval=1.0,
    suspect_after=2.5,
    fence_after=4.0,
    peer_quorum=2,
    peer_probe_timeout=1.0,
    kubelet_stale_after=20.0,
    require=frozenset({Signal.PEERS}),
    veto=frozenset({Signal.KUBELET}),
    on_no_peers=NoPeers.KUBELET,
)
CONSERVATIVE = DetectionProfile(
    interval=2.0,
    suspect_after=10.0,
    fence_after=30.0,
    peer_quorum=2,
    peer_probe_timeout=2.0,
    kubelet_stale_after=40.0,
    require=frozenset({Signal.PEERS, Signal.KUBELET}),
    veto=frozenset({Signal.KUBELET}),
    on_no_peers=NoPeers.KUBELET,
)
PROFILES: Mapping[str, DetectionProfile] = {
    "fast": FAST,
    "default": DEFAULT,
    "conservative": CONSERVATIVE,
}


def profile_from_mapping(data: Mapping[str, Any]) -> DetectionProfile:
    """A profile from config: `profile:` names the base (default `default`), other keys override.

    Raises `ProfileError` naming the field for an unknown key, a wrong type or value, or an
    inconsistent combination (e.g. `fence_after` below `suspect_after`).
    """
    base_name = data.get("profile", "default")
    if not isinstance(base_name, str) or base_name not in PROFILES:
        raise ProfileError(
            "profile", f"unknown profile {brief(base_name)}; choose from {', '.join(PROFILES)}"
        )
    known = {f.name for f in fields(DetectionProfile)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "profile":
            continue
        if key not in known:
            raise ProfileError(key, f"unknown setting; known: profile, {', '.join(sorted(known))}")
        if key in ("require", "veto"):
            changes[key] = _signals(key, value)
        elif key == "on_no_peers":
            try:
                changes[key] = NoPeers(value)
            except ValueError:
                raise ProfileError(key, f"must be kubelet or hold, got {brief(value)}") from None
        elif key == "peer_quorum":
            changes[key] = value  # type checked in __post_init__
        else:
            _positive_seconds(key, value)
            changes[key] = float(value)
    return replace(PROFILES[base_name], **changes)
