"""The peer-probe codec (agent/probes/peers.py): what comes off the broker is untrusted, so every
malformed, oversized or wrongly typed request or result decodes to None (never an exception,
never a coerced value), and what the leader and the agents send decodes to itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodefence.agent.heartbeat.codec import MAX_HMAC, MAX_TS
from nodefence.agent.probes.peers import (
    MAX_PROBE_PAYLOAD,
    ProbeRequest,
    ProbeResult,
    Target,
    choose_peers,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
    probe_filter,
    probe_topic,
    result_filter,
    result_topic,
    valid_id,
)
from nodefence.agent.probes.requests import OutstandingProbes
from nodefence.agent.probes.signing import ProbeRejected, ProbeRejectReason

REQUEST = ProbeRequest(
    id="r-0001",
    suspect="node-3",
    peers=("node-1", "node-2"),
    targets=(Target("10.0.0.3", 9101, "agent"), Target("10.0.0.3", 10250, "kubelet")),
    ts=1_800_000_000_000,
    macs=(("node-1", "aa11"), ("node-2", "bb22")),
)
RESULT = ProbeResult("r-0001", "node-1", "node-3", True, ts=1_800_000_000_500, mac="cc33")


def request(**fields: Any) -> bytes:
    """A request payload as a fencer sends it, with `fields` replaced (None: left out)."""
    obj = json.loads(encode_request(REQUEST))
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


def target(**fields: Any) -> bytes:
    """A request whose only target has `fields` replaced."""
    t: dict[str, Any] = {"host": "10.0.0.3", "port": 9101, "kind": "agent"}
    t.update(fields)
    return request(targets=[t])


def result(**fields: Any) -> bytes:
    """A result payload as node-1 sends it, with `fields` replaced (None: left out)."""
    obj = json.loads(encode_result(RESULT))
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


# -- what is sent comes back ------------------------------------------------------------------


def test_a_signed_request_decodes_to_itself() -> None:
    assert decode_request(encode_request(REQUEST)) == REQUEST


def test_an_unsigned_request_decodes_without_time_or_signatures() -> None:
    plain = ProbeRequest("r-2", "node-3", ("node-1",), (Target("h", 1, "kubelet"),))
    assert decode_request(encode_request(plain)) == plain
    assert plain.mac_for("node-1") is None


def test_signatures_are_kept_in_the_order_of_the_peers_asked_whatever_the_wire_order() -> None:
    got = decode_request(request(macs={"node-2": "bb22", "node-1": "aa11"}))
    assert got is not None
    assert got.macs == (("node-1", "aa11"), ("node-2", "bb22"))
    assert (got.mac_for("node-2"), got.mac_for("node-9")) == ("bb22", None)


@pytest.mark.parametrize(
    "res",
    [
        RESULT,
        ProbeResult("r-1", "node-1", "node-3", False),
        ProbeResult("r-1", "node-1", "node-3", True, ts=0, hmac="dd44", mac="cc33"),
    ],
    ids=["signed", "unsigned", "upgrade-both-macs"],
)
def test_a_result_decodes_to_itself(res: ProbeResult) -> None:
    assert decode_result(res.peer, encode_result(res)) == res


def test_topics_name_the_cluster_and_the_node() -> None:
    assert probe_topic("c1", "node-3") == "nodefence/v1/c1/probe/node-3"
    assert probe_filter("c1") == "nodefence/v1/c1/probe/+"
    assert result_topic("c1", "node-1") == "nodefence/v1/c1/probe-result/node-1"
    assert result_filter("c1") == "nodefence/v1/c1/probe-result/+"


# -- malformed requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[1, 2]", id="a-list"),
        pytest.param(b'"a string"', id="a-string"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-too-deep"),
        pytest.param(request(v=2), id="future-version"),
        pytest.param(request(v="1"), id="version-as-string"),
        pytest.param(b'{"id": "r", "suspect": "n", "peers": [], "targets": []}', id="no-version"),
        pytest.param(request(id=None), id="no-id"),
        pytest.param(request(id=""), id="empty-id"),
        pytest.param(request(id="a b"), id="id-with-space"),
        pytest.param(request(id="x" * 65), id="id-too-long"),
        pytest.param(request(id=7), id="id-a-number"),
        pytest.param(request(suspect=None), id="no-suspect"),
        pytest.param(request(suspect="Node_3"), id="suspect-not-a-node-name"),
        pytest.param(request(suspect="n/../x"), id="suspect-with-slash"),
        pytest.param(request(suspect=["node-3"]), id="suspect-a-list"),
        pytest.param(request(peers=None), id="no-peers"),
        pytest.param(request(peers="node-1"), id="peers-a-string"),
        pytest.param(request(peers=["node-1", 2]), id="peer-a-number"),
        pytest.param(request(targets=None), id="no-targets"),
        pytest.param(request(targets="10.0.0.3:80"), id="targets-a-string"),
        pytest.param(request(targets=[["10.0.0.3", 80, "agent"]]), id="target-a-list"),
        pytest.param(target(kind="ssh"), id="unknown-kind"),
        pytest.param(target(kind=None), id="no-kind"),
        pytest.param(target(port=0), id="port-0"),
        pytest.param(target(port=65536), id="port-65536"),
        pytest.param(target(port=-1), id="port-negative"),
        pytest.param(
            request(targets=[{"host": "h", "port": 1, "kind": "agent"}] * 9), id="9-targets"
        ),
        pytest.param(request(ts=-1), id="ts-negative"),
        pytest.param(request(ts=MAX_TS + 1), id="ts-too-large"),
        pytest.param(request(ts=1.5), id="ts-a-float"),
        pytest.param(request(ts=True), id="ts-a-bool"),
        pytest.param(request(ts="1800000000000"), id="ts-a-string"),
        pytest.param(request(macs=["aa11"]), id="macs-a-list"),
        pytest.param(request(macs={"node-9": "aa11"}), id="mac-for-a-peer-not-asked"),
        pytest.param(request(macs={"node-1": "ä"}), id="mac-not-ascii"),
        pytest.param(request(macs={"node-1": "a b"}), id="mac-with-space"),
        pytest.param(request(macs={"node-1": "a" * (MAX_HMAC + 1)}), id="mac-too-long"),
        pytest.param(request(macs={"node-1": 1234}), id="mac-a-number"),
    ],
)
def test_a_malformed_request_decodes_to_none(payload: bytes) -> None:
    assert decode_request(payload) is None


# Wrong types are refused, not coerced: the peer must probe what the fencer signed, and the
# decoder must not raise on anything a broker can deliver.
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(target(port="9101"), id="port-a-string"),
        pytest.param(target(port=9101.9), id="port-a-float"),
        pytest.param(target(port=True), id="port-a-bool"),
        pytest.param(target(port=None), id="port-null"),
        pytest.param(target(host={"a": 1}), id="host-an-object"),
        pytest.param(target(host=["10.0.0.3"]), id="host-a-list"),
        pytest.param(target(host=None), id="host-null"),
        pytest.param(target(host=10), id="host-a-number"),
        pytest.param(target(host=""), id="host-empty"),
    ],
)
def test_a_target_of_the_wrong_type_is_refused_not_coerced(payload: bytes) -> None:
    assert decode_request(payload) is None


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_a_port_that_is_no_finite_number_decodes_to_none_and_does_not_raise(number: bytes) -> None:
    payload = target(port=9101).replace(b"9101", number)
    assert decode_request(payload) is None


def test_a_request_of_exactly_the_size_limit_decodes_and_one_byte_more_does_not() -> None:
    base = request(pad="")
    at_limit = request(pad="x" * (MAX_PROBE_PAYLOAD - len(base)))
    assert len(at_limit) == MAX_PROBE_PAYLOAD
    assert decode_request(at_limit) == REQUEST
    over = request(pad="x" * (MAX_PROBE_PAYLOAD - len(base) + 1))
    assert decode_request(over) is None


# -- malformed results -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"{", id="not-json"),
        pytest.param(b"null", id="null"),
        pytest.param(result(v=None), id="no-version"),
        pytest.param(result(v=2), id="future-version"),
        pytest.param(result(peer="node-2"), id="peer-not-its-topic"),
        pytest.param(result(peer=None), id="no-peer"),
        pytest.param(result(suspect=None), id="no-suspect"),
        pytest.param(result(suspect="NODE 3"), id="suspect-not-a-node-name"),
        pytest.param(result(id=None), id="no-id"),
        pytest.param(result(id="a b"), id="id-with-space"),
        pytest.param(result(id=1), id="id-a-number"),
        pytest.param(result(reachable=None), id="no-answer"),
        pytest.param(result(reachable=1), id="answer-a-number"),
        pytest.param(result(reachable="true"), id="answer-a-string"),
        pytest.param(result(ts=-5), id="ts-negative"),
        pytest.param(result(ts=2.5), id="ts-a-float"),
        pytest.param(result(ts=False), id="ts-a-bool"),
        pytest.param(result(mac="é"), id="mac-not-ascii"),
        pytest.param(result(mac="m" * (MAX_HMAC + 1)), id="mac-too-long"),
        pytest.param(result(hmac=["x"]), id="old-mac-a-list"),
        pytest.param(result(pad="x" * MAX_PROBE_PAYLOAD), id="oversized"),
    ],
)
def test_a_malformed_result_decodes_to_none(payload: bytes) -> None:
    assert decode_result("node-1", payload) is None


# -- replays -----------------------------------------------------------------------------------


def test_a_replayed_result_decodes_again_and_the_leader_admits_it_only_once() -> None:
    # Decoding is stateless; replays are the leader's to catch (agent/probes/requests.py).
    probes = OutstandingProbes(lifetime=5.0)
    probes.asked(REQUEST, now=100.0)
    wire = encode_result(RESULT)
    first, again = decode_result("node-1", wire), decode_result("node-1", wire)
    assert first == again == RESULT
    assert first is not None and again is not None
    assert probes.admit(first, now=101.0) == 100.0
    with pytest.raises(ProbeRejected) as err:
        probes.admit(again, now=101.5)
    assert err.value.reason is ProbeRejectReason.REPLAYED


def test_a_result_replayed_from_another_request_is_not_admitted() -> None:
    probes = OutstandingProbes(lifetime=5.0)
    probes.asked(REQUEST, now=100.0)
    old = decode_result("node-1", result(id="r-0000"))
    assert old is not None
    with pytest.raises(ProbeRejected) as err:
        probes.admit(old, now=100.5)
    assert err.value.reason is ProbeRejectReason.UNKNOWN_REQUEST


# -- request ids and peer choice ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "valid"),
    [
        ("a", True),
        ("x" * 64, True),
        ("~!#", True),
        ("", False),
        ("x" * 65, False),
        ("a b", False),
        ("ä", False),
        ("a\n", False),
        (None, False),
        (12, False),
    ],
)
def test_a_request_id_is_1_to_64_printable_ascii_characters(rid: object, valid: bool) -> None:
    assert valid_id(rid) is valid


def test_peers_are_never_the_suspect_and_rotate_with_the_salt() -> None:
    healthy = ["node-4", "node-2", "node-3", "node-1"]
    assert choose_peers("node-3", healthy, 2, salt=0) == ("node-1", "node-2")
    assert choose_peers("node-3", healthy, 2, salt=1) == ("node-2", "node-4")
    assert choose_peers("node-3", healthy, 2, salt=2) == ("node-4", "node-1")
    assert choose_peers("node-3", healthy, 9, salt=5) == ("node-4", "node-1", "node-2")
    assert choose_peers("node-3", ["node-3"], 2, salt=0) == ()
