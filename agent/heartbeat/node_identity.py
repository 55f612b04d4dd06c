"""A node's identity announcement: its public key and health endpoint, proven. Pure.

Each node agent publishes, on every broker it connects to (retained, QoS 1):

- `nodefence/v1/<cluster>/identity/<node>`:
  `{"v":1,"node":..,"key":"<base64 node public key>","fencer":"<base64 fencer public key>",
  "health":"host:port","mac":"<hex>"}`

`mac` is the HMAC-SHA256 of the other fields under the node's key agreed with that fencer key
(`nodefence.agent.heartbeat.node_keys`): only the holder of the announced key's private half can
make it (proof of possession), and the fencers believe the health endpoint only from the pinned key.
The health endpoint travels here, not as an annotation on the Node, so that a node agent needs no
right to change Node objects at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from nodefence.agent.heartbeat.codec import MAX_HMAC, PREFIX, valid_name

MAX_IDENTITY = 1024
_ENDPOINT = re.compile(r"[A-Za-z0-9.:\-\[\]]{1,253}:[0-9]{1,5}")
_MAC = re.compile(rf"[0-9a-f]{{1,{MAX_HMAC}}}")


@dataclass(frozen=True)
class Identity:
    """One node's announcement (`key` and `fencer` are raw 32-byte public keys)."""

    node: str
    key: bytes
    fencer: bytes
    health: str
    mac: str | None = None


def identity_topic(cluster: str, node: str) -> str:
    """Where `node` announces its identity."""
    return f"{PREFIX}/{cluster}/identity/{node}"


def identity_filter(cluster: str) -> str:
    """What the fencers subscribe to for identities."""
    return f"{PREFIX}/{cluster}/identity/+"


def signed_bytes(ident: Identity) -> bytes:
    """The bytes `mac` covers: every field but `mac`, tagged, unambiguously joined."""
    parts = (
        "identity v1",
        ident.node,
        base64.b64encode(ident.key).decode(),
        base64.b64encode(ident.fencer).decode(),
        ident.health,
    )
    return "\n".join(parts).encode()  # no field can hold a newline


def with_mac(ident: Identity, mac: str) -> Identity:
    """`ident` carrying `mac`."""
    return replace(ident, mac=mac)


def valid_endpoint(text: object) -> bool:
    """True for `host:port` as peers probe it (no spaces, a port number)."""
    if not isinstance(text, str) or _ENDPOINT.fullmatch(text) is None:
        return False
    return 0 < int(text.rpartition(":")[2]) < 65536


def encode_identity(ident: Identity) -> bytes:
    """The announcement payload."""
    obj: dict[str, Any] = {
        "v": 1,
        "node": ident.node,
        "key": base64.b64encode(ident.key).decode(),
        "fencer": base64.b64encode(ident.fencer).decode(),
        "health": ident.health,
    }
    if ident.mac is not None:
        obj["mac"] = ident.mac
    return json.dumps(obj, separators=(",", ":")).encode()


def _key(value: object) -> bytes | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def decode_identity(topic_node: str, payload: bytes) -> Identity | None:
    """A well-formed announcement by the node its topic names, or None (mac not checked)."""
    if len(payload) > MAX_IDENTITY:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != 1 or obj.get("node") != topic_node:
        return None
    key, fencer, health, mac = (
        _key(obj.get("key")),
        _key(obj.get("fencer")),
        obj.get("health"),
        obj.get("mac"),
    )
    if (
        not valid_name(topic_node)
        or key is None
        or fencer is None
        or not valid_endpoint(health)
        or not (isinstance(mac, str) and _MAC.fullmatch(mac))
    ):
        return None
    assert isinstance(health, str) and isinstance(mac, str)
    return Identity(topic_node, key, fencer, health, mac)
