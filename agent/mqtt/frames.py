"""Minimal MQTT 3.1.1 framing for the leader's subscribe-only ingest connection (pure).

Only what a QoS-0 subscriber needs: CONNECT, SUBSCRIBE, PINGREQ and DISCONNECT out; CONNACK,
SUBACK, PUBLISH and PINGRESP in. `FrameReader` parses every complete frame in whatever bytes
arrive, so one socket read can hand over hundreds of heartbeats at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    1,
    2,
    3,
    8,
    9,
    12,
    13,
    14,
)
MAX_FRAME = 1 << 20  # nothing we subscribe to is this big; larger frames end the connection

CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "broker unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class ProtocolError(Exception):
    """The broker sent something a 3.1.1 subscriber cannot accept."""


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _remaining(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_frame(
    client_id: str, keepalive: int, username: str | None, password: str | None
) -> bytes:
    """CONNECT with a clean session."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return bytes([CONNECT << 4]) + _remaining(len(body)) + body


def subscribe_frame(packet_id: int, filters: list[str]) -> bytes:
    """SUBSCRIBE to `filters` at QoS 0."""
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + b"\x00" for f in filters)
    return bytes([(SUBSCRIBE << 4) | 0x02]) + _remaining(len(body)) + body


PINGREQ_FRAME = bytes([PINGREQ << 4, 0])
DISCONNECT_FRAME = bytes([DISCONNECT << 4, 0])


@dataclass(frozen=True)
class Frame:
    """One control packet: its type, flags and body."""

    kind: int
    flags: int
    body: bytes


class FrameReader:
    """Accumulates bytes and yields complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add `data`; return every frame now complete (raises `ProtocolError`)."""
        self._buf += data
        frames: list[Frame] = []
        buf, pos = self._buf, 0
        while True:
            if len(buf) - pos < 2:
                break
            length, multiplier, i = 0, 1, pos + 1
            while True:
                if i >= len(buf):
                    length = -1
                    break
                byte = buf[i]
                length += (byte & 0x7F) * multiplier
                i += 1
                if not byte & 0x80:
                    break
                multiplier *= 128
                if multiplier > 128**3:
                    raise ProtocolError("malformed remaining length")
            if length > MAX_FRAME:  # refuse before buffering it
                raise ProtocolError(f"frame of {length} bytes is too large")
            if length < 0 or len(buf) - i < length:
                break
            first = buf[pos]
            frames.append(Frame(first >> 4, first & 0x0F, bytes(buf[i : i + length])))
            pos = i + length
        del buf[:pos]
        return frames


def parse_publish(frame: Frame) -> tuple[str, bytes]:
    """Topic and payload of a PUBLISH frame (QoS 0 or, tolerated, higher)."""
    body = frame.body
    if len(body) < 2:
        raise ProtocolError("PUBLISH without a topic")
    (tlen,) = struct.unpack_from("!H", body)
    start = 2 + tlen
    if len(body) < start:
        raise ProtocolError("PUBLISH topic truncated")
    topic = body[2:start].decode("utf-8", errors="replace")
    if (frame.flags >> 1) & 0x03:
        start += 2  # packet identifier of QoS 1/2
    return topic, body[start:]
