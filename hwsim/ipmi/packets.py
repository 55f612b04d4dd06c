"""Wire formats of IPMI over LAN: RMCP, ASF presence ping, IPMI 1.5 and RMCP+ headers, messages.

Pure encode/decode: no sockets and no keys. RMCP+ integrity codes and AES are computed by
`nodefence.hwsim.ipmi.crypto` over the bytes framed here. Every decoder raises `MalformedPacket` on
truncated or inconsistent input, so the server drops and counts the datagram instead of failing.
Section and table numbers refer to the IPMI v2.0 rev 1.1 specification.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

RMCP_VERSION = 0x06
RMCP_NO_ACK = 0xFF  # RMCP sequence number meaning "do not acknowledge" (13.1.3)
ASF_IANA = 4542  # the ASF enterprise number carried by presence ping and pong
ASF_PING = 0x80
ASF_PONG = 0x40
NEXT_HEADER = 0x07  # the only value defined for the RMCP+ integrity trailer (table 13-8)
_V20_HEADER = struct.Struct("<BBIIH")  # auth type, payload type, session id, sequence, length


class MalformedPacket(ValueError):
    """A datagram that is not a well-formed RMCP / IPMI packet; it is dropped, never answered."""


class RmcpClass(IntEnum):
    """RMCP message classes (13.1.3); bit 7 of the class byte marks an RMCP ACK."""

    ASF = 0x06
    IPMI = 0x07


class AuthType(IntEnum):
    """The session header's auth type / format byte; we speak session-less 1.5 and RMCP+."""

    NONE = 0x00
    MD2 = 0x01
    MD5 = 0x02
    PASSWORD = 0x04
    OEM = 0x05
    RMCP_PLUS = 0x06


class PayloadType(IntEnum):
    """RMCP+ payload types (table 13-16)."""

    IPMI = 0x00
    SOL = 0x01
    OEM_EXPLICIT = 0x02
    OPEN_SESSION_REQUEST = 0x10
    OPEN_SESSION_RESPONSE = 0x11
    RAKP1 = 0x12
    RAKP2 = 0x13
    RAKP3 = 0x14
    RAKP4 = 0x15


def checksum(data: bytes) -> int:
    """The IPMI 8-bit two's complement checksum: `sum(data) + checksum(data)` is 0 mod 256."""
    return -sum(data) & 0xFF


def split_rmcp(datagram: bytes) -> tuple[int, int, bytes]:
    """Split an RMCP datagram into (class, RMCP sequence number, body after the 4-byte header).

    Raises `MalformedPacket` for a short datagram or an RMCP version other than 1.0 (06h).
    """
    if len(datagram) < 5:
        raise MalformedPacket(f"{len(datagram)}-byte datagram is shorter than an RMCP header")
    if datagram[0] != RMCP_VERSION:
        raise MalformedPacket(f"RMCP version {datagram[0]:#04x} is not 1.0")
    return datagram[3], datagram[2], datagram[4:]


def parse_asf_ping(body: bytes) -> int:
    """The message tag of an ASF presence ping; raises `MalformedPacket` for anything else."""
    if len(body) < 8:
        raise MalformedPacket("truncated ASF message")
    iana, msg_type, tag = struct.unpack_from(">IBB", body)
    if iana != ASF_IANA or msg_type != ASF_PING:
        raise MalformedPacket(f"ASF message type {msg_type:#04x} is not a presence ping")
    return int(tag)


def asf_pong(tag: int) -> bytes:
    """A presence pong datagram announcing IPMI support and RMCP+ security extensions."""
    data = struct.pack(">II", ASF_IANA, 0) + bytes([0x81, 0x80]) + bytes(6)
    asf = struct.pack(">IBBBB", ASF_IANA, ASF_PONG, tag, 0, len(data)) + data
    return bytes([RMCP_VERSION, 0, RMCP_NO_ACK, RmcpClass.ASF]) + asf


@dataclass(frozen=True)
class V15Frame:
    """An IPMI 1.5 session header and the message it carries (table 13-4)."""

    auth_type: int
    sequence: int
    session_id: int
    message: bytes


def decode_v15(body: bytes) -> V15Frame:
    """Decode the IPMI 1.5 session wrapper of an RMCP body; trailing legacy pad is ignored."""
    if len(body) < 10:
        raise MalformedPacket("truncated IPMI 1.5 session header")
    auth_type, sequence, session_id = struct.unpack_from("<BII", body)
    offset = 9 if auth_type == AuthType.NONE else 25  # 16-byte auth code unless auth type none
    if len(body) <= offset:
        raise MalformedPacket("truncated IPMI 1.5 session header")
    length = body[offset]
    message = body[offset + 1 : offset + 1 + length]
    if len(message) != length:
        raise MalformedPacket(f"IPMI 1.5 message shorter than its length {length}")
    return V15Frame(auth_type, sequence, session_id, message)


def encode_v15_sessionless(message: bytes) -> bytes:
    """An RMCP datagram carrying `message` outside any session (auth type none, ids 0)."""
    header = bytes([RMCP_VERSION, 0, RMCP_NO_ACK, RmcpClass.IPMI])
    return header + struct.pack("<BIIB", AuthType.NONE, 0, 0, len(message)) + message


@dataclass(frozen=True)
class V20Frame:
    """An RMCP+ session header, its payload as sent (maybe encrypted) and what follows it."""

    payload_type: int
    encrypted: bool
    authenticated: bool
    session_id: int
    sequence: int
    payload: bytes
    trailer: bytes  # integrity pad, pad length, next header and auth code, when authenticated


def decode_v20(body: bytes) -> V20Frame:
    """Decode the RMCP+ session wrapper of an RMCP body (table 13-8).

    OEM explicit payloads (type 02h) carry six more header bytes; they are decoded so that the
    caller can refuse them, not interpreted.
    """
    if len(body) < 2:
        raise MalformedPacket("truncated RMCP+ session header")
    type_byte = body[1]
    extra = 6 if type_byte & 0x3F == PayloadType.OEM_EXPLICIT else 0
    if len(body) < _V20_HEADER.size + extra:
        raise MalformedPacket("truncated RMCP+ session header")
    session_id, sequence = struct.unpack_from("<II", body, 2 + extra)
    (length,) = struct.unpack_from("<H", body, 10 + extra)
    start = _V20_HEADER.size + extra
    payload = body[start : start + length]
    if len(payload) != length:
        raise MalformedPacket(f"RMCP+ payload shorter than its length {length}")
    return V20Frame(
        payload_type=type_byte & 0x3F,
        encrypted=bool(type_byte & 0x80),
        authenticated=bool(type_byte & 0x40),
        session_id=session_id,
        sequence=sequence,
        payload=payload,
        trailer=body[start + length :],
    )


def split_integrity_trailer(body: bytes, frame: V20Frame, code_length: int) -> tuple[bytes, bytes]:
    """Split an authenticated RMCP+ body into (bytes the auth code covers, auth code).

    The covered bytes run from the auth type byte through the next header byte. Raises
    `MalformedPacket` when the trailer does not have the pad / pad length / 07h layout.
    """
    trailer = frame.trailer
    if len(trailer) < code_length + 2:
        raise MalformedPacket("RMCP+ integrity trailer too short")
    pad_length = trailer[-code_length - 2]
    if trailer[-code_length - 1] != NEXT_HEADER or len(trailer) != pad_length + 2 + code_length:
        raise MalformedPacket("RMCP+ integrity trailer inconsistent")
    return body[:-code_length], body[-code_length:]


def encode_v20(
    payload_type: int,
    session_id: int,
    sequence: int,
    payload: bytes,
    *,
    encrypted: bool = False,
    sign: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """An RMCP datagram with an RMCP+ header; `payload` is already encrypted if `encrypted`.

    With `sign`, the integrity pad and next header are appended and then `sign(covered bytes)`,
    the auth code. Pre-session messages (open session, RAKP) use session id 0 and sequence 0.
    """
    type_byte = payload_type | (0x80 if encrypted else 0) | (0x40 if sign else 0)
    body = _V20_HEADER.pack(AuthType.RMCP_PLUS, type_byte, session_id, sequence, len(payload))
    body += payload
    if sign is not None:
        pad_length = -(len(body) + 2) % 4  # covered bytes end on a 4-byte boundary
        body += b"\xff" * pad_length + bytes([pad_length, NEXT_HEADER])
        body += sign(body)
    return bytes([RMCP_VERSION, 0, RMCP_NO_ACK, RmcpClass.IPMI]) + body


@dataclass(frozen=True)
class IpmiRequest:
    """An IPMI LAN request message (figure 13-4), checksums verified."""

    rs_addr: int
    netfn: int
    rs_lun: int
    rq_addr: int
    rq_seq: int
    rq_lun: int
    command: int
    data: bytes


def decode_request(message: bytes) -> IpmiRequest:
    """Decode an IPMI request message; raises `MalformedPacket` on short input or bad checksum."""
    if len(message) < 7:
        raise MalformedPacket(f"{len(message)}-byte IPMI message is too short")
    if checksum(message[:2]) != message[2] or checksum(message[3:-1]) != message[-1]:
        raise MalformedPacket("IPMI message checksum mismatch")
    if message[1] >> 2 & 1:
        raise MalformedPacket("IPMI message is a response (odd netfn), not a request")
    return IpmiRequest(
        rs_addr=message[0],
        netfn=message[1] >> 2,
        rs_lun=message[1] & 0x03,
        rq_addr=message[3],
        rq_seq=message[4] >> 2,
        rq_lun=message[4] & 0x03,
        command=message[5],
        data=message[6:-1],
    )


def encode_response(request: IpmiRequest, completion: int, data: bytes = b"") -> bytes:
    """The IPMI response message to `request`: netfn + 1, same sequence, LUNs and command."""
    head = bytes([request.rq_addr, (request.netfn | 1) << 2 | request.rq_lun])
    body = bytes(
        [request.rs_addr, request.rq_seq << 2 | request.rs_lun, request.command, completion]
    )
    body += data
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])
