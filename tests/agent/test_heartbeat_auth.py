"""Signed heartbeats: the pure signing and checking rules, then a real leader behind a real
mosquitto refusing forged, unsigned, stale and replayed heartbeats and counting each."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.detection.profiles import DEFAULT
from nodefence.agent.heartbeat.codec import (
    Heartbeat,
    HeartbeatRejected,
    RejectReason,
    SequenceTracker,
    WatchdogClaim,
    decode_heartbeat,
    encode_heartbeat,
    heartbeat_topic,
)
from nodefence.agent.heartbeat.signing import (
    AuthMode,
    HeartbeatVerifier,
    node_key,
    sign,
    signing_bytes,
)
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from tests.support.leader import leader_config, running_leader
from tests.support.wait import eventually

CLUSTER_KEY = b"k" * 16 + b"0123456789abcdef0123"
NOW = 1_800_000_000.0


def heartbeat(node: str = "n1", seq: int = 1, **kw: object) -> Heartbeat:
    args: dict[str, object] = {"boot": "b1", "interval": 1.0, "agent": "t", "ts": int(NOW * 1000)}
    args.update(kw)
    return Heartbeat(node, seq, **args)  # type: ignore[arg-type]


def signed(node: str = "n1", seq: int = 1, key: bytes = CLUSTER_KEY, **kw: object) -> Heartbeat:
    return sign(heartbeat(node, seq, **kw), node_key(key, node))


def verifier(mode: AuthMode = AuthMode.REQUIRED) -> HeartbeatVerifier:
    return HeartbeatVerifier(mode, CLUSTER_KEY, max_skew=30.0)


def reason_of(v: HeartbeatVerifier, hb: Heartbeat, now: float = NOW) -> RejectReason | None:
    try:
        v.check(hb, now)
    except HeartbeatRejected as rej:
        return rej.reason
    return None


# -- pure rules --------------------------------------------------------------------------------


def test_a_signed_heartbeat_survives_the_wire_and_verifies() -> None:
    hb = signed(wd=WatchdogClaim(60, 30, 1))
    back = decode_heartbeat("n1", encode_heartbeat(hb))
    assert back == hb
    assert verifier().check(back, NOW) is True


def test_every_node_has_its_own_key() -> None:
    assert node_key(CLUSTER_KEY, "n1") != node_key(CLUSTER_KEY, "n2")
    assert node_key(CLUSTER_KEY, "n1") != node_key(b"x" * 36, "n1")
    # node n2's key cannot sign for n1
    forged = sign(heartbeat("n1"), node_key(CLUSTER_KEY, "n2"))
    assert reason_of(verifier(), forged) is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 2},
        {"boot": "b2"},
        {"interval": 2.0},
        {"agent": "u"},
        {"ts": int(NOW * 1000) + 1},
        {"wd": WatchdogClaim(60, 30, 1)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_changing_any_signed_field_breaks_the_signature(change: dict[str, object]) -> None:
    tampered = replace(signed(), **change)  # type: ignore[arg-type]
    assert reason_of(verifier(), tampered) is RejectReason.BAD_SIGNATURE


def test_unsigned_heartbeats_by_mode() -> None:
    hb = heartbeat()
    assert reason_of(verifier(AuthMode.REQUIRED), hb) is RejectReason.UNSIGNED
    assert verifier(AuthMode.PERMISSIVE).check(hb, NOW) is False  # accepted, counted
    assert HeartbeatVerifier(AuthMode.OFF).check(hb, NOW) is False
    # permissive still refuses a wrong signature
    assert reason_of(verifier(AuthMode.PERMISSIVE), replace(signed(), seq=9)) is (
        RejectReason.BAD_SIGNATURE
    )


def test_a_heartbeat_outside_the_replay_window_is_stale() -> None:
    v = verifier()
    assert reason_of(v, signed(), now=NOW + 29) is None
    assert reason_of(v, signed(), now=NOW + 31) is RejectReason.STALE
    assert reason_of(v, signed(), now=NOW - 31) is RejectReason.STALE
    assert reason_of(v, signed(ts=None)) is RejectReason.STALE


def test_a_captured_heartbeat_replayed_inside_the_window_is_dropped_by_sequence() -> None:
    v, seqs = verifier(), SequenceTracker()
    first = signed(seq=5)
    v.check(first, NOW)
    seqs.check(first)
    replay = decode_heartbeat("n1", encode_heartbeat(first))
    v.check(replay, NOW + 1)  # the signature is genuine ...
    assert seqs.check(replay) is False  # ... but it is a copy of one accepted: no new life
    older = signed(seq=4)
    v.check(older, NOW + 1)
    with pytest.raises(HeartbeatRejected) as info:
        seqs.check(older)  # an older one never accepted is refused as a replay
    assert info.value.reason is RejectReason.REPLAYED


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        HeartbeatVerifier(AuthMode.REQUIRED, b"short")
    with pytest.raises(ValueError, match="needs the fencer key"):
        HeartbeatVerifier(AuthMode.PERMISSIVE, None)


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(0, 2**63 - 1), position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_no_single_byte_change_of_a_signed_payload_is_accepted_as_another_heartbeat(
    seq: int, position: int, byte: int
) -> None:
    hb = signed(seq=seq)
    data = bytearray(encode_heartbeat(hb))
    i = position % len(data)
    if data[i] == byte:
        return
    data[i] = byte
    try:
        back = decode_heartbeat("n1", bytes(data))
    except HeartbeatRejected:
        return  # refused as malformed: fine
    if back == hb:
        return  # a change that means nothing (e.g. JSON whitespace, key order)
    assert reason_of(verifier(), back) is not None


def test_signing_bytes_do_not_depend_on_the_signature() -> None:
    hb = signed()
    assert signing_bytes(hb) == signing_bytes(replace(hb, hmac=None))


# -- a real leader behind mosquitto ------------------------------------------------------------

CLUSTER = "auth-test"


@pytest.fixture
def cfg(kube: KubeApiServer, broker: MosquittoBroker, tmp_path: Path) -> AgentConfig:
    return leader_config(CLUSTER, kube, broker, tmp_path, heartbeat_key=CLUSTER_KEY)


@pytest_asyncio.fixture
async def leader(cfg: AgentConfig) -> AsyncIterator[LeaderSide]:
    assert cfg.auth.mode == "required"  # the default once a key is configured
    async with running_leader(cfg, DEFAULT, "leader") as (side, _):
        yield side


def live(node: str, seq: int, key: bytes = CLUSTER_KEY, boot: str = "b1") -> bytes:
    hb = Heartbeat(node, seq, boot, 1.0, "t", ts=int(time.time() * 1000))
    return encode_heartbeat(sign(hb, node_key(key, node)))


async def test_the_leader_keeps_alive_only_nodes_whose_heartbeats_it_can_authenticate(
    leader: LeaderSide, broker: MosquittoBroker
) -> None:
    side = leader
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="attacker") as client:

        async def send(node: str, payload: bytes) -> None:
            await client.publish(heartbeat_topic(CLUSTER, node), payload, qos=1)

        captured = live("victim", 1)
        await send("victim", captured)
        await eventually("the victim's genuine heartbeat", lambda: side.stats.heartbeats == 1)
        heard = side.detector.last_heartbeat("victim")

        await send("victim", encode_heartbeat(Heartbeat("victim", 2, "b1", 1.0, "t")))
        await send("victim", live("victim", 3, key=b"w" * 40))  # a key that is not the cluster's
        await send("victim", live("victim", 4, key=b"z" * 32))
        # A captured genuine heartbeat sent again is a copy, like a second broker's: dropped
        # as a duplicate, never taken as new life.
        await send("victim", captured)
        old = Heartbeat("victim", 9, "b0", 1.0, "t", ts=int((time.time() - 60) * 1000))
        await send("victim", encode_heartbeat(sign(old, node_key(CLUSTER_KEY, "victim"))))

        want = {"unsigned": 1, "bad_signature": 2, "stale": 1}
        await eventually("four refusals", lambda: dict(side.stats.rejected) == want)
        await eventually("one copy", lambda: side.stats.duplicates == 1)
        assert side.stats.heartbeats == 1
        assert side.detector.last_heartbeat("victim") == heard  # nothing kept it alive
        assert side.rejected_at["victim"] >= heard

        await send("victim", live("victim", 5))  # the genuine agent goes on
        await eventually("the genuine stream goes on", lambda: side.stats.heartbeats == 2)


def test_a_rotation_key_is_accepted_but_never_confused_with_an_unknown_one() -> None:
    new = b"n" * 40
    rotating = HeartbeatVerifier(AuthMode.REQUIRED, CLUSTER_KEY, 30.0, also_accept=(new,))
    assert rotating.check(signed(key=new), NOW) is True  # agents already on the new key
    assert rotating.check(signed(), NOW) is True  # agents still on the current key
    assert reason_of(rotating, signed(key=b"u" * 40)) is RejectReason.BAD_SIGNATURE
    assert reason_of(verifier(), signed(key=new)) is RejectReason.BAD_SIGNATURE
    with pytest.raises(ValueError, match="at least 32 bytes"):
        HeartbeatVerifier(AuthMode.REQUIRED, CLUSTER_KEY, also_accept=(b"short",))
