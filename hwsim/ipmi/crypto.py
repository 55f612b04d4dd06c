"""RMCP+ cryptography: cipher suites, RAKP auth codes, session keys, integrity and AES-CBC-128.

Only what the two suites we emulate need (13.28-13.29 of the IPMI v2.0 spec):

- suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128;
- suite 17: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.

Kuid is the user's password, zero-padded to 20 bytes; no BMC key is configured, so Kg = Kuid.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nodefence.hwsim.ipmi.packets import MalformedPacket

AES_BLOCK = 16
MAX_PASSWORD = 20
_CONST_1 = b"\x01" * 20  # K1 = HMAC_SIK(const 1), K2 = HMAC_SIK(const 2), 20 bytes for SHA-256 too
_CONST_2 = b"\x02" * 20


class AuthAlgorithm(IntEnum):
    """RMCP+ authentication (key exchange) algorithms (table 13-17)."""

    RAKP_NONE = 0x00
    RAKP_HMAC_SHA1 = 0x01
    RAKP_HMAC_MD5 = 0x02
    RAKP_HMAC_SHA256 = 0x03


class IntegrityAlgorithm(IntEnum):
    """RMCP+ integrity algorithms (table 13-18)."""

    NONE = 0x00
    HMAC_SHA1_96 = 0x01
    HMAC_MD5_128 = 0x02
    MD5_128 = 0x03
    HMAC_SHA256_128 = 0x04


class ConfidentialityAlgorithm(IntEnum):
    """RMCP+ confidentiality algorithms (table 13-19)."""

    NONE = 0x00
    AES_CBC_128 = 0x01
    XRC4_128 = 0x02
    XRC4_40 = 0x03


@dataclass(frozen=True)
class CipherSuite:
    """One cipher suite: its three algorithms and the hash and code lengths they imply."""

    id: int
    auth: AuthAlgorithm
    integrity: IntegrityAlgorithm
    confidentiality: ConfidentialityAlgorithm
    hash_name: str  # hashlib name used by RAKP, key derivation and integrity
    code_length: int  # bytes of the RAKP 4 ICV and of every session packet's auth code

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """The full-length HMAC of `data` under `key` with this suite's hash."""
        return hmac.new(key, data, self.hash_name).digest()

    def record(self) -> bytes:
        """This suite's Get Channel Cipher Suites record (table 22-19): C0h, id, tagged algs."""
        return bytes([0xC0, self.id, self.auth, 0x40 | self.integrity, 0x80 | self.confidentiality])


SUITES: dict[int, CipherSuite] = {
    3: CipherSuite(
        3,
        AuthAlgorithm.RAKP_HMAC_SHA1,
        IntegrityAlgorithm.HMAC_SHA1_96,
        ConfidentialityAlgorithm.AES_CBC_128,
        "sha1",
        12,
    ),
    17: CipherSuite(
        17,
        AuthAlgorithm.RAKP_HMAC_SHA256,
        IntegrityAlgorithm.HMAC_SHA256_128,
        ConfidentialityAlgorithm.AES_CBC_128,
        "sha256",
        16,
    ),
}


def user_key(password: str) -> bytes:
    """Kuid: the password as bytes, zero-padded to 20; raises ValueError when it is too long."""
    raw = password.encode()
    if len(raw) > MAX_PASSWORD:
        raise ValueError(f"IPMI 2.0 passwords are at most {MAX_PASSWORD} bytes, got {len(raw)}")
    return raw.ljust(MAX_PASSWORD, b"\x00")


def rakp2_auth_code(
    suite: CipherSuite,
    kuid: bytes,
    console_sid: int,
    bmc_sid: int,
    console_random: bytes,
    bmc_random: bytes,
    guid: bytes,
    role: int,
    username: bytes,
) -> bytes:
    """RAKP 2 key exchange auth code: HMAC_Kuid(SIDm, SIDc, Rm, Rc, GUIDc, ROLEm, ULEN, UNAME)."""
    data = struct.pack("<II", console_sid, bmc_sid) + console_random + bmc_random + guid
    return suite.hmac(kuid, data + bytes([role, len(username)]) + username)


def rakp3_auth_code(
    suite: CipherSuite, kuid: bytes, bmc_random: bytes, console_sid: int, role: int, username: bytes
) -> bytes:
    """RAKP 3 key exchange auth code: HMAC_Kuid(Rc, SIDm, ROLEm, ULEN, UNAME)."""
    data = bmc_random + struct.pack("<I", console_sid) + bytes([role, len(username)]) + username
    return suite.hmac(kuid, data)


@dataclass(frozen=True)
class SessionKeys:
    """SIK and the two keys derived from it; K1 signs packets, K2's first 16 bytes are AES's."""

    sik: bytes
    k1: bytes
    k2: bytes

    @property
    def aes_key(self) -> bytes:
        """The AES-CBC-128 key: the first 16 bytes of K2."""
        return self.k2[:AES_BLOCK]


def derive_keys(
    suite: CipherSuite,
    kg: bytes,
    console_random: bytes,
    bmc_random: bytes,
    role: int,
    username: bytes,
) -> SessionKeys:
    """SIK = HMAC_Kg(Rm, Rc, ROLEm, ULEN, UNAME); K1, K2 = HMAC_SIK(20 x 01h / 02h)."""
    sik = suite.hmac(kg, console_random + bmc_random + bytes([role, len(username)]) + username)
    return SessionKeys(sik, suite.hmac(sik, _CONST_1), suite.hmac(sik, _CONST_2))


def rakp4_icv(
    suite: CipherSuite, sik: bytes, console_random: bytes, bmc_sid: int, guid: bytes
) -> bytes:
    """RAKP 4 integrity check value: HMAC_SIK(Rm, SIDc, GUIDc), truncated to the code length."""
    data = console_random + struct.pack("<I", bmc_sid) + guid
    return suite.hmac(sik, data)[: suite.code_length]


def auth_code(suite: CipherSuite, k1: bytes, covered: bytes) -> bytes:
    """A session packet's auth code: HMAC_K1 of the covered bytes, truncated (RFC 2404 style)."""
    return suite.hmac(k1, covered)[: suite.code_length]


def encrypt_payload(aes_key: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
    """IV + AES-CBC-128 ciphertext of `plaintext` with the IPMI pad 01h, 02h, ..., pad length."""
    iv = os.urandom(AES_BLOCK) if iv is None else iv
    pad_length = -(len(plaintext) + 1) % AES_BLOCK
    padded = plaintext + bytes(range(1, pad_length + 1)) + bytes([pad_length])
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def decrypt_payload(aes_key: bytes, payload: bytes) -> bytes:
    """The plaintext of an IV + AES-CBC-128 payload; raises `MalformedPacket` on a bad pad."""
    if len(payload) < 2 * AES_BLOCK or len(payload) % AES_BLOCK:
        raise MalformedPacket(f"{len(payload)}-byte encrypted payload is not IV + whole blocks")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(payload[:AES_BLOCK])).decryptor()
    padded = decryptor.update(payload[AES_BLOCK:]) + decryptor.finalize()
    pad_length = padded[-1]
    end = len(padded) - 1 - pad_length
    if pad_length >= AES_BLOCK or padded[end:-1] != bytes(range(1, pad_length + 1)):
        raise MalformedPacket("confidentiality pad is not 01h, 02h, ...")
    return padded[:end]
