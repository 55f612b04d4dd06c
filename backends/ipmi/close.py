"""Close a BMC session whose worker was killed: one signed, encrypted Close Session datagram.

A killed worker cannot log out, and a BMC keeps a session it was not told to close until
its idle timeout, with only a few slots per user: a BMC slow enough to make us give up would
soon refuse every login. The worker reported the session's id, keys and sequence numbers as
it went (`nodefence.backends.ipmi.wire`), so the backend sends the Close Session (IPMI 2.0 22.19) in
the session itself, signed and encrypted like any packet of it (13.28-13.29: HMAC-SHA1-96 or
HMAC-SHA256-128, AES-CBC-128), numbered after the last packet the worker sent. Sent once,
like pyghmi's and ipmitool's own logout; if it is lost the BMC's idle timeout remains.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import struct

from nodefence.backends.ipmi.wire import SessionKeys

log = logging.getLogger("nodefence.backends.ipmi")

_RMCP_HEADER = b"\x06\x00\xff\x07"  # RMCP 1.0, no RMCP ACK, class IPMI
_AUTH_RMCP_PLUS = 0x06
_PAYLOAD_IPMI_SIGNED_ENCRYPTED = 0xC0
_BMC_ADDRESS, _CONSOLE_SWID = 0x20, 0x81
_NETFN_APP, _CMD_CLOSE_SESSION = 0x06, 0x3C
_CODE_LENGTH = {"sha1": 12, "sha256": 16}


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def close_session_message(session_id: int, rq_seq: int = 1) -> bytes:
    """The IPMI request message 'Close Session' (netFn App, cmd 3Ch) for `session_id`."""
    head = bytes([_BMC_ADDRESS, _NETFN_APP << 2])
    body = bytes([_CONSOLE_SWID, (rq_seq & 0x3F) << 2, _CMD_CLOSE_SESSION])
    body += struct.pack("<I", session_id)
    return head + bytes([_checksum(head)]) + body + bytes([_checksum(body)])


def close_session_datagram(keys: SessionKeys, sequence: int, iv: bytes | None = None) -> bytes:
    """The whole RMCP+ datagram closing `keys.session_id`, as packet number `sequence`."""
    # Imported here: rarely needed, and 25 ms a command like `nodefence fence` need not pay.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    message = close_session_message(keys.session_id)
    pad_length = -(len(message) + 1) % 16  # confidentiality pad: 1, 2, ..., n, then n
    plain = message + bytes(range(1, pad_length + 1)) + bytes([pad_length])
    iv = iv if iv is not None else os.urandom(16)
    encryptor = Cipher(algorithms.AES(keys.aes_key), modes.CBC(iv)).encryptor()
    payload = iv + encryptor.update(plain) + encryptor.finalize()
    body = struct.pack(
        "<BBIIH",
        _AUTH_RMCP_PLUS,
        _PAYLOAD_IPMI_SIGNED_ENCRYPTED,
        keys.session_id,
        sequence,
        len(payload),
    )
    body += payload
    integrity_pad = -(len(body) + 2) % 4  # the signed bytes end on a 4-byte boundary
    body += b"\xff" * integrity_pad + bytes([integrity_pad, 0x07])
    code = hmac.new(keys.k1, body, keys.integrity).digest()[: _CODE_LENGTH[keys.integrity]]
    return _RMCP_HEADER + body + code


async def send_close_session(
    address: str, port: int, keys: SessionKeys, last_sequence: int, *, timeout: float
) -> bool:
    """Send the Close Session for a session left open; True if the datagram went out.

    Never raises: a session that cannot be closed now is closed by the BMC's idle timeout.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(address, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        datagram = close_session_datagram(keys, last_sequence + 1)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(datagram, sockaddr)
    except (OSError, TimeoutError, IndexError) as err:
        log.info("ipmi: could not close an abandoned BMC session: %s", err)
        return False
    log.debug("ipmi: sent Close Session for abandoned BMC session %08x", keys.session_id)
    return True
