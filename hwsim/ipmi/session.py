"""RMCP+ session state: one `Session` per login, a bounded `SessionTable` per BMC.

A session is born by an Open Session Request, challenged by RAKP 1/2 and becomes active
after RAKP 3/4. Idle sessions expire after `timeout` seconds (60 s, the spec's default
inactivity timeout). A full table first forgets its least recently used half-open session
(a console that gave up mid-RAKP never says so); full of active sessions it refuses new ones,
as a real BMC does, so a client that never closes its sessions is noticed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from nodefence.hwsim.ipmi.crypto import CipherSuite, SessionKeys

Peer = tuple[Any, ...]  # (host, port) for IPv4, 4-tuple for IPv6
SEQUENCE_WINDOW = 32  # how far behind the highest sequence number a late packet may arrive


class Privilege(IntEnum):
    """IPMI privilege levels (roles), as carried in the low nibble of role bytes."""

    CALLBACK = 1
    USER = 2
    OPERATOR = 3
    ADMINISTRATOR = 4
    OEM = 5


class SessionState(Enum):
    """Where a session is in the RAKP exchange."""

    OPENED = "opened"  # Open Session Response sent, waiting for RAKP 1
    CHALLENGED = "challenged"  # RAKP 2 sent, waiting for RAKP 3
    ACTIVE = "active"  # RAKP 4 sent: session packets are accepted


@dataclass
class SequenceWindow:
    """Inbound session sequence numbers: reject 0, replays and anything too far behind."""

    highest: int = 0
    _seen: int = 0  # bit i set: sequence number `highest - i` was accepted

    def accept(self, sequence: int) -> bool:
        """True (and remembered) for a fresh sequence number, False for a replay or stale one."""
        if sequence == 0:
            return False
        if sequence > self.highest:
            shift = min(sequence - self.highest, SEQUENCE_WINDOW)
            self._seen = (self._seen << shift | 1) & ((1 << SEQUENCE_WINDOW) - 1)
            self.highest = sequence
            return True
        behind = self.highest - sequence
        if behind >= SEQUENCE_WINDOW or self._seen >> behind & 1:
            return False
        self._seen |= 1 << behind
        return True


@dataclass
class Session:
    """One RMCP+ session: negotiated suite, RAKP material, keys, privilege and sequence state."""

    bmc_id: int
    console_id: int
    suite: CipherSuite
    max_privilege: Privilege
    peer: Peer
    last_active: float
    state: SessionState = SessionState.OPENED
    # Requests and answers kept so that a retransmitted request gets the same answer.
    open_request: bytes = b""
    open_response: bytes = b""
    rakp1_request: bytes = b""
    rakp2_response: bytes = b""
    rakp3_request: bytes = b""
    rakp4_response: bytes = b""
    console_random: bytes = b""
    bmc_random: bytes = b""
    role: int = 0  # the whole RAKP 1 role byte, name-only lookup bit included
    username: bytes = b""
    keys: SessionKeys | None = None
    privilege: Privilege = Privilege.USER
    outbound_sequence: int = 0
    inbound: SequenceWindow = field(default_factory=SequenceWindow)

    def next_sequence(self) -> int:
        """The sequence number for the next packet we send (1, 2, ...; 0 is skipped on wrap)."""
        self.outbound_sequence = self.outbound_sequence % 0xFFFFFFFF + 1
        return self.outbound_sequence


class SessionTable:
    """The sessions of one BMC by BMC session id, with idle expiry and a capacity."""

    def __init__(
        self, capacity: int = 32, timeout: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._timeout = timeout
        self._clock = clock
        self._sessions: dict[int, Session] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def __contains__(self, bmc_id: object) -> bool:
        self._expire()
        return bmc_id in self._sessions

    def active_count(self) -> int:
        """Sessions past RAKP 4 (logged in): the ones a real BMC has only a few slots for."""
        self._expire()
        return sum(1 for s in self._sessions.values() if s.state is SessionState.ACTIVE)

    def open(
        self, console_id: int, suite: CipherSuite, max_privilege: Privilege, peer: Peer
    ) -> Session | None:
        """A new session with a fresh non-zero BMC session id, or None when the table is full."""
        self._expire()
        if len(self._sessions) >= self._capacity and not self._evict_half_open():
            return None
        bmc_id = 0
        while bmc_id == 0 or bmc_id in self._sessions:
            bmc_id = secrets.randbits(32)
        session = Session(bmc_id, console_id, suite, max_privilege, peer, self._clock())
        self._sessions[bmc_id] = session
        return session

    def get(self, bmc_id: int) -> Session | None:
        """The live session with this BMC session id, its idle timer restarted; else None."""
        self._expire()
        session = self._sessions.get(bmc_id)
        if session is not None:
            session.last_active = self._clock()
        return session

    def find_opened(self, peer: Peer, open_request: bytes) -> Session | None:
        """The session a retransmission of `open_request` from `peer` already opened, if any."""
        self._expire()
        for session in self._sessions.values():
            if (
                session.state is SessionState.OPENED
                and session.peer == peer
                and session.open_request == open_request
            ):
                return session
        return None

    def close(self, bmc_id: int) -> bool:
        """Forget a session; True if it existed."""
        return self._sessions.pop(bmc_id, None) is not None

    def _evict_half_open(self) -> bool:
        # A console that gave up mid-RAKP (a wrong password, say) never closes its session;
        # the least recently used such session makes room, active sessions never do.
        half_open = [s for s in self._sessions.values() if s.state is not SessionState.ACTIVE]
        if not half_open:
            return False
        del self._sessions[min(half_open, key=lambda s: s.last_active).bmc_id]
        return True

    def _expire(self) -> None:
        deadline = self._clock() - self._timeout
        for bmc_id in [s.bmc_id for s in self._sessions.values() if s.last_active < deadline]:
            del self._sessions[bmc_id]
