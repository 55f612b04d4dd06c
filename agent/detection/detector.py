"""Pure failure detector: facts stamped with the leader's clock in, per-node verdicts out.

The caller feeds heartbeats (`observe`), kubelet Lease sightings (`observe_kubelet`) and peer
probe reports (`observe_peer_report`), each with `now` from the leader's monotonic clock at
receipt; sender and API-server clocks are never used. `evaluate(now)` classifies every known
node. A node silent for `suspect_after` is SUSPECT; past `fence_after` the second signals decide
(`judge`): DEAD only when every required signal confirms and no veto or required signal shows
life, AGENT_LOST ("agent lost, node alive") when one does, else it stays SUSPECT awaiting
evidence. Whether a DEAD node may be fenced is `nodefence.agent.detection.policy`'s question, not
this module's. Create one detector per heartbeat history: a leader's own, or the one a warm standby
kept and handed over (`nodefence.agent.leader.ingest_loop`), so UNKNOWN means "not heard since this
history began".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodefence.agent.detection.profiles import DetectionProfile, NoPeers, Signal
from nodefence.agent.heartbeat.codec import Heartbeat


class NodeHealth(enum.StrEnum):
    """The detector's classification of one node."""

    UNKNOWN = "unknown"  # expected, not heard since this leader started, window not over
    HEALTHY = "healthy"
    SUSPECT = "suspect"  # silent for suspect_after, or past fence_after without confirmation
    DEAD = "dead"  # silent past fence_after and the required second signals agree
    AGENT_LOST = "agent-lost"  # silent past fence_after, but a second signal shows the node alive


UNHEALTHY = frozenset({NodeHealth.SUSPECT, NodeHealth.DEAD, NodeHealth.AGENT_LOST})


class Evidence(enum.StrEnum):
    """What one second signal says about a silent node."""

    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


# The classes built every judging round (`Reading`, `PeerSummary`, `NodeVerdict`) or for every
# fact observed (`KubeletFacts`, `PeerReport`) are frozen dataclasses with a hand-written
# `__init__` that fills the instance dict directly: the generated frozen `__init__` makes one
# `object.__setattr__` call per field, three times the cost.


@dataclass(frozen=True, init=False)
class Reading:
    """One signal's evidence and the reason, in words an operator reads."""

    evidence: Evidence
    reason: str

    def __init__(self, evidence: Evidence, reason: str) -> None:
        d = self.__dict__
        d["evidence"] = evidence
        d["reason"] = reason


@dataclass(frozen=True, init=False)
class KubeletFacts:
    """What the leader saw of a node's kubelet, in leader-monotonic seconds.

    `renewed_at`: when the leader last saw the Lease's renewTime change (None: not since it began
    watching at `watched_since`). `ready`: the Node's Ready condition (None: Unknown or absent).
    """

    renewed_at: float | None
    ready: bool | None
    watched_since: float

    def __init__(self, renewed_at: float | None, ready: bool | None, watched_since: float) -> None:
        d = self.__dict__
        d["renewed_at"] = renewed_at
        d["ready"] = ready
        d["watched_since"] = watched_since

    def age(self, now: float) -> float:
        """Seconds since a renewal was last seen (or since watching began, if none was)."""
        seen = self.renewed_at if self.renewed_at is not None else self.watched_since
        return max(0.0, now - seen)


@dataclass(frozen=True, init=False)
class PeerReport:
    """A peer's latest probe of a node's agent health endpoint, stamped on receipt."""

    reachable: bool
    at: float

    def __init__(self, reachable: bool, at: float) -> None:
        d = self.__dict__
        d["reachable"] = reachable
        d["at"] = at


@dataclass(frozen=True, init=False)
class PeerSummary:
    """Fresh peer reports about one node: how many say reachable / unreachable, of how many."""

    reachable: int = 0
    unreachable: int = 0
    available: int = 0  # peers that can probe: healthy other nodes and fresh reporters
    needed: int = 0  # reports needed to confirm: min(peer_quorum, available)

    def __init__(
        self, reachable: int = 0, unreachable: int = 0, available: int = 0, needed: int = 0
    ) -> None:
        d = self.__dict__
        d["reachable"] = reachable
        d["unreachable"] = unreachable
        d["available"] = available
        d["needed"] = needed


_NO_PEERS = PeerSummary()


@dataclass(frozen=True, init=False)
class NodeVerdict:
    """The detector's view of one node at one instant; ages in seconds, None when unknown."""

    node: str
    health: NodeHealth
    since_last_heartbeat: float | None
    kubelet_age: float | None
    kubelet_ready: bool | None
    peers: PeerSummary
    reason: str

    def __init__(
        self,
        node: str,
        health: NodeHealth,
        since_last_heartbeat: float | None,
        kubelet_age: float | None,
        kubelet_ready: bool | None,
        peers: PeerSummary,
        reason: str,
    ) -> None:
        d = self.__dict__
        d["node"] = node
        d["health"] = health
        d["since_last_heartbeat"] = since_last_heartbeat
        d["kubelet_age"] = kubelet_age
        d["kubelet_ready"] = kubelet_ready
        d["peers"] = peers
        d["reason"] = reason

    @property
    def unhealthy(self) -> bool:
        """SUSPECT, DEAD or AGENT_LOST: counts towards the storm guard, wants peer probes."""
        return self.health in UNHEALTHY


# A silent node's place in `FailureDetector.evaluate`'s list until its verdict is made.
_PENDING = NodeVerdict("", NodeHealth.UNKNOWN, None, None, None, _NO_PEERS, "")


def kubelet_reading(
    facts: KubeletFacts | None, last_heartbeat: float, now: float, stale_after: float
) -> Reading:
    """The kubelet signal about a node last heard at `last_heartbeat` (callers pass the time
    the next heartbeat was due, so a renewal made just before the node died proves nothing).

    ALIVE: a renewal seen after the last heartbeat and no older than `stale_after`. DEAD: no such
    renewal, and the Lease is stale (no renewal seen for `stale_after`) or Ready is not True.
    UNKNOWN: not watched yet, or fresh and Ready but not renewed since the last heartbeat.
    """
    if facts is None:
        return Reading(Evidence.UNKNOWN, "kubelet Lease not observed yet")
    age = facts.age(now)
    if facts.renewed_at is not None and facts.renewed_at > last_heartbeat and age <= stale_after:
        return Reading(
            Evidence.ALIVE,
            f"kubelet Lease renewed {age:.1f} s ago, after the last heartbeat",
        )
    if age > stale_after:
        return Reading(
            Evidence.DEAD,
            f"kubelet Lease not renewed for {age:.1f} s (stale after {stale_after:g} s)",
        )
    if facts.ready is not True:
        state = "Unknown" if facts.ready is None else "False"
        return Reading(
            Evidence.DEAD, f"kubelet Lease not renewed since the last heartbeat, Ready={state}"
        )
    return Reading(
        Evidence.UNKNOWN,
        f"kubelet Lease fresh ({age:.1f} s) but not renewed since the last heartbeat",
    )


def peer_reading(
    reports: Mapping[str, PeerReport],
    last_heartbeat: float,
    now: float,
    *,
    window: float,
    available: int,
    quorum: int,
) -> tuple[Reading, PeerSummary]:
    """The peer signal from each peer's latest report; fresh means after the last heartbeat and
    within `window` of `now`.

    DEAD: at least min(quorum, available) fresh reports say unreachable, each newer than every
    fresh reachable report. ALIVE: the newest fresh report says reachable. Else UNKNOWN.
    """
    # One pass over the reports (this runs for every silent node, every round).
    ok = 0
    latest_ok: float | None = None
    peer = ""  # of the newest fresh reachable reports, the first by name
    bad: list[tuple[str, float]] = []
    latest_bad: float | None = None
    for p, r in reports.items():
        at = r.at
        if at > last_heartbeat and now - at <= window:
            if r.reachable:
                ok += 1
                if latest_ok is None or at > latest_ok or (at == latest_ok and p < peer):
                    latest_ok, peer = at, p
            else:
                bad.append((p, at))
                if latest_bad is None or at > latest_bad:
                    latest_bad = at
    confirming = sorted(p for p, at in bad if latest_ok is None or at > latest_ok)
    needed = min(quorum, available)
    summary = PeerSummary(ok, len(bad), available, needed)
    if latest_ok is not None and (latest_bad is None or latest_ok >= latest_bad):
        return Reading(
            Evidence.ALIVE, f"peer {peer} reached the agent {now - latest_ok:.1f} s ago"
        ), summary
    if available == 0:
        return Reading(Evidence.UNKNOWN, "no peer available to probe it"), summary
    lowered = (
        f"; only {available} peer(s) available, quorum {quorum} lowered to {needed}"
        if needed < quorum
        else ""
    )
    if len(confirming) >= needed:
        return Reading(
            Evidence.DEAD,
            f"peers {', '.join(confirming)} cannot reach the agent ({needed} needed{lowered})",
        ), summary
    return Reading(
        Evidence.UNKNOWN,
        f"{len(confirming)} of {needed} needed peer reports say unreachable{lowered}",
    ), summary


def judge(
    profile: DetectionProfile, peers: Reading, kubelet: Reading, peers_available: int
) -> tuple[NodeHealth, str]:
    """DEAD, AGENT_LOST or SUSPECT for a node silent past `fence_after`, with the reason.

    Any signal in `require` or `veto` showing life gives AGENT_LOST. With no peer available, a
    profile requiring peers holds (SUSPECT) or requires the kubelet instead (`on_no_peers`).
    DEAD needs every required signal to say DEAD; otherwise SUSPECT, awaiting evidence.
    """
    # The signals in their order (peers, then kubelet), as pairs: no dict or set built per call.
    readings = ((Signal.PEERS, peers), (Signal.KUBELET, kubelet))
    veto, required = profile.veto, profile.require
    for s, r in readings:
        if (s in veto or s in required) and r.evidence is Evidence.ALIVE:
            return NodeHealth.AGENT_LOST, f"agent lost, node alive: {r.reason}"
    prefix = ""
    if Signal.PEERS in required and peers_available == 0:
        if profile.on_no_peers is NoPeers.HOLD:
            return NodeHealth.SUSPECT, "no peer available to probe it; held (on_no_peers: hold)"
        required = frozenset((Signal.KUBELET,))  # (require - {peers}) | {kubelet}
        prefix = "no peer available to probe it, the kubelet decides (on_no_peers: kubelet); "
    pending = [r.reason for s, r in readings if s in required and r.evidence is not Evidence.DEAD]
    if pending:
        return NodeHealth.SUSPECT, f"{prefix}awaiting second signal: {'; '.join(pending)}"
    return NodeHealth.DEAD, prefix + "; ".join(r.reason for s, r in readings if s in required)


@dataclass
class _Node:
    since: float  # when this leader began expecting or first heard it
    last_heartbeat: float | None = None
    announced_interval: float | None = None


@dataclass
class FailureDetector:
    """The leader's last-seen table and second-signal facts; never reads a clock itself."""

    profile: DetectionProfile
    _nodes: dict[str, _Node] = field(default_factory=dict, init=False, repr=False)
    _kubelet: dict[str, KubeletFacts] = field(default_factory=dict, init=False, repr=False)
    _peers: dict[str, dict[str, PeerReport]] = field(default_factory=dict, init=False, repr=False)

    def expect(self, node: str, now: float) -> None:
        """Track `node` from `now` even if it never sends: UNKNOWN for one `fence_after`, then
        judged as silent since `now`. No effect on a node already tracked."""
        if node not in self._nodes:
            self._nodes[node] = _Node(since=now)

    def forget(self, node: str) -> None:
        """Drop `node` and its facts (it left the cluster); its reports about others too."""
        self._nodes.pop(node, None)
        self._kubelet.pop(node, None)
        self._peers.pop(node, None)
        for reports in self._peers.values():
            reports.pop(node, None)

    def observe(self, hb: Heartbeat, now: float) -> None:
        """Record a heartbeat the leader received at `now` (already decoded and de-duplicated)."""
        st = self._nodes.get(hb.node)
        if st is None:  # (not `setdefault`: that would build a _Node for every heartbeat)
            st = self._nodes[hb.node] = _Node(since=now)
        st.last_heartbeat = now if st.last_heartbeat is None else max(st.last_heartbeat, now)
        st.announced_interval = hb.interval

    def observe_kubelet(
        self, node: str, renewed_at: float | None, ready: bool | None, now: float
    ) -> None:
        """Record a look at `node`'s kubelet Lease and Ready condition made at `now`.

        `renewed_at` is when the leader saw renewTime change, on the leader's clock (None: no
        change seen yet); a later look never moves it backwards or forgets it.
        """
        old = self._kubelet.get(node)
        if old is None:
            self._kubelet[node] = KubeletFacts(renewed_at, ready, watched_since=now)
            return
        if renewed_at is None or (old.renewed_at is not None and old.renewed_at > renewed_at):
            renewed_at = old.renewed_at
        self._kubelet[node] = KubeletFacts(renewed_at, ready, old.watched_since)

    def observe_peer_report(self, node: str, peer: str, reachable: bool, now: float) -> None:
        """Record that `peer` could (or could not) reach `node`'s agent, as received at `now`.

        Only each peer's latest report counts; a node reporting on itself is ignored.
        """
        if peer != node:
            self._peers.setdefault(node, {})[peer] = PeerReport(reachable, now)

    def peer_reports(self, node: str) -> dict[str, PeerReport]:
        """Each peer's latest report about `node` (a copy; for the fence evidence)."""
        return dict(self._peers.get(node, {}))

    def tracked(self) -> list[str]:
        """Every node expected or heard, sorted."""
        return sorted(self._nodes)

    def last_heartbeat(self, node: str) -> float | None:
        """When the leader last received a heartbeat of `node`, or None."""
        st = self._nodes.get(node)
        return st.last_heartbeat if st else None

    def evaluate(self, now: float) -> list[NodeVerdict]:
        """Verdicts for every expected or heard node at `now`, sorted by node name."""
        p = self.profile
        suspect_after = p.suspect_after
        kubelets = self._kubelet
        # One pass: a silent node's verdict needs the whole healthy set, so it is judged after
        # the loop, into the place kept for it.
        healthy_names: list[str] = []
        silent: list[tuple[int, str, _Node]] = []
        verdicts: list[NodeVerdict] = []
        for n, st in sorted(self._nodes.items()):
            last = st.last_heartbeat
            if last is not None:
                since = now - last
                if since < suspect_after:
                    healthy_names.append(n)
                age = max(0.0, since)
                if age < suspect_after:
                    # The common case, kept O(1): a healthy node needs no second signal.
                    kubelet = kubelets.get(n)
                    verdicts.append(
                        NodeVerdict(
                            n,
                            NodeHealth.HEALTHY,
                            age,
                            kubelet.age(now) if kubelet else None,
                            kubelet.ready if kubelet else None,
                            _NO_PEERS,
                            f"last heartbeat {age:.1f} s ago",
                        )
                    )
                    continue
            silent.append((len(verdicts), n, st))
            verdicts.append(_PENDING)
        if silent:
            healthy = set(healthy_names)
            for at, n, st in silent:
                verdicts[at] = self._silent_verdict(n, st, now, healthy)
        return verdicts

    def _silent_verdict(self, node: str, st: _Node, now: float, healthy: set[str]) -> NodeVerdict:
        """The verdict on a node not heard within `suspect_after` (or never heard)."""
        p = self.profile
        heard = st.last_heartbeat is not None
        ref = st.last_heartbeat if st.last_heartbeat is not None else st.since
        age = max(0.0, now - ref)
        kubelet = self._kubelet.get(node)
        kubelet_age = kubelet.age(now) if kubelet else None
        kubelet_ready = kubelet.ready if kubelet else None
        since_last_heartbeat = age if heard else None
        reports = self._peers.get(node, {})
        window = p.peer_window
        fresh_reporters = {
            peer for peer, r in reports.items() if r.at > ref and now - r.at <= window
        }
        # |healthy + fresh reporters| without the node itself, without copying `healthy`.
        available = len(healthy) - (node in healthy) + len(fresh_reporters - healthy - {node})
        peers, summary = peer_reading(
            reports, ref, now, window=window, available=available, quorum=p.peer_quorum
        )

        def verdict(health: NodeHealth, reason: str) -> NodeVerdict:
            return NodeVerdict(
                node, health, since_last_heartbeat, kubelet_age, kubelet_ready, summary, reason
            )

        silent = f"no heartbeat for {age:.1f} s" if heard else f"never heard in {age:.1f} s"
        if not heard and age < p.fence_after:
            return verdict(
                NodeHealth.UNKNOWN,
                f"{silent}; a new leader waits {p.fence_after:g} s before judging it",
            )
        if age < p.fence_after:
            hint = ""
            if st.announced_interval is not None and st.announced_interval >= p.suspect_after:
                hint = (
                    f"; it announces a {st.announced_interval:g} s interval,"
                    " check its configuration"
                )
            return verdict(
                NodeHealth.SUSPECT, f"{silent} (suspect after {p.suspect_after:g} s){hint}"
            )
        # A kubelet renewal proves life only if it came after the NEXT heartbeat was due: one
        # made between the last heartbeat and the moment the node died is no evidence.
        due = ref + (st.announced_interval or p.interval)
        kube = kubelet_reading(kubelet, due, now, p.kubelet_stale_after)
        health, why = judge(p, peers, kube, available)
        return verdict(health, f"{silent}; {why}")
