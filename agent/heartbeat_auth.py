"""Signed heartbeats: per-node HMAC keys, signing, and the leader's check. Pure.

The broker ACL already stops node A's MQTT user from publishing on node B's topic. Signatures
are the second, independent lock: whoever publishes on a heartbeat topic (a leaked broker
password, a misconfigured ACL, a forged packet) also needs that node's key, and a captured
heartbeat cannot be replayed later.

- Keys: the cluster key (a file or an environment variable, at least 32 bytes) derives one key
  per node: `HMAC-SHA256(cluster_key, "nodefence heartbeat key v1" 0x00 node)`. Each agent signs
  with its node's key; the leader derives the key of the topic's node. (Every agent is a leader
  candidate, so every agent holds the cluster key: the signature protects against anyone who
  is not a nodefence agent, the ACL against one agent speaking for another.)
- Signature: `hmac` = hex HMAC-SHA256 over every field but `hmac` itself, in a fixed order.
- Replay: the signed `ts` (sender wall clock, ms) must be within `max_skew` of the leader's
  wall clock, and `agent.heartbeat_codec.SequenceTracker` drops repeats of (boot, seq): a
  captured heartbeat is refused once seen, and any heartbeat once older than `max_skew`.
- Rotation: `also_accept` holds further cluster keys the leader accepts (never signs with),
  so a key can be replaced in three rolls without a moment of unsigned heartbeats: accept the
  new key, sign with it (accepting the old), drop the old.
- Modes: `off` ignores signatures; `permissive` (rolling keys out) checks a signature when
  present and counts unsigned heartbeats but accepts them; `required` refuses unsigned ones.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field, replace

from agent.heartbeat_codec import Heartbeat, HeartbeatRejected, RejectReason

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
    wd = "" if hb.wd is None else ",".join(repr(x) for x in hb.wd.to_json())
    parts = (
        "v1",
        hb.node,
        str(hb.seq),
        hb.boot,
        repr(hb.interval),
        hb.agent,
        "" if hb.ts is None else str(hb.ts),
        wd,
    )
    # No field can hold a newline (names and tokens are printable ASCII without spaces).
    return "\n".join(parts).encode()


def sign(hb: Heartbeat, key: bytes) -> Heartbeat:
    """`hb` with its signature under `key` (a node key)."""
    mac = hmac.new(key, signing_bytes(replace(hb, hmac=None)), hashlib.sha256).hexdigest()
    return replace(hb, hmac=mac)


@dataclass
class HeartbeatVerifier:
    """The leader's check of signatures and freshness; raises `HeartbeatRejected`.

    `cluster_key` may be None only in mode `off`. `max_skew` bounds |sender ts - leader wall
    clock| in seconds. Node keys are cached (one per node name seen).
    """

    mode: AuthMode
    cluster_key: bytes | None = None
    max_skew: float = 30.0
    also_accept: tuple[bytes, ...] = ()
    _keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode is not AuthMode.OFF and (
            self.cluster_key is None or len(self.cluster_key) < MIN_KEY_BYTES
        ):
            raise ValueError(
                f"heartbeat auth mode {self.mode.value} needs a cluster key of at least"
                f" {MIN_KEY_BYTES} bytes"
            )
        if any(len(k) < MIN_KEY_BYTES for k in self.also_accept):
            raise ValueError(f"every accepted key must be at least {MIN_KEY_BYTES} bytes")

    def node_keys(self, node: str) -> tuple[bytes, ...]:
        """The keys `node` may sign with: its key under the cluster key, then under each
        `also_accept` key (cached; empty in mode `off` without a key)."""
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
        or raise `HeartbeatRejected` (UNSIGNED, BAD_SIGNATURE or STALE)."""
        if self.mode is AuthMode.OFF:
            return False
        if hb.hmac is None:
            if self.mode is AuthMode.REQUIRED:
                raise HeartbeatRejected(RejectReason.UNSIGNED, f"{hb.node}: no signature")
            return False
        data = signing_bytes(hb)
        if not any(
            hmac.compare_digest(hmac.new(k, data, hashlib.sha256).hexdigest(), hb.hmac)
            for k in self.node_keys(hb.node)
        ):
            raise HeartbeatRejected(
                RejectReason.BAD_SIGNATURE, f"{hb.node}: signature does not match its key"
            )
        if hb.ts is None:
            raise HeartbeatRejected(RejectReason.STALE, f"{hb.node}: signed without a timestamp")
        skew = hb.ts / 1000.0 - wall_now
        if abs(skew) > self.max_skew:
            raise HeartbeatRejected(
                RejectReason.STALE,
                f"{hb.node}: timestamp {skew:+.1f} s from the leader's clock"
                f" (limit {self.max_skew:g} s): a replay, or a clock out of sync",
            )
        return True
