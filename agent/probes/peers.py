"""Peer probes: other agents check, over the node network, whether a silent node is alive.

The leader asks a few healthy peers to probe a suspect; each probes the suspect's agent health
endpoint (HTTP `GET /healthz`) and its kubelet port (a TCP connect), and reports back. A node
whose agent died but whose kubelet still accepts connections is alive: "agent lost, node
alive", never dead. Messages travel over the broker:

- `nodefence/v1/<cluster>/probe/<suspect>`: the leader's request
  `{"v":1,"id":..,"suspect":..,"peers":[..],"targets":[{"host":..,"port":..,"kind":..}]}` and,
  from a fencer that signs, `"ts":<fencer wall clock, ms>` and `"macs":{"<peer>":"<hex>",..}`:
  one signature per peer asked, under that peer's own key (`nodefence.agent.probes.signing`), so
  only a fencer can make a peer probe anything.
- `nodefence/v1/<cluster>/probe-result/<peer>`: `{"v":1,"id":..,"peer":..,"suspect":..,
  "reachable":bool}` and, from agents that sign, `"ts":<peer wall clock, ms>`, `"mac":"<hex>"`
  (under the peer's own key) and, during an upgrade, `"hmac":"<hex>"` (under the key derived
  from the old cluster key); see `nodefence.agent.probes.signing`. The leader matches each result to
  a request it sent, see `nodefence.agent.probes.requests`.

Request ids are tokens (1..64 printable ASCII characters without spaces). Encoding, decoding
and peer selection are pure; the probe itself (I/O) is
`nodefence.agent.probes.peer_client.run_probe`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nodefence.agent.heartbeat.codec import MAX_HMAC, MAX_TS, PREFIX, valid_name

MAX_PROBE_PAYLOAD = 4096
_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")  # request ids: printable ASCII, no spaces
_MAC = re.compile(r"[\x21-\x7e]+")
TargetKind = Literal["agent", "kubelet"]
# One encoder for every payload (`json.dumps` with separators builds one per call); the cycle
# check is off: a payload is a tree of fresh dicts and lists.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


# Requests and results are built for every message (each agent decodes every request): frozen
# dataclasses with a hand-written `__init__` that fills the instance dict directly, as the
# generated frozen `__init__` makes one `object.__setattr__` call per field (three times the cost).


@dataclass(frozen=True, init=False)
class Target:
    """One endpoint of the suspect to try."""

    host: str
    port: int
    kind: TargetKind

    def __init__(self, host: str, port: int, kind: TargetKind) -> None:
        d = self.__dict__
        d["host"] = host
        d["port"] = port
        d["kind"] = kind


@dataclass(frozen=True, init=False)
class ProbeRequest:
    """The leader's request that `peers` probe `suspect` at `targets`."""

    id: str
    suspect: str
    peers: tuple[str, ...]
    targets: tuple[Target, ...]
    ts: int | None = None
    macs: tuple[tuple[str, str], ...] = ()  # (peer, its signature), in `peers` order

    def __init__(
        self,
        id: str,
        suspect: str,
        peers: tuple[str, ...],
        targets: tuple[Target, ...],
        ts: int | None = None,
        macs: tuple[tuple[str, str], ...] = (),
    ) -> None:
        d = self.__dict__
        d["id"] = id
        d["suspect"] = suspect
        d["peers"] = peers
        d["targets"] = targets
        d["ts"] = ts
        d["macs"] = macs

    def mac_for(self, peer: str) -> str | None:
        """The signature meant for `peer`, if any."""
        return next((m for p, m in self.macs if p == peer), None)


@dataclass(frozen=True, init=False)
class ProbeResult:
    """One peer's answer to request `id`; `ts` (peer wall clock, ms), `mac` (own key) and
    `hmac` (old cluster key) when signed."""

    id: str
    peer: str
    suspect: str
    reachable: bool
    ts: int | None = None
    hmac: str | None = None
    mac: str | None = None

    def __init__(
        self,
        id: str,
        peer: str,
        suspect: str,
        reachable: bool,
        ts: int | None = None,
        hmac: str | None = None,
        mac: str | None = None,
    ) -> None:
        d = self.__dict__
        d["id"] = id
        d["peer"] = peer
        d["suspect"] = suspect
        d["reachable"] = reachable
        d["ts"] = ts
        d["hmac"] = hmac
        d["mac"] = mac


def probe_topic(cluster: str, suspect: str) -> str:
    """Where the leader asks for probes of `suspect`."""
    return f"{PREFIX}/{cluster}/probe/{suspect}"


def probe_filter(cluster: str) -> str:
    """What every agent subscribes to for probe requests."""
    return f"{PREFIX}/{cluster}/probe/+"


def result_topic(cluster: str, peer: str) -> str:
    """Where `peer` reports its probe results."""
    return f"{PREFIX}/{cluster}/probe-result/{peer}"


def result_filter(cluster: str) -> str:
    """What the leader subscribes to for probe results."""
    return f"{PREFIX}/{cluster}/probe-result/+"


def choose_peers(suspect: str, healthy: Sequence[str], count: int, salt: int) -> tuple[str, ...]:
    """Up to `count` healthy nodes other than the suspect, rotating with `salt` so repeated
    probes spread over the cluster (pure and deterministic)."""
    others = sorted(n for n in healthy if n != suspect)
    if not others:
        return ()
    start = salt % len(others)
    rotated = others[start:] + others[:start]
    return tuple(rotated[:count])


def encode_request(req: ProbeRequest) -> bytes:
    """The request payload."""
    obj: dict[str, Any] = {
        "v": 1,
        "id": req.id,
        "suspect": req.suspect,
        "peers": list(req.peers),
        "targets": [{"host": t.host, "port": t.port, "kind": t.kind} for t in req.targets],
    }
    if req.ts is not None:
        obj["ts"] = req.ts
    if req.macs:
        obj["macs"] = dict(req.macs)
    return _ENCODER.encode(obj).encode()


def decode_request(payload: bytes) -> ProbeRequest | None:
    """A valid request, or None for anything malformed (counted by the caller)."""
    obj = _load(payload)
    if obj is None:
        return None
    try:
        suspect, rid, peers = obj["suspect"], obj["id"], obj["peers"]
        targets = tuple(Target(t["host"], t["port"], t["kind"]) for t in obj["targets"])
        ts, macs = obj.get("ts"), obj.get("macs") or {}
    except (KeyError, TypeError):
        return None
    if not (
        isinstance(suspect, str)
        and valid_name(suspect)
        and valid_id(rid)
        and isinstance(peers, list)
        and len(targets) <= 8
        and (ts is None or (type(ts) is int and 0 <= ts <= MAX_TS))
        and isinstance(macs, dict)
    ):
        return None
    # Every agent decodes every request: plain loops, not a generator per `all`.
    for p in peers:
        if not isinstance(p, str):
            return None
    for t in targets:
        if not _valid_target(t):
            return None
    for p, m in macs.items():
        if p not in peers or not _valid_mac(m):
            return None
    signed = tuple((p, macs[p]) for p in peers if p in macs)
    return ProbeRequest(rid, suspect, tuple(peers), targets, ts, signed)


def _valid_target(t: Target) -> bool:
    # Types as sent, never coerced: a peer probes exactly what the fencer asked (and signed).
    return (
        isinstance(t.host, str)
        and t.host != ""
        and type(t.port) is int
        and 0 < t.port < 65536
        and t.kind in ("agent", "kubelet")
    )


def valid_id(rid: object) -> bool:
    """True for a request id: 1..64 printable ASCII characters without spaces."""
    return isinstance(rid, str) and _TOKEN.fullmatch(rid) is not None


def _valid_mac(mac: object) -> bool:
    # ASCII only: hmac.compare_digest raises TypeError on other strings.
    return isinstance(mac, str) and len(mac) <= MAX_HMAC and _MAC.fullmatch(mac) is not None


def encode_result(res: ProbeResult) -> bytes:
    """The result payload."""
    obj: dict[str, Any] = {
        "v": 1,
        "id": res.id,
        "peer": res.peer,
        "suspect": res.suspect,
        "reachable": res.reachable,
    }
    if res.ts is not None:
        obj["ts"] = res.ts
    if res.mac is not None:
        obj["mac"] = res.mac
    if res.hmac is not None:
        obj["hmac"] = res.hmac
    return _ENCODER.encode(obj).encode()


def decode_result(topic_peer: str, payload: bytes) -> ProbeResult | None:
    """A valid result whose peer matches its topic, or None (signature not checked here)."""
    obj = _load(payload)
    if obj is None:
        return None
    peer, suspect, rid, reachable, ts, legacy, mac = (
        obj.get("peer"),
        obj.get("suspect"),
        obj.get("id"),
        obj.get("reachable"),
        obj.get("ts"),
        obj.get("hmac"),
        obj.get("mac"),
    )
    if (
        peer != topic_peer
        or not isinstance(suspect, str)
        or not valid_name(suspect)
        or not isinstance(rid, str)
        or not valid_id(rid)
        or not isinstance(reachable, bool)
        or (ts is not None and (type(ts) is not int or not 0 <= ts <= MAX_TS))
        or (legacy is not None and not _valid_mac(legacy))
        or (mac is not None and not _valid_mac(mac))
    ):
        return None
    return ProbeResult(rid, topic_peer, suspect, reachable, ts, legacy, mac)


def _load(payload: bytes) -> dict[str, Any] | None:
    if len(payload) > MAX_PROBE_PAYLOAD:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and obj.get("v") == 1 else None
