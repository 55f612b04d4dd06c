"""Signed probe results: each peer signs its answer with its own heartbeat key. Pure.

A probe result decides as much as a heartbeat: a forged "unreachable" helps confirm a live
node dead (a false fence), a forged or replayed "reachable" keeps a dead node unfenced. So a
result is signed exactly as a heartbeat is (`agent.heartbeat_auth`): the peer's per-node key
derived from the cluster key, a signed `ts` (peer wall clock, ms) within `max_skew` of the
leader's, the same modes (`off`, `permissive`, `required`) and the same rotation keys
(`also_accept`). The signed bytes start with their own tag, so no heartbeat signature is ever
a valid result signature or the reverse.

That a result answers a request the leader sent, for that suspect, from a peer it asked, in
time and once, is `agent.probe_requests`. Every refusal is a `ProbeRejected` whose reason is
the label of `nodefence_messages_rejected_total`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, replace

from agent.heartbeat_auth import AuthMode, HeartbeatVerifier
from agent.peers import ProbeResult

UNSIGNED_ACCEPTED = "probe_unsigned_accepted"  # permissive mode: accepted, counted
_TAG = "probe-result v1"


class ProbeRejectReason(enum.StrEnum):
    """Why a probe result was dropped; the value is the metric label."""

    UNSIGNED = "probe_unsigned"
    BAD_SIGNATURE = "probe_bad_signature"
    STALE = "probe_stale"
    UNKNOWN_REQUEST = "probe_unknown_request"
    WRONG_SUSPECT = "probe_wrong_suspect"
    NOT_ASKED = "probe_unasked_peer"
    REPLAYED = "probe_replayed"
    LATE = "probe_late"


class ProbeRejected(ValueError):
    """A probe result that must be counted and dropped; `reason` says why, `detail` how."""

    def __init__(self, reason: ProbeRejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


def signing_bytes(res: ProbeResult) -> bytes:
    """The bytes a signature covers: every field but `hmac`, unambiguously joined."""
    parts = (
        _TAG,
        res.id,
        res.peer,
        res.suspect,
        "reachable" if res.reachable else "unreachable",
        "" if res.ts is None else str(res.ts),
    )
    # No field can hold a newline: ids are printable tokens, names DNS-1123.
    return "\n".join(parts).encode()


def sign_result(res: ProbeResult, key: bytes) -> ProbeResult:
    """`res` with its signature under `key` (the peer's node key)."""
    data = signing_bytes(replace(res, hmac=None))
    return replace(res, hmac=hmac.new(key, data, hashlib.sha256).hexdigest())


@dataclass
class ProbeResultVerifier:
    """The leader's check of a result's signature and freshness, with the heartbeat settings.

    Uses `heartbeats`' mode, keys, rotation keys and `max_skew`, so one `auth` section
    configures both.
    """

    heartbeats: HeartbeatVerifier

    def check(self, res: ProbeResult, wall_now: float) -> bool:
        """Accept `res` (True: signed and valid; False: unsigned, accepted in mode permissive
        or with signatures off) or raise `ProbeRejected` (UNSIGNED, BAD_SIGNATURE, STALE)."""
        mode = self.heartbeats.mode
        if mode is AuthMode.OFF:
            return False
        if res.hmac is None:
            if mode is AuthMode.REQUIRED:
                raise ProbeRejected(
                    ProbeRejectReason.UNSIGNED, f"result of {res.peer} about {res.suspect}"
                )
            return False
        data = signing_bytes(res)
        if not any(
            hmac.compare_digest(hmac.new(k, data, hashlib.sha256).hexdigest(), res.hmac)
            for k in self.heartbeats.node_keys(res.peer)
        ):
            raise ProbeRejected(
                ProbeRejectReason.BAD_SIGNATURE,
                f"result of {res.peer} about {res.suspect}: signature does not match its key",
            )
        if res.ts is None:
            raise ProbeRejected(ProbeRejectReason.STALE, f"{res.peer}: signed without a timestamp")
        skew = res.ts / 1000.0 - wall_now
        limit = self.heartbeats.max_skew
        if abs(skew) > limit:
            raise ProbeRejected(
                ProbeRejectReason.STALE,
                f"result of {res.peer}: timestamp {skew:+.1f} s from the leader's clock"
                f" (limit {limit:g} s): a replay, or a clock out of sync",
            )
        return True
