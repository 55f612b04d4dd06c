"""The heartbeat wire format: topics, payload validation, and replay protection."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodefence.agent.heartbeat.codec import (
    MAX_PAYLOAD,
    Heartbeat,
    HeartbeatRejected,
    NodeState,
    RejectReason,
    SequenceTracker,
    decode_heartbeat,
    decode_status,
    encode_heartbeat,
    encode_status,
    heartbeat_filter,
    heartbeat_topic,
    node_from_topic,
    status_topic,
)


def hb(node: str = "n1", seq: int = 0, boot: str = "b1", **kw: object) -> Heartbeat:
    args: dict[str, object] = {"interval": 1.0, "agent": "0.1.0", **kw}
    return Heartbeat(node=node, seq=seq, boot=boot, **args)  # type: ignore[arg-type]


def payload(**fields: object) -> bytes:
    obj: dict[str, object] = {
        "v": 1,
        "node": "n1",
        "seq": 3,
        "boot": "b1",
        "interval": 1.0,
        "agent": "0.1.0",
    }
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP}).encode()


_DROP = object()


def rejected(topic_node: str, data: bytes) -> RejectReason:
    with pytest.raises(HeartbeatRejected) as e:
        decode_heartbeat(topic_node, data)
    return e.value.reason


# --- topics ------------------------------------------------------------------------------


def test_topics_follow_the_documented_scheme() -> None:
    assert heartbeat_topic("prod", "worker-1") == "nodefence/v1/prod/heartbeat/worker-1"
    assert status_topic("prod", "worker-1") == "nodefence/v1/prod/status/worker-1"
    assert heartbeat_filter("prod") == "nodefence/v1/prod/heartbeat/+"


def test_node_is_read_back_from_its_heartbeat_topic() -> None:
    assert node_from_topic("prod", heartbeat_topic("prod", "w1.example")) == "w1.example"


@pytest.mark.parametrize(
    "topic",
    [
        "nodefence/v1/other/heartbeat/w1",  # another cluster
        "nodefence/v1/prod/status/w1",  # the status tree
        "nodefence/v1/prod/heartbeat/",  # no node
        "nodefence/v1/prod/heartbeat/w1/extra",
        "nodefence/v1/prod/heartbeat/W1",  # not DNS-1123
        "nodefence/v2/prod/heartbeat/w1",
    ],
)
def test_topics_that_are_not_a_heartbeat_of_this_cluster_name_no_node(topic: str) -> None:
    assert node_from_topic("prod", topic) is None


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#", "UPPER", "-lead", "trail-", "a" * 254])
def test_names_that_could_break_the_topic_tree_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        heartbeat_topic("prod", name)
    with pytest.raises(ValueError, match="DNS-1123"):
        status_topic(name, "w1")


def test_status_payloads_round_trip_and_offline_is_the_last_will() -> None:
    assert encode_status(NodeState.OFFLINE) == b'{"v":1,"state":"offline"}'
    for state in NodeState:
        assert decode_status(encode_status(state)) is state
    for bad in (b"offline", b'{"v":2,"state":"offline"}', b'{"v":true,"state":"online"}', b"\xff"):
        assert decode_status(bad) is None


# --- payload -----------------------------------------------------------------------------


def test_a_heartbeat_encodes_to_compact_versioned_json() -> None:
    data = encode_heartbeat(hb(seq=7))
    assert data == b'{"v":1,"node":"n1","seq":7,"boot":"b1","interval":1.0,"agent":"0.1.0"}'


def test_the_reserved_hmac_field_is_carried_through() -> None:
    data = payload(hmac="abc123")
    assert decode_heartbeat("n1", data).hmac == "abc123"
    assert b'"hmac":"abc123"' in encode_heartbeat(hb(hmac="abc123"))


def test_unknown_keys_are_ignored_so_v1_can_grow() -> None:
    assert decode_heartbeat("n1", payload(extra={"x": 1})).seq == 3


def test_an_integer_interval_is_read_as_seconds() -> None:
    got = decode_heartbeat("n1", payload(interval=2))
    assert got.interval == 2.0 and isinstance(got.interval, float)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", RejectReason.MALFORMED),
        (b"\x00\xff garbage", RejectReason.MALFORMED),
        (b"not json", RejectReason.MALFORMED),
        (b"[1, 2, 3]", RejectReason.MALFORMED),
        (b'"offline"', RejectReason.MALFORMED),
        (
            b'{"v":1,"node":"n1","seq":1,"boot":"b","interval":NaN,"agent":"a"}',
            RejectReason.MALFORMED,
        ),
        (b"[" * 1000, RejectReason.MALFORMED),
        (b"[" * 2000, RejectReason.OVERSIZED),
        (b" " * (MAX_PAYLOAD + 1), RejectReason.OVERSIZED),
        (payload(v=_DROP), RejectReason.MALFORMED),
        (payload(v="1"), RejectReason.MALFORMED),
        (payload(v=True), RejectReason.MALFORMED),
        (payload(v=2), RejectReason.UNSUPPORTED_VERSION),
        (payload(v=0), RejectReason.UNSUPPORTED_VERSION),
        (payload(node=_DROP), RejectReason.MALFORMED),
        (payload(seq=_DROP), RejectReason.MALFORMED),
        (payload(boot=_DROP), RejectReason.MALFORMED),
        (payload(interval=_DROP), RejectReason.MALFORMED),
        (payload(agent=_DROP), RejectReason.MALFORMED),
        (payload(seq="3"), RejectReason.MALFORMED),
        (payload(seq=-1), RejectReason.MALFORMED),
        (payload(seq=1.5), RejectReason.MALFORMED),
        (payload(seq=True), RejectReason.MALFORMED),
        (payload(seq=2**64), RejectReason.MALFORMED),
        (payload(boot=""), RejectReason.MALFORMED),
        (payload(boot="x" * 65), RejectReason.MALFORMED),
        (payload(boot=7), RejectReason.MALFORMED),
        (payload(interval=0), RejectReason.MALFORMED),
        (payload(interval=-1.0), RejectReason.MALFORMED),
        (payload(interval=61), RejectReason.MALFORMED),
        (payload(interval="1"), RejectReason.MALFORMED),
        (payload(interval=False), RejectReason.MALFORMED),
        (payload(interval=1e400), RejectReason.MALFORMED),
        (payload(agent="x" * 33), RejectReason.MALFORMED),
        (payload(agent="has space"), RejectReason.MALFORMED),
        (payload(hmac=5), RejectReason.MALFORMED),
        (payload(node="N1"), RejectReason.MALFORMED),
        (payload(node="n2"), RejectReason.NODE_MISMATCH),
    ],
)
def test_bad_payloads_are_rejected_with_a_countable_reason(
    data: bytes, reason: RejectReason
) -> None:
    assert rejected("n1", data) == reason


def test_oversize_is_judged_before_parsing_even_for_valid_json() -> None:
    assert rejected("n1", payload(pad="x" * MAX_PAYLOAD)) is RejectReason.OVERSIZED


def test_a_payload_naming_another_node_is_a_mismatch_not_a_heartbeat_of_either() -> None:
    with pytest.raises(HeartbeatRejected) as e:
        decode_heartbeat("n1", encode_heartbeat(hb(node="n2")))
    assert e.value.reason is RejectReason.NODE_MISMATCH
    assert "'n2'" in e.value.detail and "'n1'" in e.value.detail


def test_an_invalid_heartbeat_cannot_be_built_for_sending() -> None:
    with pytest.raises(ValueError, match="seq"):
        hb(seq=-1)
    with pytest.raises(ValueError, match="interval"):
        hb(interval=0.0)


names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
heartbeats = st.builds(
    Heartbeat,
    node=names,
    seq=st.integers(0, 2**63 - 1),
    boot=tokens,
    interval=st.floats(min_value=0.001, max_value=60.0),
    agent=tokens,
    hmac=st.none() | tokens,
)


@given(heartbeats)
def test_every_valid_heartbeat_round_trips_within_the_size_limit(h: Heartbeat) -> None:
    data = encode_heartbeat(h)
    assert len(data) <= MAX_PAYLOAD
    assert decode_heartbeat(h.node, data) == h


@given(st.binary(max_size=2 * MAX_PAYLOAD))
def test_arbitrary_bytes_are_decoded_or_rejected_never_crash(data: bytes) -> None:
    try:
        decode_heartbeat("n1", data)
    except HeartbeatRejected as e:
        assert isinstance(e.reason, RejectReason)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)  # beyond any float
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["v", "node", "seq", "boot", "interval", "agent", "hmac", "ts", "wd"]


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {"v": st.just(1) | json_values, "node": st.just("n1") | json_values},
        optional={k: json_values for k in FIELDS[2:]},
    )
)
def test_any_json_object_is_decoded_or_rejected_with_a_reason_never_crash(
    obj: dict[str, object],
) -> None:
    try:
        data = json.dumps(obj).encode()
    except ValueError:  # an integer beyond the JSON encoder's digit limit
        return
    try:
        hb = decode_heartbeat("n1", data)
    except HeartbeatRejected as e:
        assert isinstance(e.reason, RejectReason)
        return
    assert decode_heartbeat("n1", encode_heartbeat(hb)) == hb  # what it accepted is sound


def test_a_huge_json_integer_is_malformed_not_a_crash() -> None:
    data = payload(interval=10**400)
    with pytest.raises(HeartbeatRejected) as info:
        decode_heartbeat("n1", data)
    assert info.value.reason is RejectReason.MALFORMED
    for wd in ([10**400, 1, 1], [1, 1], "x", [1, 1, float("inf")]):
        with pytest.raises(HeartbeatRejected) as info:
            decode_heartbeat("n1", payload(wd=wd))
        assert info.value.reason is RejectReason.MALFORMED


# --- replay protection -------------------------------------------------------------------


def test_rising_sequence_numbers_are_accepted() -> None:
    t = SequenceTracker()
    assert [t.accept(hb(seq=s)) for s in (0, 1, 2, 5)] == [True] * 4


def test_a_duplicate_or_older_sequence_of_the_same_boot_is_a_replay() -> None:
    t = SequenceTracker()
    assert t.accept(hb(seq=5))
    assert not t.accept(hb(seq=5))
    assert not t.accept(hb(seq=4))
    with pytest.raises(HeartbeatRejected) as e:
        t.check(hb(seq=1))
    assert e.value.reason is RejectReason.REPLAYED
    assert t.accept(hb(seq=6))


def test_a_copy_of_a_recent_heartbeat_is_a_duplicate_not_a_replay() -> None:
    # With two brokers every heartbeat arrives twice, and the slower broker's copy may come
    # after the next heartbeat: a copy is dropped quietly, it is no refused message.
    t = SequenceTracker(recent=4)
    assert t.check(hb(seq=5)) is True
    assert t.check(hb(seq=5)) is False
    assert t.check(hb(seq=6)) is True
    assert t.check(hb(seq=5)) is False  # late copy from the other broker
    for s in (7, 8, 9, 10):
        assert t.check(hb(seq=s))
    with pytest.raises(HeartbeatRejected) as e:
        t.check(hb(seq=6))  # accepted once, but too long ago to be a copy in flight
    assert e.value.reason is RejectReason.REPLAYED


def test_a_never_accepted_older_sequence_is_still_a_replay() -> None:
    t = SequenceTracker()
    assert t.check(hb(seq=5)) and t.check(hb(seq=7))
    with pytest.raises(HeartbeatRejected) as e:
        t.check(hb(seq=6))
    assert e.value.reason is RejectReason.REPLAYED


def test_a_new_boot_id_starts_again_from_zero() -> None:
    t = SequenceTracker()
    assert t.accept(hb(seq=900, boot="old"))
    assert t.accept(hb(seq=0, boot="new"))
    assert t.accept(hb(seq=1, boot="new"))


def test_a_heartbeat_of_a_replaced_boot_is_a_replay() -> None:
    t = SequenceTracker()
    assert t.accept(hb(seq=900, boot="old"))
    assert t.accept(hb(seq=0, boot="new"))
    assert not t.accept(hb(seq=901, boot="old"))
    assert t.accept(hb(seq=2, boot="new"))


def test_nodes_are_tracked_independently() -> None:
    t = SequenceTracker()
    assert t.accept(hb(node="a", seq=5))
    assert t.accept(hb(node="b", seq=0))
    assert not t.accept(hb(node="a", seq=0))


def test_memory_per_node_stays_bounded_across_many_reboots() -> None:
    t = SequenceTracker(retired_boots=3)
    for i in range(100):
        assert t.accept(hb(seq=0, boot=f"boot-{i}"))
    assert len(t) == 1
    assert len(t._streams["n1"].retired) == 3
    t.forget("n1")
    assert len(t) == 0


@given(st.lists(st.tuples(st.sampled_from(["b1", "b2", "b3"]), st.integers(0, 20)), max_size=60))
def test_no_boot_and_sequence_pair_is_ever_accepted_twice(events: list[tuple[str, int]]) -> None:
    t = SequenceTracker()
    seen: set[tuple[str, int]] = set()
    for boot, seq in events:
        if t.accept(hb(seq=seq, boot=boot)):
            assert (boot, seq) not in seen
            seen.add((boot, seq))
