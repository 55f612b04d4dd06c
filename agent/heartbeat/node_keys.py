"""Per-node keys: each node's own X25519 key, agreed with the fencers' key. Pure (no I/O).

The scheme is static-static Diffie-Hellman, as NaCl's `crypto_box` authenticates a sender to
one receiver. Each node holds an X25519 private key made on the node at its agent's first
start (`nodefence.agent.config.node_key_file`); the fencers hold the fencer key (the cluster's key,
a Secret only the fencer Deployment mounts). A node and the fencers agree on the node's MAC key:

    K(node) = HKDF-SHA256(X25519(node private, fencer public)      # = X25519(fencer private,
                          salt "nodefence node key v2",            #           node public)
                          info node 0x00 fencer public node public)

Only that node and the fencers can compute K(node): no other node can sign as that node, and no
node can sign as a fencer towards another node. Heartbeats and probe results (node to fencer)
and probe requests (fencer to node) carry HMAC-SHA256 under it (`mac`): 4 microseconds to
check, where an Ed25519 signature costs 60-180 to verify (0.6-1.8 cores at 10,000 heartbeats a
second, measured on the development machine); the Diffie-Hellman runs once per node and fencer
key (about 60 microseconds) when the node's key is pinned.

The fencers pin a node's public key the first time they see it announced
(`nodefence.agent.heartbeat.node_identity`, proof of possession included) and keep believing only
that key until an operator removes the pin (`Keyring`; the pins are stored as NodeKey objects,
`nodefence.agent.heartbeat.key_pins_client`). Keys travel as standard base64 of their 32 raw bytes,
as WireGuard writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nodefence.agent.heartbeat.node_identity import Identity, signed_bytes, with_mac

KEY_BYTES = 32
MAX_WANTED = 65536  # first-sight keys waiting to be stored: names come from topics
_SALT = b"nodefence node key v2"


class BadKey(ValueError):
    """A key that cannot be used (wrong length, not base64, a low-order point)."""


def decode_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 key; `BadKey` when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("not base64") from None
    if len(raw) != KEY_BYTES:
        raise BadKey(f"{len(raw)} bytes, a key has {KEY_BYTES}")
    return raw


def encode_key(raw: bytes) -> str:
    """Standard base64 of a raw key."""
    return base64.b64encode(raw).decode()


def private_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its 32 raw bytes."""
    if len(raw) != KEY_BYTES:
        raise BadKey(f"{len(raw)} bytes, a key has {KEY_BYTES}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_of(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of `key`'s public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    """A short name of a public key for logs and Events (never the key itself, never secret)."""
    return hashlib.sha256(public).hexdigest()[:16]


def agreed_key(
    own: X25519PrivateKey, other: bytes, node: str, fencer: bytes, public: bytes
) -> bytes:
    """K(node) from one side's private key and the other side's public key `other`; `fencer`
    and `public` are the fencer's and the node's public keys (bound into the key). Raises
    `BadKey` for a public key that yields no secret (a low-order point)."""
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(other))
    except ValueError:
        raise BadKey("a low-order public key: no shared secret") from None
    info = node.encode() + b"\x00" + fencer + public
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(shared)


# key -> HMAC-SHA256 keyed with it and fed nothing yet: a copy of it signs one message without
# hashing the key into the inner and outer pads again (half the cost of `hmac.new` per message).
# Bounded: a node holds one key per fencer key; the fencers one per node and fencer key.
MAX_KEYED = 4096
_keyed: dict[bytes, hmac.HMAC] = {}


def mac_of(key: bytes, data: bytes) -> str:
    """Hex HMAC-SHA256 of `data` under `key`."""
    if type(key) is not bytes:  # a bytearray can change after it is cached
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    keyed = _keyed.get(key)
    if keyed is None:
        if len(_keyed) >= MAX_KEYED:
            _keyed.clear()
        keyed = _keyed[key] = hmac.new(key, digestmod=hashlib.sha256)
    h = keyed.copy()
    h.update(data)
    return h.hexdigest()


def mac_matches(keys: Iterable[bytes], data: bytes, mac: str) -> bool:
    """Whether `mac` is the HMAC of `data` under any of `keys` (constant-time compares)."""
    return any(hmac.compare_digest(mac_of(k, data), mac) for k in keys)


class NodeSigner:
    """A node's side: its MAC key with each fencer public key it trusts (the first signs)."""

    def __init__(self, node: str, own: X25519PrivateKey, fencers: Sequence[bytes]) -> None:
        if not fencers:
            raise ValueError("a node signer needs at least one fencer public key")
        self.node = node
        self.public = public_of(own)
        self.fencers = tuple(fencers)
        self.keys = tuple(agreed_key(own, f, node, f, self.public) for f in self.fencers)

    @property
    def key(self) -> bytes:
        """The key this node signs with (agreed with the first fencer public key)."""
        return self.keys[0]

    def identity(self, health: str) -> Identity:
        """This node's announcement of its key and `health` endpoint, with its proof."""
        ident = Identity(self.node, self.public, self.fencers[0], health)
        return with_mac(ident, mac_of(self.key, signed_bytes(ident)))


class Sighting(StrEnum):
    """What an identity announcement means to the fencers' keyring."""

    KNOWN = "known"  # the pinned key: its health endpoint is now believed
    NEW = "new"  # first sight: to be pinned
    MISMATCH = "key_mismatch"  # another key than the pinned one: refused, alerted
    BAD_PROOF = "bad_identity"  # not signed by the key it announces: refused
    OTHER_FENCER = "other_fencer_key"  # agreed with a fencer key this fencer does not hold


@dataclass
class Keyring:
    """The fencers' side: their private keys, each node's pinned public key, the MAC keys.

    `pins` is what the store holds (node -> public key), `wanted` the keys seen first and not
    yet stored, `health` each node's health endpoint as its pinned key announced it.
    """

    fencer_keys: Sequence[X25519PrivateKey]
    pins: dict[str, bytes] = field(default_factory=dict)
    wanted: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    _publics: tuple[bytes, ...] = field(init=False, repr=False)
    _macs: dict[str, tuple[bytes, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.fencer_keys:
            raise ValueError("a keyring needs the fencer key")
        self._publics = tuple(public_of(k) for k in self.fencer_keys)

    @property
    def fencer_publics(self) -> tuple[bytes, ...]:
        """The public keys of the fencer keys held (the first is the current one)."""
        return self._publics

    def keys(self, node: str) -> tuple[bytes, ...]:
        """The MAC keys of `node`'s pinned key under each fencer key; () when not pinned."""
        keys = self._macs.get(node)
        if keys is not None:
            return keys
        public = self.pins.get(node)
        if public is None:
            return ()
        keys = tuple(self._derive(i, node, public) for i in range(len(self.fencer_keys)))
        self._macs[node] = keys
        return keys

    def signing_key(self, node: str) -> bytes | None:
        """The key a request to `node` is signed with (its pin, the current fencer key)."""
        keys = self.keys(node)
        return keys[0] if keys else None

    def _derive(self, i: int, node: str, public: bytes) -> bytes:
        try:
            return agreed_key(self.fencer_keys[i], public, node, self._publics[i], public)
        except BadKey:
            return b""  # a pinned low-order key matches nothing (HMAC under b"" is not it)

    def load(self, pins: Mapping[str, bytes]) -> list[str]:
        """Adopt the stored pins (the whole set); returns the nodes whose pin changed or went
        (an operator removed it: their MAC keys and endpoints are dropped)."""
        changed = [n for n, k in self.pins.items() if pins.get(n) != k]
        for node in changed:
            self._macs.pop(node, None)
            self.health.pop(node, None)
            if node not in pins:
                del self.pins[node]
        # An unchanged pin keeps its MAC keys (no Diffie-Hellman per node on every reload)
        # and the endpoint its key announced (the leader probes the agent there).
        for node, public in pins.items():
            self.pinned(node, public)
        self.pins = dict(pins)  # in the store's order, as before
        return changed

    def pinned(self, node: str, public: bytes) -> None:
        """The store holds `public` for `node` (this fencer's pin, or another's)."""
        if self.pins.get(node) != public:
            self._macs.pop(node, None)
            self.health.pop(node, None)
        self.pins[node] = public
        wanted = self.wanted.pop(node, None)
        if wanted is not None and wanted[0] == public:
            self.health[node] = wanted[1]

    def consider(self, ident: Identity) -> Sighting:
        """Judge an announcement: its key against the pin, then its proof of possession.

        Another key than the pinned one is refused before any Diffie-Hellman, so announcements
        flooded under a node's name cost the fencers no more than a comparison each."""
        pinned = self.pins.get(ident.node)
        if pinned is not None and pinned != ident.key:
            return Sighting.MISMATCH
        try:
            i = self._publics.index(ident.fencer)
        except ValueError:
            return Sighting.OTHER_FENCER
        if pinned is not None:
            key = self.keys(ident.node)[i]
        else:
            try:
                key = agreed_key(
                    self.fencer_keys[i], ident.key, ident.node, ident.fencer, ident.key
                )
            except BadKey:
                return Sighting.BAD_PROOF
        if ident.mac is None or not mac_matches((key,), signed_bytes(ident), ident.mac):
            return Sighting.BAD_PROOF
        if pinned is None:
            if ident.node in self.wanted or len(self.wanted) < MAX_WANTED:
                self.wanted[ident.node] = (ident.key, ident.health)
            return Sighting.NEW
        self.health[ident.node] = ident.health
        return Sighting.KNOWN
