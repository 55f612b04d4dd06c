"""The heartbeat path's shortcuts decide exactly as the plain checks do, and stay bounded.

Every heartbeat passes through name and token checks, a signature and the JSON encoder; the
codec remembers names found valid, checks tokens with str methods instead of a regex, writes the
JSON by hand, copies a heartbeat to sign it without checking it again, and keeps HMAC states
keyed per key. Each shortcut is held here against the plain rule it replaces."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import inspect
import json
import re
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodefence.agent.heartbeat import codec, node_keys
from nodefence.agent.heartbeat.codec import (
    MAX_HMAC,
    Heartbeat,
    WatchdogClaim,
    decode_heartbeat,
    encode_heartbeat,
    valid_name,
    valid_token,
)
from nodefence.agent.heartbeat.node_keys import Keyring, NodeSigner, mac_of, private_key, public_of
from nodefence.agent.heartbeat.signing import sign, sign_own

TOKEN_RULE = re.compile(r"[\x21-\x7e]+")


def hb(**kw: object) -> Heartbeat:
    args: dict[str, object] = {
        "node": "n1",
        "seq": 3,
        "boot": "b1",
        "interval": 1.0,
        "agent": "0.1.0",
        **kw,
    }
    return Heartbeat(**args)  # type: ignore[arg-type]


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["N1", "-n1", "n1-", "n1/x", "n+1", "n#", "", "a" * 254, "n 1"])
def test_a_name_known_valid_does_not_let_any_other_name_through(bad: str) -> None:
    assert valid_name("n1") and valid_name("n1")  # now remembered
    assert not valid_name(bad)
    assert not valid_name(bad)  # a bad name is never remembered
    with pytest.raises(ValueError, match="invalid node name"):
        hb(node=bad)


def test_the_names_remembered_stay_bounded() -> None:
    for i in range(codec.MAX_KNOWN_NAMES + 10):
        assert valid_name(f"node-{i}")
        assert len(codec._known_names) <= codec.MAX_KNOWN_NAMES
    assert valid_name("node-0")  # forgotten or not, still valid


class LookAlike(str):
    """A str subclass that hashes and compares as "n1" whatever it holds."""

    def __hash__(self) -> int:
        return hash("n1")

    def __eq__(self, other: object) -> bool:
        return other == "n1"


def test_a_str_subclass_is_judged_by_its_characters_not_by_the_names_remembered() -> None:
    assert valid_name("n1")
    assert not valid_name(LookAlike("BAD NAME"))
    assert not valid_token(LookAlike("two words"))


# -- tokens -------------------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_a_token_is_exactly_what_the_printable_ascii_regex_accepts(text: str) -> None:
    assert valid_token(text) == (TOKEN_RULE.fullmatch(text) is not None)


def test_every_character_is_judged_as_the_regex_judges_it() -> None:
    for code in [*range(0x300), 0x2028, 0xFEFF, 0xDC80, 0x1F600]:
        c = chr(code)
        for text in (c, "a" + c, c + "b", c * 3):
            assert valid_token(text) == (TOKEN_RULE.fullmatch(text) is not None), hex(code)


# -- the payload --------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True).filter(valid_name)
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
seconds = st.floats(min_value=1e-9, max_value=3600.0) | st.integers(1, 3600)
heartbeats = st.builds(
    Heartbeat,
    node=names,
    seq=st.integers(0, 2**63 - 1),
    boot=tokens,
    interval=st.floats(min_value=1e-9, max_value=60.0) | st.integers(1, 60),
    agent=tokens,
    hmac=st.none() | tokens,
    ts=st.none() | st.integers(0, 2**53),
    wd=st.none() | st.builds(WatchdogClaim, seconds, seconds, seconds),
    mac=st.none() | tokens,
)


def as_json_dumps(h: Heartbeat) -> bytes:
    """The payload as `json.dumps` writes the documented object (the encoder's former body)."""
    obj: dict[str, object] = {
        "v": 1,
        "node": h.node,
        "seq": h.seq,
        "boot": h.boot,
        "interval": h.interval,
        "agent": h.agent,
    }
    if h.ts is not None:
        obj["ts"] = h.ts
    if h.wd is not None:
        obj["wd"] = h.wd.to_json()
    if h.mac is not None:
        obj["mac"] = h.mac
    if h.hmac is not None:
        obj["hmac"] = h.hmac
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


@given(heartbeats)
def test_the_payload_is_byte_for_byte_what_json_dumps_writes(h: Heartbeat) -> None:
    assert encode_heartbeat(h) == as_json_dumps(h)
    assert decode_heartbeat(h.node, encode_heartbeat(h)) == h


def test_quotes_and_backslashes_in_tokens_are_escaped_as_json_escapes_them() -> None:
    h = hb(boot='b"1\\', agent="0.1.0\\u", mac='"', hmac="\\")
    assert encode_heartbeat(h) == as_json_dumps(h)
    assert decode_heartbeat("n1", encode_heartbeat(h)) == h


# -- signing copies -----------------------------------------------------------------------------


@given(heartbeats, tokens)
def test_a_signed_copy_equals_the_replaced_heartbeat(h: Heartbeat, mac: str) -> None:
    assert h.with_mac(mac) == dataclasses.replace(h, mac=mac)
    assert h.with_hmac(mac) == dataclasses.replace(h, hmac=mac)
    assert hash(h.with_mac(mac)) == hash(dataclasses.replace(h, mac=mac))


@pytest.mark.parametrize("bad", ["", "a b", "\n", "é", "x" * (MAX_HMAC + 1)])
def test_a_signed_copy_still_refuses_a_bad_signature(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^mac must be 1\.\.256 printable ASCII"):
        hb().with_mac(bad)
    with pytest.raises(ValueError, match=r"^hmac must be 1\.\.256 printable ASCII"):
        hb().with_hmac(bad)


def test_signing_leaves_the_heartbeat_signed_unchanged() -> None:
    h = hb(ts=5, wd=WatchdogClaim(10, 5, 1))
    key = secrets.token_bytes(32)
    assert sign_own(h, key).mac is not None and h.mac is None
    assert sign(h, key).hmac is not None and h.hmac is None


def test_the_watchdog_claim_still_refuses_what_it_refused() -> None:
    for args, message in [
        ((True, 1, 1), "wd.timeout must be a number"),
        ((1, "2", 1), "wd.cut_off must be a number"),
        ((1, 2, 0), r"wd.feed_interval must be in \(0, 3600\]"),
        ((1, float("nan"), 1), "wd.cut_off must be in"),
        ((10**400, 1, 1), "wd.timeout must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            WatchdogClaim(*args)  # type: ignore[arg-type]
    claim = WatchdogClaim(10, 5, 1)
    assert all(type(x) is float for x in claim.to_json())


# -- MACs ---------------------------------------------------------------------------------------


@given(st.binary(max_size=100), st.binary(max_size=300))
def test_mac_of_is_hmac_sha256_under_any_key(key: bytes, data: bytes) -> None:
    expected = hmac.new(key, data, hashlib.sha256).hexdigest()
    assert mac_of(key, data) == expected
    assert mac_of(key, data) == expected  # from the kept state too
    assert mac_of(bytearray(key), data) == expected


def test_the_keyed_states_kept_stay_bounded() -> None:
    for i in range(node_keys.MAX_KEYED + 10):
        mac_of(i.to_bytes(32, "big"), b"x")
        assert len(node_keys._keyed) <= node_keys.MAX_KEYED


def test_a_reload_of_unchanged_pins_keeps_their_mac_keys_and_drops_changed_ones() -> None:
    fencer = private_key(secrets.token_bytes(32))
    a, b = (NodeSigner(n, private_key(secrets.token_bytes(32)), [public_of(fencer)]) for n in "ab")
    ring = Keyring([fencer])
    ring.load({"a": a.public, "b": b.public})
    assert ring.keys("a") == a.keys and ring.keys("b") == b.keys
    other = NodeSigner("b", private_key(secrets.token_bytes(32)), [public_of(fencer)])
    assert ring.load({"a": a.public, "b": other.public}) == ["b"]
    assert ring.keys("a") == a.keys
    assert ring.keys("b") == other.keys
    assert ring.load({"a": a.public}) == ["b"]
    assert ring.keys("b") == ()


def test_the_hand_written_init_takes_every_field_in_order_with_its_default() -> None:
    params = list(inspect.signature(Heartbeat.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Heartbeat)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]


# -- parsing ------------------------------------------------------------------------------------

json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
).map(json.dumps)
spaces = st.sampled_from(["", " ", "\n", "\t "])
junk = st.sampled_from(["", "x", "}", "{}", ",", "NaN"])


@given(spaces, json_texts | st.text(max_size=20), spaces, junk)
def test_parsing_gives_what_the_json_decoder_gives_or_the_same_error(
    before: str, text: str, after: str, extra: str
) -> None:
    whole = before + text + after + extra
    try:
        expected: object = codec._DECODER.decode(whole)
    except (ValueError, RecursionError) as e:
        expected = repr(e)
    try:
        got: object = codec._parse(whole)
    except (ValueError, RecursionError) as e:
        got = repr(e)
    assert got == expected
