"""Signed heartbeats: signing, and the fencers' check. Pure.

The broker ACL stops node A's MQTT user from publishing on node B's topic, but not root on a
worker: its kubelet reads every Secret its pods use, the MQTT password Secret of all nodes
included. The signature is the lock that holds then: a heartbeat counts only when it is signed
with the key of the node it speaks for.

- Own keys (`mac`): each node signs with its own key, agreed between its X25519 key and the
  fencer key (`nodefence.agent.heartbeat.node_keys`); the fencers pin each node's public key on
  first sight and check a node's heartbeats only against its pinned key. No other node holds that
  key.
- The cluster key of releases before the fencer split (`hmac`), kept for the upgrade only:
  `HMAC-SHA256(cluster_key, "nodefence heartbeat key v1" 0x00 node)` per node, so every holder
  of the cluster key could sign as any node. The fencers accept it only from nodes whose own
  key is not pinned (agents not upgraded yet), and only while it is configured.
- Signature: hex HMAC-SHA256 over every field but `mac` and `hmac`, in a fixed order.
- Replay: the signed `ts` (sender wall clock, ms) must be within `max_skew` of the fencer's
  wall clock, and `nodefence.agent.heartbeat.codec.SequenceTracker` drops repeats of (boot, seq): a
  captured heartbeat is refused once seen, and any heartbeat once older than `max_skew`.
- Rotation of the old cluster key: `also_accept` holds further cluster keys the fencer accepts.
- Modes: `off` ignores signatures; `permissive` (rolling keys out) checks a signature it can
  check and counts unsigned heartbeats but accepts them; `required` refuses unsigned ones and
  ones signed with a node key not pinned yet (`unpinned`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field

from nodefence.agent.heartbeat.codec import Heartbeat, HeartbeatRejected, RejectReason
from nodefence.agent.heartbeat.node_keys import Keyring, mac_matches, mac_of

MIN_KEY_BYTES = 32
_DERIVE = b"nodefence heartbeat key v1\x00"


class AuthMode(enum.StrEnum):
    """How the leader treats heartbeat signatures."""

    OFF = "off"
    PERMISSIVE = "permissive"
    REQUIRED = "required"


def node_key(cluster_key: bytes, node: str) -> bytes:
    """The signing key of `node`, derived from the cluster key."""
    return hmac.new(cluster_key, _DERIVE + node.encode(), hashlib.sha256).digest()


def signing_bytes(hb: Heartbeat) -> bytes:
    """The bytes a signature covers: every field but `hmac`, unambiguously joined."""
    wd = hb.wd
    wd_text = "" if wd is None else f"{wd.timeout!r},{wd.cut_off!r},{wd.feed_interval!r}"
    ts = "" if hb.ts is None else str(hb.ts)
    # No field can hold a newline (names and tokens are printable ASCII without spaces).
    return (
        f"v1\n{hb.node}\n{hb.seq}\n{hb.boot}\n{hb.interval!r}\n{hb.agent}\n{ts}\n{wd_text}".encode()
    )


def sign(hb: Heartbeat, key: bytes) -> Heartbeat:
    """`hb` with its `hmac` under `key` (a node key derived from the old cluster key)."""
    return hb.with_hmac(mac_of(key, signing_bytes(hb)))


def sign_own(hb: Heartbeat, key: bytes) -> Heartbeat:
    """`hb` with its `mac` under `key` (the node's own key,
    `nodefence.agent.heartbeat.node_keys.NodeSigner`)."""
    return hb.with_mac(mac_of(key, signing_bytes(hb)))


@dataclass
class HeartbeatVerifier:
    """The fencer's check of signatures and freshness; raises `HeartbeatRejected`.

    `keyring` holds the fencer key and the pinned node keys; `cluster_key` the old cluster key
    (the upgrade only). Modes other than `off` need one of them. `max_skew` bounds |sender ts -
    fencer wall clock| in seconds. Keys derived from the cluster key are cached per node.
    """

    mode: AuthMode
    cluster_key: bytes | None = None
    max_skew: float = 30.0
    also_accept: tuple[bytes, ...] = ()
    keyring: Keyring | None = None
    _keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.cluster_key is not None and len(self.cluster_key) < MIN_KEY_BYTES:
            raise ValueError(f"the cluster key must be at least {MIN_KEY_BYTES} bytes")
        if self.mode is not AuthMode.OFF and self.cluster_key is None and self.keyring is None:
            raise ValueError(
                f"heartbeat auth mode {self.mode.value} needs the fencer key (or the cluster key"
                " of releases before the fencer split)"
            )
        if any(len(k) < MIN_KEY_BYTES for k in self.also_accept):
            raise ValueError(f"every accepted key must be at least {MIN_KEY_BYTES} bytes")

    def node_keys(self, node: str) -> tuple[bytes, ...]:
        """The old-style keys `node` may sign `hmac` with: its key under the cluster key, then
        under each `also_accept` key (cached; empty without a cluster key)."""
        if self.cluster_key is None:
            return ()
        keys = self._keys.get(node)
        if keys is None:
            if len(self._keys) >= 65536:  # names come from topics: never grow without bound
                self._keys.clear()
            keys = tuple(node_key(k, node) for k in (self.cluster_key, *self.also_accept))
            self._keys[node] = keys
        return keys

    def check(self, hb: Heartbeat, wall_now: float) -> bool:
        """Accept `hb` (True: signed and valid, False: accepted unsigned in permissive mode)
        or raise `HeartbeatRejected` (UNSIGNED, BAD_SIGNATURE, UNPINNED or STALE)."""
        if self.mode is AuthMode.OFF:
            return False
        own = self.keyring.keys(hb.node) if self.keyring is not None else ()
        if own:
            # Its key is pinned: only its own key speaks for it, never the old cluster key.
            if hb.mac is None:
                return self._unsigned(hb, "no signature under its own key")
            if not mac_matches(own, signing_bytes(hb), hb.mac):
                raise HeartbeatRejected(
                    RejectReason.BAD_SIGNATURE,
                    f"{hb.node}: signature does not match its pinned key",
                )
        elif hb.hmac is not None and self.cluster_key is not None:
            if not mac_matches(self.node_keys(hb.node), signing_bytes(hb), hb.hmac):
                raise HeartbeatRejected(
                    RejectReason.BAD_SIGNATURE, f"{hb.node}: signature does not match its key"
                )
        elif hb.mac is not None and self.keyring is not None:
            if self.mode is AuthMode.REQUIRED:
                raise HeartbeatRejected(
                    RejectReason.UNPINNED, f"{hb.node}: its key is not pinned (yet)"
                )
            return False
        else:
            return self._unsigned(hb, "no signature")
        if hb.ts is None:
            raise HeartbeatRejected(RejectReason.STALE, f"{hb.node}: signed without a timestamp")
        skew = hb.ts / 1000.0 - wall_now
        if abs(skew) > self.max_skew:
            raise HeartbeatRejected(
                RejectReason.STALE,
                f"{hb.node}: timestamp {skew:+.1f} s from the fencer's clock"
                f" (limit {self.max_skew:g} s): a replay, or a clock out of sync",
            )
        return True

    def _unsigned(self, hb: Heartbeat, why: str) -> bool:
        if self.mode is AuthMode.REQUIRED:
            raise HeartbeatRejected(RejectReason.UNSIGNED, f"{hb.node}: {why}")
        return False
