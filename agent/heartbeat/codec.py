"""Heartbeat wire format: MQTT topics, the versioned JSON payload, and replay protection.

Topics, one tree per cluster (`<cluster>` and `<node>` are DNS-1123 subdomain names, so they
never contain the MQTT separators `/`, `+` or `#`):

- `nodefence/v1/<cluster>/heartbeat/<node>`: one heartbeat every `interval`, QoS 0, not retained
  (a stale retained heartbeat would make a dead node look alive to a new leader).
- `nodefence/v1/<cluster>/status/<node>`: retained; `{"v":1,"state":"online"}` published on
  connect, `{"v":1,"state":"offline"}` set as the Last Will so the broker publishes it when the
  agent vanishes, `{"v":1,"state":"stopped","boot":"<boot id>"}` published on a clean stop
  (its watchdog, if any, disarmed: heartbeats of that boot prove no armed watchdog any more).

The leader subscribes to `heartbeat_filter(cluster)`. A heartbeat payload is compact JSON of at
most 1024 bytes:
`{"v":1,"node":"n1","seq":7,"boot":"<boot id>","interval":1.0,"agent":"0.1.0"}` and optionally
`"ts":<sender wall clock, ms>`, `"wd":[<watchdog timeout s>, <cut-off s>, <feed interval s>]`
(present while the node's self-fencing watchdog is armed, see
`nodefence.agent.node.watchdog_rules`),
`"mac":"<hex>"` (the signature under the node's own key, see `nodefence.agent.heartbeat.node_keys`)
and, from agents that still hold the cluster key of releases before the fencer split,
`"hmac":"<hex>"` (the signature under a key derived from it; `nodefence.agent.heartbeat.signing`
checks both). Unknown keys are ignored so v1 can grow. `decode_heartbeat` raises `HeartbeatRejected`
with a `RejectReason`;
`SequenceTracker` drops duplicates and replays. Everything here is pure.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections import deque
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

VERSION = 1
MAX_PAYLOAD = 1024
MAX_BOOT = 64
MAX_AGENT = 32
MAX_HMAC = 256
MAX_SEQ = 2**63 - 1
MAX_INTERVAL = 60.0
MAX_TS = 2**53  # milliseconds; JSON-safe integer
MAX_WATCHDOG = 3600.0
PREFIX = "nodefence/v1"

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
# Names already found valid: every heartbeat names its node (and the leader's topics its
# cluster), so the regex runs once per name, not once per message. Bounded: names come from
# topics, so a flood of new names only empties it now and then.
MAX_KNOWN_NAMES = 4096
_known_names: set[str] = set()


def valid_name(name: str) -> bool:
    """True for a DNS-1123 subdomain (lower-case alphanumerics, `-`, `.`; at most 253 chars)."""
    # Only a plain str is looked up: a str subclass could hash and compare as a valid name.
    if type(name) is str and name in _known_names:
        return True
    if not (0 < len(name) <= 253 and _NAME.fullmatch(name) is not None):
        return False
    if type(name) is str:
        if len(_known_names) >= MAX_KNOWN_NAMES:
            _known_names.clear()
        _known_names.add(name)
    return True


def valid_token(value: str) -> bool:
    """True for 1 or more printable ASCII characters without spaces (0x21..0x7e)."""
    if type(value) is not str:  # a str subclass could override the methods below
        return _TOKEN.fullmatch(value) is not None
    # The regex's set in half its instructions: ASCII printable is 0x20..0x7e.
    return value.isascii() and value.isprintable() and " " not in value and value != ""


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not valid_name(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use a DNS-1123 subdomain"
            " (lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    return name


def heartbeat_topic(cluster: str, node: str) -> str:
    """The topic `node` publishes heartbeats on; ValueError for an invalid name."""
    return f"{PREFIX}/{_check_name('cluster', cluster)}/heartbeat/{_check_name('node', node)}"


def status_topic(cluster: str, node: str) -> str:
    """The retained online/offline topic of `node` (its Last Will); ValueError for a bad name."""
    return f"{PREFIX}/{_check_name('cluster', cluster)}/status/{_check_name('node', node)}"


def status_filter(cluster: str) -> str:
    """The subscription matching every node's retained status in `cluster`."""
    return f"{PREFIX}/{_check_name('cluster', cluster)}/status/+"


def heartbeat_filter(cluster: str) -> str:
    """The subscription matching every node's heartbeats in `cluster`."""
    return f"{PREFIX}/{_check_name('cluster', cluster)}/heartbeat/+"


def node_from_topic(cluster: str, topic: str) -> str | None:
    """The node a heartbeat topic of `cluster` names, or None when the topic is not one."""
    head = f"{PREFIX}/{cluster}/heartbeat/"
    if not topic.startswith(head):
        return None
    node = topic[len(head) :]
    return node if valid_name(node) else None


class NodeState(enum.StrEnum):
    """What the retained status topic says about an agent."""

    ONLINE = "online"
    OFFLINE = "offline"  # the Last Will: the agent vanished (crash, power, network)
    STOPPED = "stopped"  # a clean stop: the watchdog of that boot, if any, is disarmed


def encode_status(state: NodeState, boot: str | None = None) -> bytes:
    """The retained status payload; `encode_status(NodeState.OFFLINE)` is the Last Will."""
    doc: dict[str, Any] = {"v": VERSION, "state": state.value}
    if boot is not None:
        doc["boot"] = boot
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_status_boot(payload: bytes) -> tuple[NodeState, str | None] | None:
    """(state, boot id or None) of a status payload, or None when it is not a valid v1 status.

    A `stopped` status must name its boot (it only speaks for heartbeats of that boot)."""
    state = decode_status(payload)
    if state is None:
        return None
    boot = json.loads(payload.decode("utf-8")).get("boot")
    if boot is not None and not (
        isinstance(boot, str) and len(boot) <= MAX_BOOT and valid_token(boot)
    ):
        return None
    if state is NodeState.STOPPED and boot is None:
        return None
    return state, boot


def decode_status(payload: bytes) -> NodeState | None:
    """The state a status payload announces, or None when it is not a valid v1 status."""
    try:
        obj = json.loads(payload.decode("utf-8")) if len(payload) <= MAX_PAYLOAD else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if (
        not isinstance(obj, dict)
        or type(obj.get("v")) is not int
        or obj["v"] != VERSION
        or not isinstance(obj.get("state"), str)
    ):
        return None
    try:
        return NodeState(obj["state"])
    except ValueError:
        return None


class RejectReason(enum.StrEnum):
    """Why a heartbeat was dropped; the value is the metric label."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    NODE_MISMATCH = "node_mismatch"
    REPLAYED = "replayed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    UNPINNED = "unpinned"  # signed with a node key the fencers have not pinned (yet)


class HeartbeatRejected(ValueError):
    """A heartbeat that must be counted and dropped; `reason` says why, `detail` says how."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True)
class WatchdogClaim:
    """What a node says about its armed watchdog: the device `timeout`, the `cut_off` after
    which it stops feeding when it reaches neither the broker nor the API server, and its
    `feed_interval` (all seconds)."""

    timeout: float
    cut_off: float
    feed_interval: float

    def __post_init__(self) -> None:
        t, c, f = self.timeout, self.cut_off, self.feed_interval
        # A float in range is finite and stays as it is: the common case needs nothing more.
        if (
            type(t) is float
            and type(c) is float
            and type(f) is float
            and 0 < t <= MAX_WATCHDOG
            and 0 < c <= MAX_WATCHDOG
            and 0 < f <= MAX_WATCHDOG
        ):
            return
        _check_watchdog_seconds(self, "timeout", self.timeout)
        _check_watchdog_seconds(self, "cut_off", self.cut_off)
        _check_watchdog_seconds(self, "feed_interval", self.feed_interval)

    def to_json(self) -> list[float]:
        """The `wd` array of the payload."""
        return [self.timeout, self.cut_off, self.feed_interval]


_NUMBER = (int, float)  # a tuple: `int | float` would build a new union on every check


def _check_watchdog_seconds(claim: WatchdogClaim, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise ValueError(f"wd.{name} must be a number of seconds, got {value!r}")
    if not (0 < value <= MAX_WATCHDOG and math.isfinite(value)):
        raise ValueError(f"wd.{name} must be in (0, {MAX_WATCHDOG:g}] s, got {value}")
    if type(value) is not float:  # float() of a float is the float itself
        object.__setattr__(claim, name, float(value))


@dataclass(frozen=True, init=False)
class Heartbeat:
    """One heartbeat as the agent sends it; constructing an invalid one raises ValueError.

    `seq` counts from 0 per `boot` (the node's boot id, or any id unique per agent start);
    `interval` is the sender's period in seconds; `agent` its version; `ts` the sender's wall
    clock in milliseconds (only for the replay window of signed heartbeats, never for
    detection); `wd` the armed watchdog, if any; `mac` the signature under the node's own key
    and `hmac` the one under the key derived from the old cluster key, if any.
    """

    node: str
    seq: int
    boot: str
    interval: float
    agent: str
    hmac: str | None = None
    ts: int | None = None
    wd: WatchdogClaim | None = None
    mac: str | None = None

    def __init__(
        self,
        node: str,
        seq: int,
        boot: str,
        interval: float,
        agent: str,
        hmac: str | None = None,
        ts: int | None = None,
        wd: WatchdogClaim | None = None,
        mac: str | None = None,
    ) -> None:
        # The dataclass's own __init__, in half its instructions: one write of the fields past
        # the frozen __setattr__ instead of one object.__setattr__ each (a heartbeat is built
        # for every message sent and received).
        self.__dict__.update(
            node=node,
            seq=seq,
            boot=boot,
            interval=interval,
            agent=agent,
            hmac=hmac,
            ts=ts,
            wd=wd,
            mac=mac,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name("node", self.node)
        seq = self.seq
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"seq must be an integer in 0..2**63-1, got {seq!r}")
        _check_token("boot", self.boot, MAX_BOOT)
        interval = self.interval
        # A float in range is finite and stays as it is: the common case needs nothing more.
        if type(interval) is not float or not 0 < interval <= MAX_INTERVAL:
            if isinstance(interval, bool) or not isinstance(interval, _NUMBER):
                raise ValueError(f"interval must be a number of seconds, got {interval!r}")
            # Range first: a huge JSON integer would overflow math.isfinite.
            if not (0 < interval <= MAX_INTERVAL and math.isfinite(interval)):
                raise ValueError(f"interval must be in (0, {MAX_INTERVAL:g}] s, got {interval}")
            object.__setattr__(self, "interval", float(interval))
        _check_token("agent", self.agent, MAX_AGENT)
        if self.hmac is not None:
            _check_token("hmac", self.hmac, MAX_HMAC)
        if self.mac is not None:
            _check_token("mac", self.mac, MAX_HMAC)
        ts = self.ts
        if ts is not None and (type(ts) is not int or not 0 <= ts <= MAX_TS):
            raise ValueError(f"ts must be an integer of milliseconds, got {ts!r}")

    def with_mac(self, mac: str) -> Heartbeat:
        """This heartbeat with its `mac` set; ValueError when `mac` is not a valid token.

        As `dataclasses.replace`, but the fields of this heartbeat, valid since it was made,
        are not checked a second time."""
        _check_token("mac", mac, MAX_HMAC)
        if type(self) is not Heartbeat:  # a subclass may check more: let it
            return replace(self, mac=mac)
        return self._copy_with("mac", mac)

    def with_hmac(self, hmac: str) -> Heartbeat:
        """This heartbeat with its `hmac` set; ValueError when `hmac` is not a valid token.

        As `with_mac`, for the signature under the old cluster key."""
        _check_token("hmac", hmac, MAX_HMAC)
        if type(self) is not Heartbeat:
            return replace(self, hmac=hmac)
        return self._copy_with("hmac", hmac)

    def _copy_with(self, name: str, value: str) -> Heartbeat:
        copy = object.__new__(Heartbeat)
        fields = copy.__dict__  # frozen: written past __setattr__, as __init__ itself does
        fields.update(self.__dict__)
        fields[name] = value
        return copy


def _check_token(field: str, value: object, limit: int) -> None:
    if not (isinstance(value, str) and len(value) <= limit and valid_token(value)):
        raise ValueError(
            f"{field} must be 1..{limit} printable ASCII characters without spaces, got {value!r}"
        )


def encode_heartbeat(hb: Heartbeat) -> bytes:
    """The compact JSON payload of `hb` (always within MAX_PAYLOAD bytes)."""
    # Written out by hand: the bytes `json.dumps(obj, separators=(",", ":"))` gives for the
    # object {v, node, seq, boot, interval, agent[, ts][, wd][, mac][, hmac]}, at a quarter of
    # its cost. Valid fields make that exact: seq and ts are ints, the numbers finite floats
    # (printed by repr, as json does), and the strings are escaped as json escapes them.
    text = (
        f'{{"v":{VERSION},"node":{_json_str(hb.node)},"seq":{hb.seq},'
        f'"boot":{_json_str(hb.boot)},"interval":{hb.interval!r},"agent":{_json_str(hb.agent)}'
    )
    if hb.ts is not None:
        text += f',"ts":{hb.ts}'
    wd = hb.wd
    if wd is not None:
        text += f',"wd":[{wd.timeout!r},{wd.cut_off!r},{wd.feed_interval!r}]'
    if hb.mac is not None:
        text += f',"mac":{_json_str(hb.mac)}'
    if hb.hmac is not None:
        text += f',"hmac":{_json_str(hb.hmac)}'
    return (text + "}").encode()


_REQUIRED_KEYS = ("node", "seq", "boot", "interval", "agent")
_REQUIRED = frozenset(_REQUIRED_KEYS)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for all heartbeats: json.loads with options builds a new one on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _parse(text: str) -> Any:
    """`_DECODER.decode(text)`, without its two whitespace regexes when `text` is exactly one
    JSON object (as every heartbeat is); anything else is decoded, or refused, by `decode`."""
    if text[:1] == "{":
        obj, end = _DECODER.raw_decode(text)
        if end == len(text):
            return obj
    return _DECODER.decode(text)


def decode_heartbeat(topic_node: str, payload: bytes) -> Heartbeat:
    """The heartbeat in `payload`, received on the topic of `topic_node`.

    Raises `HeartbeatRejected`: OVERSIZED above MAX_PAYLOAD bytes (checked before parsing),
    MALFORMED for anything but a v1 object with the right fields and types,
    UNSUPPORTED_VERSION for another integer `v`, NODE_MISMATCH when the payload names a node
    other than the topic's. Never raises anything else.
    """
    if len(payload) > MAX_PAYLOAD:
        raise HeartbeatRejected(
            RejectReason.OVERSIZED, f"{len(payload)} bytes, limit {MAX_PAYLOAD}"
        )
    try:
        obj = _parse(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HeartbeatRejected(RejectReason.MALFORMED, f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise HeartbeatRejected(RejectReason.MALFORMED, "not a JSON object")
    version = obj.get("v")
    if type(version) is not int:
        raise HeartbeatRejected(RejectReason.MALFORMED, f"missing or non-integer v: {version!r}")
    if version != VERSION:
        raise HeartbeatRejected(
            RejectReason.UNSUPPORTED_VERSION, f"v={version}, this agent reads v={VERSION}"
        )
    if not obj.keys() >= _REQUIRED:
        missing = [k for k in _REQUIRED_KEYS if k not in obj]
        raise HeartbeatRejected(RejectReason.MALFORMED, f"missing {', '.join(missing)}")
    try:
        wd = obj.get("wd")
        if wd is not None and (not isinstance(wd, list) or len(wd) != 3):
            raise ValueError(f"wd must be [timeout, cut_off, feed_interval], got {wd!r}")
        hb = Heartbeat(
            node=obj["node"],
            seq=obj["seq"],
            boot=obj["boot"],
            interval=obj["interval"],
            agent=obj["agent"],
            hmac=obj.get("hmac"),
            ts=obj.get("ts"),
            wd=None if wd is None else WatchdogClaim(*wd),
            mac=obj.get("mac"),
        )
    except ValueError as e:
        raise HeartbeatRejected(RejectReason.MALFORMED, str(e)) from None
    if hb.node != topic_node:
        raise HeartbeatRejected(
            RejectReason.NODE_MISMATCH, f"payload node {hb.node!r} on the topic of {topic_node!r}"
        )
    return hb


@dataclass
class _Stream:
    boot: str
    seq: int
    retired: deque[str]
    recent: deque[int]  # the last seqs accepted of this boot (duplicates are told apart)


class SequenceTracker:
    """Drops duplicate and replayed heartbeats, per node, in bounded memory.

    Per node it keeps the current boot id, the highest seq seen, the last `recent` seqs it
    accepted of that boot, and the last `retired_boots` boot ids it replaced. A heartbeat of the
    current boot must raise seq, or it is a duplicate (one of the recent seqs: with several
    brokers every heartbeat comes once per broker) or a replay; a new boot id starts a new
    stream (a restarted agent counts from 0 again); a retired boot id is a replay.
    """

    def __init__(self, retired_boots: int = 4, recent: int = 16) -> None:
        self._streams: dict[str, _Stream] = {}
        self._retired = retired_boots
        self._recent = recent

    def check(self, hb: Heartbeat) -> bool:
        """Record `hb` and return True; return False (recording nothing) for a copy of a
        heartbeat already accepted; raise `HeartbeatRejected(REPLAYED)` for a replay."""
        s = self._streams.get(hb.node)
        if s is None:
            recent = deque((hb.seq,), maxlen=self._recent)
            self._streams[hb.node] = _Stream(hb.boot, hb.seq, deque(maxlen=self._retired), recent)
        elif hb.boot == s.boot:
            if hb.seq <= s.seq:
                if hb.seq in s.recent:
                    return False
                raise HeartbeatRejected(
                    RejectReason.REPLAYED,
                    f"{hb.node}: seq {hb.seq} of boot {hb.boot} not above {s.seq}",
                )
            s.seq = hb.seq
            s.recent.append(hb.seq)
        elif hb.boot in s.retired:
            raise HeartbeatRejected(
                RejectReason.REPLAYED, f"{hb.node}: boot {hb.boot} was replaced by {s.boot}"
            )
        else:
            s.retired.append(s.boot)
            s.boot, s.seq = hb.boot, hb.seq
            s.recent.clear()
            s.recent.append(hb.seq)
        return True

    def accept(self, hb: Heartbeat) -> bool:
        """True (and recorded) for a fresh heartbeat; False for a duplicate or replay."""
        try:
            return self.check(hb)
        except HeartbeatRejected:
            return False

    def forget(self, node: str) -> None:
        """Drop everything known about `node` (it left the cluster)."""
        self._streams.pop(node, None)

    def __len__(self) -> int:
        return len(self._streams)
