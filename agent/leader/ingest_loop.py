"""What the leader hears over the brokers: heartbeats and statuses, kept across a takeover.

`HeartbeatIngest` is the heartbeat and status half of the leader's broker edge: it stamps each
heartbeat with the leader's monotonic clock on receipt, checks its signature and sequence,
feeds the detector, and counts and drops malformed, refused and replayed messages. Every
agent sends each heartbeat to every broker, so most arrive once per broker: a copy of a
heartbeat already accepted is dropped quietly (counted as a duplicate, never as a refused
message, and never as new life). A `stopped` status withdraws the watchdog claim of its boot.
It also reads the nodes' identity announcements (their keys, judged by the `Keyring`: a first
sight is wanted for pinning, another key than the pinned one refused and remembered for an
alert) and the fencers' presence (whom to name warm standbys).

`Listener` joins a `BrokerSet` to an ingest: it keeps the sessions to every broker and hands
heartbeats and statuses to the ingest and every other message (probe results) to `on_other`,
which the leader side sets while it leads. A warm standby runs a Listener without acting on
it; when it takes the Lease, its `LeaderSide` adopts the Listener with its whole history, so
it can judge at once the nodes it has heard (see `nodefence.agent.detection.policy.leader_guard`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.detection.detector import FailureDetector
from nodefence.agent.detection.policy import Alert
from nodefence.agent.detection.profiles import DetectionProfile
from nodefence.agent.heartbeat.codec import (
    PREFIX,
    HeartbeatRejected,
    NodeState,
    SequenceTracker,
    WatchdogClaim,
    decode_heartbeat,
    decode_status_boot,
    heartbeat_filter,
    status_filter,
    valid_name,
)
from nodefence.agent.heartbeat.node_identity import decode_identity, identity_filter
from nodefence.agent.heartbeat.node_keys import Keyring, Sighting, fingerprint
from nodefence.agent.heartbeat.signing import AuthMode, HeartbeatVerifier
from nodefence.agent.leader.bmc_health import Transition
from nodefence.agent.leader.fencer_presence_client import decode_presence, presence_filter
from nodefence.agent.mqtt.broker_set_client import BrokerSet
from nodefence.agent.mqtt.leader_broker_client import OnMessage
from nodefence.agent.observe import metrics
from nodefence.agent.probes.peers import result_filter

log = logging.getLogger("nodefence.leader")

MAX_TRACKED = 65536  # bounds what unknown senders can make the leader remember


@dataclass
class LeaderStats:
    """Counters for status output, metrics and tests."""

    heartbeats: int = 0
    duplicates: int = 0  # copies of accepted heartbeats (one per extra broker)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    probes_sent: int = 0
    probe_results: int = 0
    decisions: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, kind)
    alerts: list[Alert] = field(default_factory=list)
    bmc_changes: list[Transition] = field(default_factory=list)


class HeartbeatIngest:
    """The leader's record of what it heard; see the module doc. Never reads a socket."""

    def __init__(
        self,
        cfg: AgentConfig,
        profile: DetectionProfile,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keyring: Keyring | None = None,
    ) -> None:
        self.cluster = cfg.cluster
        self.clock = clock
        self.wall = wall
        self.stats = LeaderStats()
        self.detector = FailureDetector(profile)
        self.sequences = SequenceTracker()
        key = cfg.auth.key.reveal().encode() if cfg.auth.key is not None else None
        self.keyring = keyring
        self.verifier = HeartbeatVerifier(
            AuthMode(cfg.auth.mode),
            key,
            cfg.auth.max_skew,
            tuple(s.reveal().encode() for s in cfg.auth.also_accept),
            keyring=keyring,
        )
        # node -> fingerprint of a key announced for it other than its pinned one
        self.key_mismatches: dict[str, str] = {}
        self.fencers: dict[str, str] = {}  # node -> identity of the fencer that runs there
        self.watchdog_claims: dict[str, WatchdogClaim | None] = {}
        self.claim_boot: dict[str, str] = {}  # node -> boot id of the heartbeat of its claim
        self.last_seq: dict[str, tuple[str, int]] = {}  # node -> (boot, seq) last accepted
        self.versions: dict[str, str] = {}  # node -> its agent's version (last heartbeat)
        self.stopped_boots: dict[str, str] = {}  # node -> boot id its agent stopped cleanly
        self.rejected_at: dict[str, float] = {}  # node -> last refused message on its topic
        self.gone: set[str] = set()  # Nodes deleted (until they register again)
        self._last: dict[str, bytes] = {}  # node -> payload of its last accepted heartbeat
        self._heartbeats = f"{PREFIX}/{cfg.cluster}/heartbeat/"
        self._statuses = f"{PREFIX}/{cfg.cluster}/status/"
        self._identities = f"{PREFIX}/{cfg.cluster}/identity/"
        self._presences = f"{PREFIX}/{cfg.cluster}/fencer/"

    def filters(self) -> list[str]:
        """Every topic a listener subscribes to (probe results go to the leader side)."""
        cluster = self.cluster
        return [
            heartbeat_filter(cluster),
            result_filter(cluster),
            status_filter(cluster),
            identity_filter(cluster),
            presence_filter(cluster),
        ]

    def forget(self, node: str) -> None:
        """Drop everything heard of `node` (it left the cluster or registered anew)."""
        self.detector.forget(node)
        self.sequences.forget(node)
        self.watchdog_claims.pop(node, None)
        self.claim_boot.pop(node, None)
        self.last_seq.pop(node, None)
        self.versions.pop(node, None)
        self.rejected_at.pop(node, None)
        self._last.pop(node, None)

    def on_message(self, topic: str, data: bytes) -> bool:
        """Handle a heartbeat or status message; False for any other topic."""
        if topic.startswith(self._heartbeats):
            self._on_heartbeat(topic[len(self._heartbeats) :], topic, data)
            return True
        if topic.startswith(self._statuses):
            self._on_status(topic[len(self._statuses) :], data)
            return True
        if topic.startswith(self._identities):
            self._on_identity(topic[len(self._identities) :], data)
            return True
        if topic.startswith(self._presences):
            self._on_presence(topic[len(self._presences) :], data)
            return True
        return False

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] += 1
        metrics.REJECTED.labels(reason).inc()

    def _duplicate(self) -> None:
        self.stats.duplicates += 1
        metrics.DUPLICATES.inc()

    def _on_heartbeat(self, node: str, topic: str, data: bytes) -> None:
        """A heartbeat on `topic`, the heartbeat topic of `node` (not yet checked as a name)."""
        now = self.clock()
        if not valid_name(node):
            self._reject("bad_topic")
            return
        if node in self.gone:
            # A heartbeat still in flight when its Node was deleted: it must not bring back a
            # phantom node (unhealthy forever, counted by the storm guard).
            self._reject("deleted_node")
            return
        if self._last.get(node) == data:
            self._duplicate()  # the same heartbeat from another broker: nothing to decode
            return
        try:
            hb = decode_heartbeat(node, data)
            signed = self.verifier.check(hb, self.wall())
            fresh = self.sequences.check(hb)
        except HeartbeatRejected as rej:
            self._reject(rej.reason.value)
            if node in self.watchdog_claims or len(self.rejected_at) < MAX_TRACKED:
                self.rejected_at[node] = now
            log.debug("dropped heartbeat on %s: %s", topic, rej)
            return
        if not fresh:
            self._duplicate()
            return
        if not signed and self.verifier.mode is not AuthMode.OFF:
            self._reject("unsigned_accepted")  # permissive: counted only
        self.stats.heartbeats += 1
        metrics.HEARTBEATS.inc()
        self._last[node] = data
        # A boot whose agent announced a clean stop has disarmed its watchdog: a heartbeat of
        # it delivered late (reordered) claims nothing.
        self.watchdog_claims[node] = hb.wd if self.stopped_boots.get(node) != hb.boot else None
        self.claim_boot[node] = hb.boot
        self.last_seq[node] = (hb.boot, hb.seq)  # for the fence evidence
        self.versions[node] = hb.agent  # for `nodefence status`
        self.detector.observe(hb, now)

    def _on_status(self, node: str, data: bytes) -> None:
        """A node's retained status: a clean stop withdraws its boot's watchdog claim."""
        status = decode_status_boot(data) if valid_name(node) else None
        if status is None or status[0] is not NodeState.STOPPED or status[1] is None:
            return  # online/offline say nothing the heartbeats do not
        if node not in self.stopped_boots and len(self.stopped_boots) >= MAX_TRACKED:
            return
        self.stopped_boots[node] = status[1]
        if self.claim_boot.get(node) == status[1] and self.watchdog_claims.get(node):
            log.info("node %s: agent stopped cleanly, its watchdog claim is withdrawn", node)
            self.watchdog_claims[node] = None

    def _on_identity(self, node: str, data: bytes) -> None:
        """A node's key and health endpoint: judged against its pin (see the module doc)."""
        if self.keyring is None:
            return  # signatures off, or the old cluster key only: nothing to pin
        ident = decode_identity(node, data)
        if ident is None:
            self._reject("bad_identity")
            return
        sighting = self.keyring.consider(ident)
        if sighting in (Sighting.KNOWN, Sighting.NEW):
            self.key_mismatches.pop(node, None)
            return
        self._reject(sighting.value)
        if sighting is Sighting.MISMATCH and (
            node in self.key_mismatches or len(self.key_mismatches) < MAX_TRACKED
        ):
            self.key_mismatches[node] = fingerprint(ident.key)
            log.warning(
                "node %s announced key %s, not its pinned one: refused",
                node,
                fingerprint(ident.key),
            )

    def _on_presence(self, node: str, data: bytes) -> None:
        """A fencer's presence (or its Last Will: gone)."""
        identity = decode_presence(node, data)
        if identity is None:
            self.fencers.pop(node, None)
        elif node in self.fencers or len(self.fencers) < 64:
            self.fencers[node] = identity


def delivery_gap(profile: DetectionProfile) -> float:
    """The longest a working broker stays silent: every agent (the leader's own too) sends it
    a heartbeat every `interval`; three missed in a row is a broken connection."""
    return max(2.0, 3 * profile.interval)


class Listener:
    """Sessions to every broker feeding one ingest; runs until cancelled (see the module doc)."""

    def __init__(self, brokers: BrokerSet, ingest: HeartbeatIngest) -> None:
        self.brokers = brokers
        self.ingest = ingest
        self.on_other: OnMessage | None = None

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        profile: DetectionProfile,
        identity: str,
        keyring: Keyring | None = None,
    ) -> Listener:
        """A listener to every broker of `cfg`."""
        brokers = BrokerSet.from_config(cfg.brokers, identity, silence=delivery_gap(profile))
        return cls(brokers, HeartbeatIngest(cfg, profile, keyring=keyring))

    async def run(self) -> None:
        """Listen to every broker until cancelled."""
        await self.brokers.run(self.ingest.filters(), self._dispatch)

    def _dispatch(self, topic: str, payload: object) -> None:
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        if not self.ingest.on_message(topic, data) and self.on_other is not None:
            self.on_other(topic, data)
