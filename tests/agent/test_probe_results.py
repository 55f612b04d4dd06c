"""Probe results the leader believes: signed by the answering peer, answering a request the
leader sent, for that suspect, from a peer it asked, in time, once. First the pure rules
(signatures, matching), then a real leader behind a real mosquitto and the Kubernetes API
emulator, with a raw MQTT client playing the peers and the forger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from nodefence.agent.config.agent_file import AgentConfig
from nodefence.agent.detection.detector import NodeVerdict
from nodefence.agent.detection.profiles import DEFAULT
from nodefence.agent.heartbeat.codec import Heartbeat, encode_heartbeat, heartbeat_topic
from nodefence.agent.heartbeat.signing import AuthMode, HeartbeatVerifier, node_key, sign
from nodefence.agent.kube.client import HEALTH_ANNOTATION
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.agent.probes.peers import (
    ProbeRequest,
    ProbeResult,
    Target,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
    probe_topic,
    result_topic,
)
from nodefence.agent.probes.requests import OutstandingProbes
from nodefence.agent.probes.responder_loop import Answering, answer_probes
from nodefence.agent.probes.signing import (
    ProbeRejected,
    ProbeRejectReason,
    ProbeResultVerifier,
    sign_result,
    signing_bytes,
)
from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from tests.support.leader import leader_config, running_leader
from tests.support.wait import eventually

CLUSTER = "probe-test"
CLUSTER_KEY = b"p" * 16 + b"0123456789abcdef0123"
NOW = 1_800_000_000.0
SUSPECT = "suspect"
PEERS = ("peer-1", "peer-2", "peer-3", "peer-4")  # the leader asks three of the four


def result(
    peer: str = "peer-1",
    reachable: bool = False,
    rid: str = "req-1",
    suspect: str = SUSPECT,
    ts: int | None = int(NOW * 1000),
) -> ProbeResult:
    return ProbeResult(rid, peer, suspect, reachable, ts=ts)


def signed(res: ProbeResult, key: bytes = CLUSTER_KEY, signer: str | None = None) -> ProbeResult:
    return sign_result(res, node_key(key, signer or res.peer))


def verifier(mode: AuthMode = AuthMode.REQUIRED, **kw: object) -> ProbeResultVerifier:
    return ProbeResultVerifier(HeartbeatVerifier(mode, CLUSTER_KEY, max_skew=30.0, **kw))  # type: ignore[arg-type]


def rejection(check: object) -> ProbeRejectReason | None:
    """The reason `check()` refused with, or None when it accepted."""
    try:
        check()  # type: ignore[operator]
    except ProbeRejected as rej:
        return rej.reason
    return None


# -- signatures (pure) -------------------------------------------------------------------------


def test_a_signed_result_survives_the_wire_and_verifies() -> None:
    res = signed(result())
    back = decode_result("peer-1", encode_result(res))
    assert back == res
    assert verifier().check(back, NOW) is True


def test_a_result_signed_with_another_peers_key_or_a_foreign_cluster_key_is_refused() -> None:
    v = verifier()
    assert rejection(lambda: v.check(signed(result(), signer="peer-2"), NOW)) is (
        ProbeRejectReason.BAD_SIGNATURE
    )
    assert rejection(lambda: v.check(signed(result(), key=b"w" * 40), NOW)) is (
        ProbeRejectReason.BAD_SIGNATURE
    )


@pytest.mark.parametrize(
    "change",
    [{"id": "req-2"}, {"peer": "peer-2"}, {"suspect": "other"}, {"reachable": True}, {"ts": 1}],
    ids=lambda c: next(iter(c)),
)
def test_changing_any_signed_field_breaks_the_signature(change: dict[str, object]) -> None:
    tampered = replace(signed(result()), **change)  # type: ignore[arg-type]
    assert rejection(lambda: verifier().check(tampered, NOW)) is ProbeRejectReason.BAD_SIGNATURE


def test_unsigned_results_by_mode() -> None:
    res = result()
    assert rejection(lambda: verifier().check(res, NOW)) is ProbeRejectReason.UNSIGNED
    assert verifier(AuthMode.PERMISSIVE).check(res, NOW) is False  # accepted, counted
    assert ProbeResultVerifier(HeartbeatVerifier(AuthMode.OFF)).check(res, NOW) is False
    bad = replace(signed(result()), reachable=True)
    assert rejection(lambda: verifier(AuthMode.PERMISSIVE).check(bad, NOW)) is (
        ProbeRejectReason.BAD_SIGNATURE
    )


def test_a_result_outside_the_replay_window_or_without_a_timestamp_is_stale() -> None:
    v, res = verifier(), signed(result())
    assert v.check(res, NOW + 29) is True
    assert rejection(lambda: v.check(res, NOW + 31)) is ProbeRejectReason.STALE
    assert rejection(lambda: v.check(res, NOW - 31)) is ProbeRejectReason.STALE
    assert rejection(lambda: v.check(signed(result(ts=None)), NOW)) is ProbeRejectReason.STALE


def test_a_rotation_key_signs_results_as_it_signs_heartbeats() -> None:
    new = b"n" * 40
    rotating = verifier(also_accept=(new,))
    assert rotating.check(signed(result(), key=new), NOW) is True
    assert rotating.check(signed(result()), NOW) is True
    assert rejection(lambda: verifier().check(signed(result(), key=new), NOW)) is (
        ProbeRejectReason.BAD_SIGNATURE
    )


def test_a_heartbeat_signature_never_signs_a_result() -> None:
    assert signing_bytes(result()).startswith(b"probe-result v1\n")
    hb = sign(Heartbeat("peer-1", 1, "b", 1.0, "t", ts=1), node_key(CLUSTER_KEY, "peer-1"))
    assert hb.hmac is not None
    stolen = replace(result(), hmac=hb.hmac)
    assert rejection(lambda: verifier().check(stolen, NOW)) is ProbeRejectReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"id":"a b","peer":"peer-1","suspect":"s","reachable":false}',
        b'{"v":1,"id":"","peer":"peer-1","suspect":"s","reachable":false}',
        b'{"v":1,"id":"a\\nb","peer":"peer-1","suspect":"s","reachable":false}',
        '{"v":1,"id":"a","peer":"peer-1","suspect":"s","reachable":false,"hmac":"\u00e9"}'.encode(),
        b'{"v":1,"id":"a","peer":"peer-1","suspect":"s","reachable":false,"ts":-1}',
        b'{"v":1,"id":"a","peer":"peer-1","suspect":"s","reachable":false,"ts":1.5}',
        b'{"v":1,"id":"a","peer":"peer-2","suspect":"s","reachable":false}',
    ],
    ids=["id with a space", "empty id", "id with a newline", "non-ASCII hmac", "negative ts",
         "fractional ts", "peer not the topic's"],
)  # fmt: skip
def test_a_malformed_result_is_refused_before_any_signature_check(payload: bytes) -> None:
    assert decode_result("peer-1", payload) is None


# -- matching results to requests (pure) -------------------------------------------------------

REQ = ProbeRequest("req-1", SUSPECT, ("peer-1", "peer-2"), (Target("10.0.0.9", 9440, "agent"),))


def outstanding(at: float = 100.0) -> OutstandingProbes:
    probes = OutstandingProbes(lifetime=2.0)
    probes.asked(REQ, at)
    return probes


@pytest.mark.parametrize(
    ("res", "now", "reason"),
    [
        (result("peer-1"), 101.0, None),
        (result("peer-2", reachable=True), 102.0, None),
        (result("peer-1", rid="req-9"), 101.0, ProbeRejectReason.UNKNOWN_REQUEST),
        (result("peer-1", suspect="peer-3"), 101.0, ProbeRejectReason.WRONG_SUSPECT),
        (result("peer-3"), 101.0, ProbeRejectReason.NOT_ASKED),
        (result("peer-1"), 102.1, ProbeRejectReason.LATE),
        (result("peer-1"), 100.0 + 2.0 + 20.0 + 0.1, ProbeRejectReason.UNKNOWN_REQUEST),
    ],
    ids=["asked peer in time", "at the lifetime's end", "unknown id", "wrong suspect",
         "peer not asked", "late", "forgotten"],
)  # fmt: skip
def test_a_result_is_admitted_only_for_a_request_sent_to_that_peer_about_that_suspect_in_time(
    res: ProbeResult, now: float, reason: ProbeRejectReason | None
) -> None:
    probes = outstanding()
    assert rejection(lambda: probes.admit(res, now)) is reason
    if reason is None:
        assert probes.admit(result("peer-1" if res.peer == "peer-2" else "peer-2"), now) == 100.0


def test_each_asked_peer_is_admitted_once_per_request() -> None:
    probes = outstanding()
    assert probes.admit(result("peer-1"), 100.5) == 100.0
    for again in (result("peer-1"), result("peer-1", reachable=True)):
        assert rejection(lambda r=again: probes.admit(r, 100.6)) is ProbeRejectReason.REPLAYED
    assert probes.admit(result("peer-2"), 100.7) == 100.0
    second = replace(REQ, id="req-2")
    probes.asked(second, 101.0)  # a new request: the same peer may answer again
    assert probes.admit(result("peer-1", rid="req-2"), 101.5) == 101.0


def test_a_refused_result_changes_nothing() -> None:
    probes = outstanding()
    for bad in (result("peer-3"), result("peer-1", suspect="peer-2")):
        assert rejection(lambda r=bad: probes.admit(r, 101.0)) is not None
    assert probes.admit(result("peer-1"), 101.0) == 100.0


def test_memory_is_bounded_whatever_is_asked() -> None:
    probes = OutstandingProbes(lifetime=1.0, remember=0.0, limit=10)
    for i in range(100):
        probes.asked(replace(REQ, id=f"r{i}"), 0.0)
    assert len(probes) == 10
    assert rejection(lambda: probes.admit(result(rid="r0"), 0.1)) is (
        ProbeRejectReason.UNKNOWN_REQUEST
    )
    assert probes.admit(result(rid="r99"), 0.1) == 0.0
    probes.asked(replace(REQ, id="late"), 5.0)
    assert len(probes) == 1  # the rest expired


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.booleans(),  # ask (True) or answer
            st.integers(0, 4),  # request id
            st.sampled_from(("peer-1", "peer-2", "peer-3")),
            st.sampled_from((SUSPECT, "other")),
            st.floats(0, 1.5),  # time step
        ),
        max_size=60,
    )
)
def test_no_result_is_admitted_outside_what_was_asked(
    events: list[tuple[bool, int, str, str, float]],
) -> None:
    probes = OutstandingProbes(lifetime=2.0)
    asked: dict[str, tuple[ProbeRequest, float]] = {}
    admitted: set[tuple[str, str]] = set()
    now = 0.0
    for ask, n, peer, suspect, step in events:
        now += step
        rid = f"r{n}"
        if ask:
            req = ProbeRequest(rid, suspect, ("peer-1", "peer-2"), ())
            probes.asked(req, now)
            asked[rid] = (req, now)
            admitted = {(i, p) for i, p in admitted if i != rid}
            continue
        try:
            at = probes.admit(result(peer, rid=rid, suspect=suspect), now)
        except ProbeRejected:
            continue
        req, sent = asked[rid]
        assert at == sent and now - sent <= 2.0
        assert suspect == req.suspect and peer in req.peers
        assert (rid, peer) not in admitted
        admitted.add((rid, peer))


# -- a real leader behind mosquitto ------------------------------------------------------------

# A long probe timeout: each request stays open for 5 s, however slow this machine is today.
PROFILE = replace(DEFAULT, peer_probe_timeout=4.0)


@dataclass
class Cluster:
    side: LeaderSide
    client: aiomqtt.Client
    cfg: AgentConfig


@pytest_asyncio.fixture
async def cluster(
    kube: KubeApiServer, broker: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A leader (signatures required) over five Nodes: four peers that heartbeat, and a
    suspect that heartbeated once and fell silent; and an MQTT client for the test."""
    for name in (SUSPECT, *PEERS):
        # Port 9 on loopback: nothing answers, as for a dead node.
        meta = {"name": name, "annotations": {HEALTH_ANNOTATION: "127.0.0.1:9"}}
        kube.store.create("nodes", {"metadata": meta})
    cfg = leader_config(CLUSTER, kube, broker, tmp_path, heartbeat_key=CLUSTER_KEY)
    assert cfg.auth.mode == "required"
    async with (
        running_leader(cfg, PROFILE, "leader") as (side, _),
        aiomqtt.Client("127.0.0.1", broker.port, identifier="peers") as client,
    ):

        async def heartbeats() -> None:
            seq = 0
            await client.publish(heartbeat_topic(CLUSTER, SUSPECT), signed_beat(SUSPECT, 0))
            while True:
                for peer in PEERS:
                    await client.publish(heartbeat_topic(CLUSTER, peer), signed_beat(peer, seq))
                seq += 1
                await asyncio.sleep(0.3)  # the peers' heartbeat period, not a synchronisation

        beating = asyncio.create_task(heartbeats())
        try:
            yield Cluster(side, client, cfg)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


def signed_beat(node: str, seq: int) -> bytes:
    hb = Heartbeat(node, seq, "b1", 0.3, "t", ts=int(time.time() * 1000))
    return encode_heartbeat(sign(hb, node_key(CLUSTER_KEY, node)))


async def next_request(client: aiomqtt.Client) -> ProbeRequest:
    """The leader's next request to probe the suspect."""
    await client.subscribe(probe_topic(CLUSTER, SUSPECT), qos=1)
    async with asyncio.timeout(15):
        async for message in client.messages:
            if message.topic.matches(probe_topic(CLUSTER, SUSPECT)):
                assert isinstance(message.payload, bytes)
                req = decode_request(message.payload)
                assert req is not None
                return req
    raise AssertionError("no probe request")


def suspect_verdict(side: LeaderSide) -> NodeVerdict:
    return next(v for v in side.detector.evaluate(side.clock()) if v.node == SUSPECT)


def genuine(req: ProbeRequest, peer: str, reachable: bool = False, **kw: object) -> ProbeResult:
    res = ProbeResult(req.id, peer, req.suspect, reachable, ts=int(time.time() * 1000))
    return signed(replace(res, **kw))  # type: ignore[arg-type]


async def test_a_forged_unsigned_unreachable_from_a_peer_never_asked_is_not_evidence(
    cluster: Cluster,
) -> None:
    side, client = cluster.side, cluster.client
    req = await next_request(client)
    outsider = next(p for p in PEERS if p not in req.peers)
    forged = ProbeResult(req.id, outsider, SUSPECT, reachable=False)

    await client.publish(result_topic(CLUSTER, outsider), encode_result(forged), qos=1)
    await eventually(
        "the forged result handled",
        lambda: side.stats.probe_results + sum(side.stats.rejected.values()) >= 1,
    )

    assert suspect_verdict(side).peers.unreachable == 0, "a forged result counted as evidence"
    assert side.stats.probe_results == 0
    assert dict(side.stats.rejected) == {"probe_unsigned": 1}


async def test_forged_wrong_key_replayed_unknown_and_misdirected_results_never_change_a_verdict(
    cluster: Cluster,
) -> None:
    side, client = cluster.side, cluster.client
    req = await next_request(client)
    first, second = req.peers[:2]
    outsider = next(p for p in PEERS if p not in req.peers)
    now_ms = int(time.time() * 1000)

    async def send(res: ProbeResult, topic_peer: str | None = None) -> None:
        topic = result_topic(CLUSTER, topic_peer or res.peer)
        await client.publish(topic, encode_result(res), qos=1)

    forgeries = [
        (replace(genuine(req, first), hmac=None), "probe_unsigned"),
        (signed(genuine(req, first), key=b"w" * 40), "probe_bad_signature"),
        (signed(genuine(req, first), signer=second), "probe_bad_signature"),
        (genuine(req, first, ts=now_ms - 60_000), "probe_stale"),
        (genuine(req, outsider), "probe_unasked_peer"),  # a real peer's key, never asked
        (genuine(req, first, id="never-sent"), "probe_unknown_request"),
        (genuine(req, first, suspect=outsider), "probe_wrong_suspect"),
        (replace(genuine(req, first, reachable=True), hmac=None), "probe_unsigned"),
    ]
    for res, _ in forgeries:
        await send(res)
    want: dict[str, int] = {}
    for _, reason in forgeries:
        want[reason] = want.get(reason, 0) + 1
    await eventually("every forgery counted", lambda: dict(side.stats.rejected) == want)

    before = suspect_verdict(side)
    assert (before.peers.reachable, before.peers.unreachable) == (0, 0)
    assert side.stats.probe_results == 0

    # The asked peers' genuine answers still count: the forgeries used up nobody's answer.
    answer = genuine(req, first)
    await send(answer)
    await eventually("the first genuine answer", lambda: side.stats.probe_results == 1)
    await send(answer)  # captured and replayed
    want["probe_replayed"] = 1
    await eventually("the replay counted", lambda: dict(side.stats.rejected) == want)
    assert suspect_verdict(side).peers.unreachable == 1

    await send(genuine(req, second))
    await eventually("the second genuine answer", lambda: side.stats.probe_results == 2)
    assert suspect_verdict(side).peers.unreachable == 2
    assert dict(side.stats.rejected) == want


async def test_agents_sign_their_answers_and_the_leader_takes_them_as_evidence(
    cluster: Cluster,
) -> None:
    side, cfg = cluster.side, cluster.cfg
    stop = asyncio.Event()
    responders = [
        asyncio.create_task(
            answer_probes(
                cfg,
                Answering(
                    peer, None, node_key(CLUSTER_KEY, peer), False, 30.0, PROFILE.peer_probe_timeout
                ),
                stop,
            )
        )
        for peer in PEERS
    ]
    try:
        await eventually(
            "two peers' answers", lambda: suspect_verdict(side).peers.unreachable >= 2, 15
        )
    finally:
        stop.set()
        for t in responders:
            t.cancel()
        await asyncio.gather(*responders, return_exceptions=True)
    assert not any(reason.startswith("probe_") for reason in side.stats.rejected)


def test_a_request_round_trips() -> None:
    assert decode_request(encode_request(REQ)) == REQ
    assert decode_request(encode_request(replace(REQ, id="has space"))) is None
