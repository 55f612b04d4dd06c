"""Per-node keys, the pure rules: a node's key is agreed with the fencer key and no other node
can compute it; the fencers pin a key on first sight and believe a node only under it; probe
requests are signed for each asked peer and refused by every other node."""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest

from nodefence.agent.heartbeat.codec import Heartbeat, HeartbeatRejected, RejectReason
from nodefence.agent.heartbeat.node_identity import Identity, signed_bytes, with_mac
from nodefence.agent.heartbeat.node_keys import (
    Keyring,
    NodeSigner,
    Sighting,
    agreed_key,
    mac_of,
    private_key,
    public_of,
)
from nodefence.agent.heartbeat.signing import AuthMode, HeartbeatVerifier, sign_own
from nodefence.agent.probes.peers import ProbeRequest, Target
from nodefence.agent.probes.signing import RequestRefusal, check_request, sign_request

NOW = 1_800_000_000.0


FENCER = private_key(secrets.token_bytes(32))
FENCER_PUBLIC = public_of(FENCER)
NODES = {n: NodeSigner(n, private_key(secrets.token_bytes(32)), [FENCER_PUBLIC]) for n in "abc"}


def keyring() -> Keyring:
    ring = Keyring([FENCER])
    ring.load({n: s.public for n, s in NODES.items()})
    return ring


def beat(node: str, key: bytes | None = None, ts: float = NOW) -> Heartbeat:
    hb = Heartbeat(node, 1, "boot", 1.0, "t", ts=int(ts * 1000))
    return sign_own(hb, key if key is not None else NODES[node].key)


def verifier(mode: AuthMode = AuthMode.REQUIRED, ring: Keyring | None = None) -> HeartbeatVerifier:
    return HeartbeatVerifier(mode, None, keyring=ring or keyring())


def test_a_node_and_the_fencers_agree_on_its_key_and_no_other_node_can_make_it() -> None:
    ring = keyring()
    assert ring.keys("a") == (NODES["a"].key,)
    assert len({s.key for s in NODES.values()}) == len(NODES)
    # b's private key, agreed as if it were a's: another key than the one pinned for a.
    b_private = private_key(secrets.token_bytes(32))
    forged = agreed_key(b_private, FENCER_PUBLIC, "a", FENCER_PUBLIC, public_of(b_private))
    assert forged not in ring.keys("a")


def test_a_heartbeat_counts_only_under_its_own_nodes_pinned_key() -> None:
    v = verifier()
    assert v.check(beat("a"), NOW) is True
    for key in (NODES["b"].key, secrets.token_bytes(32)):
        with pytest.raises(HeartbeatRejected) as info:
            v.check(beat("a", key), NOW)
        assert info.value.reason is RejectReason.BAD_SIGNATURE
    with pytest.raises(HeartbeatRejected) as info:
        v.check(replace(beat("a"), mac=None), NOW)
    assert info.value.reason is RejectReason.UNSIGNED
    with pytest.raises(HeartbeatRejected) as info:
        v.check(beat("a", ts=NOW - 60), NOW)
    assert info.value.reason is RejectReason.STALE


def test_a_node_whose_key_is_not_pinned_is_not_believed() -> None:
    stranger = NodeSigner("d", private_key(secrets.token_bytes(32)), [FENCER_PUBLIC])
    with pytest.raises(HeartbeatRejected) as info:
        verifier().check(beat("d", stranger.key), NOW)
    assert info.value.reason is RejectReason.UNPINNED


def test_first_sight_pins_and_then_no_other_key_is_taken_for_that_node() -> None:
    ring = Keyring([FENCER])
    real = NodeSigner("n", private_key(secrets.token_bytes(32)), [FENCER_PUBLIC])
    assert ring.consider(real.identity("10.0.0.1:9440")) is Sighting.NEW
    ring.pinned("n", real.public)  # stored as its NodeKey
    assert ring.health["n"] == "10.0.0.1:9440"
    # Another key for n, with a genuine proof of possession of that other key: refused.
    other = NodeSigner("n", private_key(secrets.token_bytes(32)), [FENCER_PUBLIC])
    assert ring.consider(other.identity("10.6.6.6:9440")) is Sighting.MISMATCH
    assert ring.health["n"] == "10.0.0.1:9440" and ring.pins["n"] == real.public
    # Its own key announcing a new endpoint is believed.
    assert ring.consider(real.identity("10.0.0.2:9440")) is Sighting.KNOWN
    assert ring.health["n"] == "10.0.0.2:9440"


def test_a_reload_of_the_pins_keeps_the_endpoints_of_unchanged_ones_and_drops_the_others() -> None:
    # The leader probes a suspect's agent at the endpoint its pinned key announced: a reload
    # from the store (every 30 s) must not forget it while the pin stays the same.
    ring = Keyring([FENCER])
    a, b = (NodeSigner(n, private_key(secrets.token_bytes(32)), [FENCER_PUBLIC]) for n in "ab")
    ring.load({"a": a.public, "b": b.public})
    assert ring.consider(a.identity("10.0.0.1:9440")) is Sighting.KNOWN
    assert ring.consider(b.identity("10.0.0.2:9440")) is Sighting.KNOWN
    assert ring.load({"a": a.public, "b": b.public}) == []
    assert ring.health == {"a": "10.0.0.1:9440", "b": "10.0.0.2:9440"}
    new_b = NodeSigner("b", private_key(secrets.token_bytes(32)), [FENCER_PUBLIC])
    assert ring.load({"a": a.public, "b": new_b.public}) == ["b"]
    assert ring.health == {"a": "10.0.0.1:9440"}  # b's endpoint was announced by its old key
    assert ring.load({"b": new_b.public}) == ["a"]
    assert ring.health == {}


def test_an_announcement_without_proof_of_its_key_is_refused() -> None:
    ring = Keyring([FENCER])
    victim_public = public_of(private_key(secrets.token_bytes(32)))  # a key it does not hold
    ident = Identity("n", victim_public, FENCER_PUBLIC, "10.0.0.1:9440")
    bad = with_mac(ident, mac_of(secrets.token_bytes(32), signed_bytes(ident)))
    assert ring.consider(bad) is Sighting.BAD_PROOF
    assert ring.wanted == {}
    unknown_fencer = replace(NODES["a"].identity("h:1"), fencer=public_of(private_key(b"f" * 32)))
    assert Keyring([FENCER]).consider(unknown_fencer) is Sighting.OTHER_FENCER


def refusal(req: ProbeRequest, peer: str) -> RequestRefusal | None:
    """Why node `peer` refuses `req` (None: it takes it up), signatures required."""
    return check_request(req, peer, NODES[peer].keys, required=True, wall_now=NOW, max_skew=30.0)


REQ = ProbeRequest("req-1", "c", ("a", "b"), (Target("10.0.0.3", 9440, "agent"),))


def test_a_probe_request_is_signed_for_each_asked_peer_and_only_them() -> None:
    ring = keyring()
    signed = sign_request(REQ, ring, int(NOW * 1000))
    for peer in ("a", "b"):
        assert refusal(signed, peer) is None
    # c is the suspect, not asked: no signature for it; a's signature is not c's.
    assert refusal(signed, "c") is RequestRefusal.UNSIGNED
    misdirected = replace(signed, macs=(("c", dict(signed.macs)["a"]),))
    assert refusal(misdirected, "c") is RequestRefusal.BAD_SIGNATURE
    # Any field changed (here the port peers are made to connect to) breaks every signature.
    moved = replace(signed, targets=(Target("10.6.6.6", 22, "agent"),))
    assert refusal(moved, "a") is RequestRefusal.BAD_SIGNATURE
    old = sign_request(REQ, ring, int((NOW - 60) * 1000))
    assert refusal(old, "a") is RequestRefusal.STALE
    assert refusal(REQ, "a") is RequestRefusal.UNSIGNED
