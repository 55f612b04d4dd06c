"""The load generator, in its own process(es): every simulated node's heartbeat once per
interval as MQTT PUBLISH frames written straight to a socket (payloads byte-for-byte
`encode_heartbeat`'s, or signed as node agents sign them); and the run's node names and keys."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from detection_latency_leader import CLUSTER, emit

from nodefence.agent import __version__
from nodefence.agent.heartbeat.codec import Heartbeat, encode_heartbeat, heartbeat_topic


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect(port: int, client_id: str) -> socket.socket:
    """An MQTT 3.1.1 session, clean, keepalive 10 min (longer than any run)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 600) + struct.pack("!H", len(ident)) + ident
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise RuntimeError("mosquitto refused the load generator's CONNECT")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _publish(spec: dict[str, Any], count: int, message: Callable[[int], bytes]) -> int:
    """Publish `message(k)` (topic with its length, then payload) for k = 0, 1, ... once per
    interval per node, nodes in turn, until `seconds`; print what was sent."""
    interval, seconds = spec["interval"], spec["seconds"]
    # One connection per broker: every heartbeat goes to each, as agents send it.
    socks = [_connect(port, f"bench-load-{spec['first']}") for port in spec["ports"]]
    total = count * round(seconds / interval)
    step = interval / count  # one message every `step` seconds, nodes in turn
    start = spec["start_at"]
    sent, behind = 0, 0.0
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = time.process_time()
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - start) / step) + 1)
        if due > sent:
            behind = max(behind, now - (start + sent * step))
            batch = []
            for k in range(sent, due):
                rest = message(k)
                batch.append(b"\x30" + _remaining_length(len(rest)) + rest)
            data = b"".join(batch)
            for sock in socks:
                sock.sendall(data)
            sent = due
        time.sleep(0.002)
    last = time.monotonic()
    for sock in socks:
        sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean end, no will
        sock.close()
    emit(
        {
            "published": sent,
            "start": start,
            "end": last,
            "cpu": time.process_time() - cpu0,
            "behind": behind,
        }
    )
    return 0


def node_names(first: int, count: int) -> list[str]:
    """The simulated nodes [first, first+count)."""
    return [f"sim-{i:05d}" for i in range(first, first + count)]


def node_private(seed: str, name: str) -> Any:
    """The run's private key of node `name` (from the seed: see `--signed`)."""
    from nodefence.agent.heartbeat.node_keys import private_key

    return private_key(hashlib.sha256(f"{seed}/{name}".encode()).digest())


def pinned_keyring(spec: dict[str, Any]) -> Any:
    """The fencers' keyring with every node of the run pinned and its MAC key derived."""
    from nodefence.agent.heartbeat.node_keys import Keyring, decode_key, private_key, public_of

    keyring = Keyring([private_key(decode_key(spec["key"]))])
    keyring.load({n: public_of(node_private(spec["key"], n)) for n in node_names(0, spec["nodes"])})
    for name in keyring.pins:
        keyring.keys(name)
    return keyring


def _signed_generator(spec: dict[str, Any], names: list[str]) -> int:
    """As `generator_process`, every payload signed like a node agent's, under its own key (no
    byte templates: the signature covers the sequence number and the timestamp)."""
    from nodefence.agent.heartbeat.node_keys import NodeSigner, decode_key, private_key, public_of
    from nodefence.agent.heartbeat.signing import sign_own

    interval, count = spec["interval"], len(names)
    fencer_public = public_of(private_key(decode_key(spec["key"])))
    nodes = []
    for name in names:
        topic = heartbeat_topic(CLUSTER, name).encode()
        signer = NodeSigner(name, node_private(spec["key"], name), [fencer_public])
        nodes.append((name, uuid.uuid4().hex, signer.key, _length(topic) + topic))

    def message(k: int) -> bytes:
        name, boot, nkey, topic = nodes[k % count]
        hb = Heartbeat(name, k // count, boot, interval, __version__, ts=int(time.time() * 1000))
        return topic + encode_heartbeat(sign_own(hb, nkey))

    return _publish(spec, count, message)


def _length(data: bytes) -> bytes:
    return struct.pack("!H", len(data))


def generator_process(spec: dict[str, Any]) -> int:
    """Publish heartbeats of nodes [first, first+count) once per interval until `seconds`."""
    interval, count = spec["interval"], spec["count"]
    names = node_names(spec["first"], count)
    if spec.get("key"):
        return _signed_generator(spec, names)
    frames: list[tuple[bytes, bytes, bytes]] = []  # (topic with its length, payload head, tail)
    for name in names:
        hb = Heartbeat(name, 0, uuid.uuid4().hex, interval, __version__)
        head, tail = encode_heartbeat(hb).split(b'"seq":0', 1)
        topic = heartbeat_topic(CLUSTER, name).encode()
        frames.append((_length(topic) + topic, head + b'"seq":', tail))
    # The payloads must be the agent's, byte for byte.
    sample = frames[0][1] + b"12345" + frames[0][2]
    expected = encode_heartbeat(
        Heartbeat(names[0], 12345, json.loads(sample)["boot"], interval, __version__)
    )
    if sample != expected:
        raise RuntimeError(f"payload template drifted from encode_heartbeat: {sample!r}")

    def message(k: int) -> bytes:
        topic, head, tail = frames[k % count]
        return topic + head + str(k // count).encode() + tail

    return _publish(spec, count, message)
