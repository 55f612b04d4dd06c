"""RMCP+ session establishment: Open Session Request / Response and RAKP 1-4 (13.17-13.23).

Each handler takes a request payload and returns the answer payload with its RMCP+ status.
A refusal is always answered with the status that says why (never with silence, never with a
suite other than the one asked): an unknown user or refused login gets RAKP 2 "unauthorized
name" (0Dh) at once; a RAKP 3 whose auth code does not prove the password gets RAKP 4
"invalid integrity check value" (0Fh). A refused session is forgotten. Retransmitted requests
get the answer already sent, so a lost answer does not break the exchange.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from nodefence.hwsim.ipmi import crypto
from nodefence.hwsim.ipmi.crypto import CipherSuite
from nodefence.hwsim.ipmi.packets import MalformedPacket
from nodefence.hwsim.ipmi.session import Peer, Privilege, Session, SessionState, SessionTable

MAX_USERNAME = 16


class RmcpStatus(IntEnum):
    """RMCP+ and RAKP message status codes (table 13-15)."""

    OK = 0x00
    INSUFFICIENT_RESOURCES = 0x01
    INVALID_SESSION_ID = 0x02
    INVALID_PAYLOAD_TYPE = 0x03
    INVALID_AUTH_ALGORITHM = 0x04
    INVALID_INTEGRITY_ALGORITHM = 0x05
    NO_MATCHING_AUTH_PAYLOAD = 0x06
    NO_MATCHING_INTEGRITY_PAYLOAD = 0x07
    INACTIVE_SESSION_ID = 0x08
    INVALID_ROLE = 0x09
    UNAUTHORIZED_ROLE = 0x0A
    INSUFFICIENT_RESOURCES_FOR_ROLE = 0x0B
    INVALID_NAME_LENGTH = 0x0C
    UNAUTHORIZED_NAME = 0x0D
    UNAUTHORIZED_GUID = 0x0E
    INVALID_INTEGRITY_CHECK_VALUE = 0x0F
    INVALID_CONFIDENTIALITY_ALGORITHM = 0x10
    NO_CIPHER_SUITE_MATCH = 0x11
    ILLEGAL_PARAMETER = 0x12


@dataclass(frozen=True)
class Answer:
    """A handshake answer: its status (for counting) and the payload to send."""

    status: RmcpStatus
    payload: bytes


@dataclass(frozen=True)
class Account:
    """The one user this BMC knows: name, Kuid (padded password) and privilege limit."""

    username: bytes
    kuid: bytes
    privilege: Privilege = Privilege.ADMINISTRATOR


class Handshake:
    """The RMCP+ login exchange of one BMC, creating sessions in its `SessionTable`."""

    def __init__(
        self,
        sessions: SessionTable,
        suites: Sequence[CipherSuite],
        account: Account,
        guid: bytes,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._sessions = sessions
        self._suites = tuple(suites)
        self._account = account
        self._guid = guid
        self._random = random_bytes

    def open_session(self, payload: bytes, peer: Peer) -> Answer:
        """Answer an Open Session Request with the suite asked for, or with why not.

        The requested maximum privilege 0 means "the highest the user may have". An algorithm
        no offered suite uses gets 04h / 05h / 10h; known algorithms that form no offered suite
        get 11h.
        """
        if len(payload) < 32:
            raise MalformedPacket("truncated Open Session Request")
        tag, requested = payload[0], payload[1] & 0x0F
        (console_id,) = struct.unpack_from("<I", payload, 4)
        again = self._sessions.find_opened(peer, payload)
        if again is not None:
            return Answer(RmcpStatus.OK, again.open_response)

        def refuse(status: RmcpStatus) -> Answer:
            return Answer(status, bytes([tag, status, 0, 0]) + payload[4:8])

        algorithms = []
        for offset, payload_type in ((8, 0x00), (16, 0x01), (24, 0x02)):
            if payload[offset] != payload_type or payload[offset + 3] != 8:
                return refuse(RmcpStatus.ILLEGAL_PARAMETER)
            algorithms.append(payload[offset + 4] & 0x3F)
        if console_id == 0:
            return refuse(RmcpStatus.ILLEGAL_PARAMETER)
        if requested > Privilege.OEM:
            return refuse(RmcpStatus.INVALID_ROLE)
        if requested > self._account.privilege:
            return refuse(RmcpStatus.UNAUTHORIZED_ROLE)
        suite, status = self._match_suite(*algorithms)
        if suite is None:
            return refuse(status)
        max_privilege = Privilege(requested or self._account.privilege)
        session = self._sessions.open(console_id, suite, max_privilege, peer)
        if session is None:
            return refuse(RmcpStatus.INSUFFICIENT_RESOURCES)
        response = bytes([tag, RmcpStatus.OK, max_privilege, 0])
        response += struct.pack("<II", console_id, session.bmc_id) + payload[8:32]
        session.open_request, session.open_response = payload, response
        return Answer(RmcpStatus.OK, response)

    def rakp1(self, payload: bytes, refuse_login: bool = False) -> Answer:
        """Answer RAKP 1 with RAKP 2: the BMC's random, GUID and auth code, or a refusal.

        `refuse_login` refuses every user (the `wrong_credentials` fault) with 0Dh. The auth
        code is computed with the real password, so a console with a wrong one sees at once
        that it cannot verify it.
        """
        if len(payload) < 28:
            raise MalformedPacket("truncated RAKP 1")
        name_length = payload[27]
        if name_length <= MAX_USERNAME and len(payload) < 28 + name_length:
            raise MalformedPacket("RAKP 1 shorter than its user name")
        tag, role = payload[0], payload[24]
        (bmc_id,) = struct.unpack_from("<I", payload, 4)
        session = self._sessions.get(bmc_id)
        if session is None:
            return self._rakp_refusal(tag, RmcpStatus.INVALID_SESSION_ID, 0)
        if session.state is SessionState.CHALLENGED and session.rakp1_request == payload:
            return Answer(RmcpStatus.OK, session.rakp2_response)
        if session.state is SessionState.ACTIVE:
            return self._rakp_refusal(tag, RmcpStatus.INVALID_SESSION_ID, session.console_id)
        username = payload[28 : 28 + name_length]
        status = self._check_login(session, role & 0x0F, name_length, username, refuse_login)
        if status is not RmcpStatus.OK:
            self._sessions.close(bmc_id)
            return self._rakp_refusal(tag, status, session.console_id)
        session.console_random, session.bmc_random = payload[8:24], self._random(16)
        session.role, session.username = role, username
        session.max_privilege = Privilege(role & 0x0F)
        code = crypto.rakp2_auth_code(
            session.suite,
            self._account.kuid,
            session.console_id,
            session.bmc_id,
            session.console_random,
            session.bmc_random,
            self._guid,
            role,
            username,
        )
        response = bytes([tag, RmcpStatus.OK, 0, 0]) + struct.pack("<I", session.console_id)
        response += session.bmc_random + self._guid + code
        session.state = SessionState.CHALLENGED
        session.rakp1_request, session.rakp2_response = payload, response
        return Answer(RmcpStatus.OK, response)

    def rakp3(self, payload: bytes) -> Answer | None:
        """Answer RAKP 3 with RAKP 4 and activate the session, or refuse with 0Fh.

        A RAKP 3 carrying an error status is the console giving up: the session is forgotten
        and nothing is answered (None).
        """
        if len(payload) < 8:
            raise MalformedPacket("truncated RAKP 3")
        tag, client_status = payload[0], payload[1]
        (bmc_id,) = struct.unpack_from("<I", payload, 4)
        session = self._sessions.get(bmc_id)
        if session is None:
            return self._rakp_refusal(tag, RmcpStatus.INVALID_SESSION_ID, 0)
        if session.state is SessionState.ACTIVE and session.rakp3_request == payload:
            return Answer(RmcpStatus.OK, session.rakp4_response)
        if session.state is not SessionState.CHALLENGED:
            return self._rakp_refusal(tag, RmcpStatus.INVALID_SESSION_ID, session.console_id)
        if client_status != RmcpStatus.OK:
            self._sessions.close(bmc_id)
            return None
        suite, kuid = session.suite, self._account.kuid
        expected = crypto.rakp3_auth_code(
            suite, kuid, session.bmc_random, session.console_id, session.role, session.username
        )
        if not hmac.compare_digest(payload[8:], expected):
            self._sessions.close(bmc_id)
            return self._rakp_refusal(
                tag, RmcpStatus.INVALID_INTEGRITY_CHECK_VALUE, session.console_id
            )
        keys = crypto.derive_keys(
            suite, kuid, session.console_random, session.bmc_random, session.role, session.username
        )
        icv = crypto.rakp4_icv(suite, keys.sik, session.console_random, bmc_id, self._guid)
        response = bytes([tag, RmcpStatus.OK, 0, 0]) + struct.pack("<I", session.console_id) + icv
        session.keys, session.state = keys, SessionState.ACTIVE
        session.privilege = min(Privilege.USER, session.max_privilege)  # raised by 3Bh later
        session.rakp3_request, session.rakp4_response = payload, response
        return Answer(RmcpStatus.OK, response)

    def _check_login(
        self, session: Session, privilege: int, name_length: int, name: bytes, refuse: bool
    ) -> RmcpStatus:
        if privilege == 0 or privilege > Privilege.OEM:
            return RmcpStatus.INVALID_ROLE
        if name_length > MAX_USERNAME:
            return RmcpStatus.INVALID_NAME_LENGTH
        if refuse or not hmac.compare_digest(name, self._account.username):
            return RmcpStatus.UNAUTHORIZED_NAME
        if privilege > session.max_privilege:
            return RmcpStatus.UNAUTHORIZED_ROLE
        return RmcpStatus.OK

    def _match_suite(
        self, auth: int, integrity: int, confidentiality: int
    ) -> tuple[CipherSuite | None, RmcpStatus]:
        for suite in self._suites:
            if (suite.auth, suite.integrity, suite.confidentiality) == (
                auth,
                integrity,
                confidentiality,
            ):
                return suite, RmcpStatus.OK
        if auth not in {s.auth for s in self._suites}:
            return None, RmcpStatus.INVALID_AUTH_ALGORITHM
        if integrity not in {s.integrity for s in self._suites}:
            return None, RmcpStatus.INVALID_INTEGRITY_ALGORITHM
        if confidentiality not in {s.confidentiality for s in self._suites}:
            return None, RmcpStatus.INVALID_CONFIDENTIALITY_ALGORITHM
        return None, RmcpStatus.NO_CIPHER_SUITE_MATCH

    @staticmethod
    def _rakp_refusal(tag: int, status: RmcpStatus, console_id: int) -> Answer:
        return Answer(status, bytes([tag, status, 0, 0]) + struct.pack("<I", console_id))
