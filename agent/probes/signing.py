"""Signed probe requests and results: each under the asked peer's own key. Pure.

A probe result decides as much as a heartbeat: a forged "unreachable" helps confirm a live
node dead (a false fence), a forged or replayed "reachable" keeps a dead node unfenced. So a
result is signed exactly as a heartbeat is (`nodefence.agent.heartbeat.signing`): `mac` under the
peer's own key (`nodefence.agent.heartbeat.node_keys`), checked against its pinned key; `hmac` under
the key derived from the old cluster key during an upgrade; a signed `ts` (peer wall clock, ms)
within `max_skew` of the leader's; the same modes (`off`, `permissive`, `required`). The signed
bytes start with their own tag, so no heartbeat signature is ever a valid result signature or the
reverse.

A request makes a peer open connections to the hosts and ports it names: forged, it would turn
every node into a port scanner for whoever can publish on the broker. So the leader signs each
request once per peer it asks, under that peer's key (`macs`), with its wall clock (`ts`); a
peer answers only a request signed for it, fresh, and the first time (`check_request`). The
result names the request's id, and its signature covers it: an answer is bound to its request.

That a result answers a request the leader sent, for that suspect, from a peer it asked, in
time and once, is `nodefence.agent.probes.requests`. Every refusal is a `ProbeRejected` whose reason
is the label of `nodefence_messages_rejected_total`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, replace

from nodefence.agent.heartbeat.node_keys import Keyring, mac_matches, mac_of
from nodefence.agent.heartbeat.signing import AuthMode, HeartbeatVerifier
from nodefence.agent.probes.peers import ProbeRequest, ProbeResult

UNSIGNED_ACCEPTED = "probe_unsigned_accepted"  # permissive mode: accepted, counted
_TAG = "probe-result v1"


class ProbeRejectReason(enum.StrEnum):
    """Why a probe result was dropped; the value is the metric label."""

    UNSIGNED = "probe_unsigned"
    BAD_SIGNATURE = "probe_bad_signature"
    STALE = "probe_stale"
    UNPINNED = "probe_unpinned"
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
    """`res` with its `hmac` under `key` (the peer's key derived from the old cluster key)."""
    return replace(res, hmac=hmac.new(key, signing_bytes(res), hashlib.sha256).hexdigest())


def sign_result_own(res: ProbeResult, key: bytes) -> ProbeResult:
    """`res` with its `mac` under `key` (the peer's own key)."""
    return replace(res, mac=mac_of(key, signing_bytes(res)))


@dataclass
class ProbeResultVerifier:
    """The leader's check of a result's signature and freshness, with the heartbeat settings.

    Uses `heartbeats`' mode, keys, rotation keys and `max_skew`, so one `auth` section
    configures both.
    """

    heartbeats: HeartbeatVerifier

    def check(self, res: ProbeResult, wall_now: float) -> bool:
        """Accept `res` (True: signed and valid; False: unsigned, accepted in mode permissive
        or with signatures off) or raise `ProbeRejected` (UNSIGNED, BAD_SIGNATURE, UNPINNED,
        STALE)."""
        hb = self.heartbeats
        mode = hb.mode
        if mode is AuthMode.OFF:
            return False
        about = f"result of {res.peer} about {res.suspect}"
        own = hb.keyring.keys(res.peer) if hb.keyring is not None else ()
        if own:
            if res.mac is None:
                return self._unsigned(mode, about)
            if not mac_matches(own, signing_bytes(res), res.mac):
                raise ProbeRejected(
                    ProbeRejectReason.BAD_SIGNATURE, f"{about}: not signed with its pinned key"
                )
        elif res.hmac is not None and hb.cluster_key is not None:
            if not mac_matches(hb.node_keys(res.peer), signing_bytes(res), res.hmac):
                raise ProbeRejected(
                    ProbeRejectReason.BAD_SIGNATURE,
                    f"{about}: signature does not match its key",
                )
        elif res.mac is not None and hb.keyring is not None:
            if mode is AuthMode.REQUIRED:
                raise ProbeRejected(ProbeRejectReason.UNPINNED, f"{about}: its key is not pinned")
            return False
        else:
            return self._unsigned(mode, about)
        if res.ts is None:
            raise ProbeRejected(ProbeRejectReason.STALE, f"{res.peer}: signed without a timestamp")
        skew = res.ts / 1000.0 - wall_now
        limit = hb.max_skew
        if abs(skew) > limit:
            raise ProbeRejected(
                ProbeRejectReason.STALE,
                f"result of {res.peer}: timestamp {skew:+.1f} s from the leader's clock"
                f" (limit {limit:g} s): a replay, or a clock out of sync",
            )
        return True

    @staticmethod
    def _unsigned(mode: AuthMode, about: str) -> bool:
        if mode is AuthMode.REQUIRED:
            raise ProbeRejected(ProbeRejectReason.UNSIGNED, about)
        return False


# -- requests, fencer to peer ---------------------------------------------------------------


class RequestRefusal(enum.StrEnum):
    """Why a peer ignores a probe request; the value is the metric label (on the node)."""

    UNSIGNED = "request_unsigned"
    BAD_SIGNATURE = "request_bad_signature"
    STALE = "request_stale"


def request_bytes(req: ProbeRequest) -> bytes:
    """The bytes a request's signatures cover: every field but `macs`, tagged."""
    targets = ",".join(f"{t.host}|{t.port}|{t.kind}" for t in req.targets)
    parts = (
        "probe-request v1",
        req.id,
        req.suspect,
        ",".join(req.peers),
        targets,
        "" if req.ts is None else str(req.ts),
    )
    return "\n".join(parts).encode()  # hosts and names hold no newline, `,` or `|`


def sign_request(req: ProbeRequest, keyring: Keyring, ts: int) -> ProbeRequest:
    """`req` stamped `ts` (wall clock, ms) and signed for each peer whose key is pinned."""
    stamped = replace(req, ts=ts, macs=())
    data = request_bytes(stamped)
    macs = []
    for peer in req.peers:
        key = keyring.signing_key(peer)
        if key is not None:
            macs.append((peer, mac_of(key, data)))
    return replace(stamped, macs=tuple(macs))


def check_request(
    req: ProbeRequest,
    node: str,
    keys: tuple[bytes, ...],
    *,
    required: bool,
    wall_now: float,
    max_skew: float,
) -> RequestRefusal | None:
    """Whether `node` may answer `req` (None) or why not. `keys`: this node's own keys (one per
    fencer key it trusts); `required`: an unsigned request is refused (mode `required` with no
    old cluster key to stay compatible with)."""
    mac = req.mac_for(node)
    if mac is None:
        return RequestRefusal.UNSIGNED if required else None
    if not mac_matches(keys, request_bytes(req), mac):
        return RequestRefusal.BAD_SIGNATURE
    if req.ts is None or abs(req.ts / 1000.0 - wall_now) > max_skew:
        return RequestRefusal.STALE
    return None
