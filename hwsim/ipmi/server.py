"""The emulated BMC: one asyncio UDP endpoint per `SimMachine`, speaking IPMI 2.0 RMCP+ (lanplus).

Datagram flow: RMCP header -> ASF presence ping, session-less IPMI 1.5 discovery, RMCP+
handshake (`nodefence.hwsim.ipmi.handshake`) or an RMCP+ session packet (integrity checked, sequence
checked, decrypted) -> command (`nodefence.hwsim.ipmi.commands`) -> answer, encrypted and signed.
Any datagram that cannot be decoded is dropped and counted in `IpmiBmc.stats`; none stops the
server.

Faults are read from `machine.faults_of(channel)` for every datagram (the machine's faults plus
those of this channel, "ipmi" by default): `unreachable` drops it silently, `slow` handles and
answers it that many seconds later (a task, so other BMCs in the same event loop are not held
up), `wrong_credentials` refuses every login at RAKP 1, `fail_first` makes chassis commands
answer C0h, `errors` makes them answer FFh; `ignore_off` and `off_delay` are the machine's own
business.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nodefence.hwsim.ipmi import crypto
from nodefence.hwsim.ipmi.commands import Commands
from nodefence.hwsim.ipmi.handshake import MAX_USERNAME, Account, Answer, Handshake, RmcpStatus
from nodefence.hwsim.ipmi.packets import (
    AuthType,
    IpmiRequest,
    MalformedPacket,
    PayloadType,
    RmcpClass,
    V20Frame,
    asf_pong,
    decode_request,
    decode_v15,
    decode_v20,
    encode_response,
    encode_v15_sessionless,
    encode_v20,
    parse_asf_ping,
    split_integrity_trailer,
    split_rmcp,
)
from nodefence.hwsim.ipmi.session import Peer, SessionState, SessionTable
from nodefence.hwsim.ipmi.stats import BmcStats
from nodefence.hwsim.machine import SimMachine

logger = logging.getLogger(__name__)

_ANSWER_TYPE = {
    PayloadType.OPEN_SESSION_REQUEST: PayloadType.OPEN_SESSION_RESPONSE,
    PayloadType.RAKP1: PayloadType.RAKP2,
    PayloadType.RAKP3: PayloadType.RAKP4,
}


class _Drop(Enum):
    """Why a well-formed datagram is not answered; the value is the `BmcStats` counter."""

    UNSUPPORTED = "unsupported"
    UNKNOWN_SESSION = "unknown_session"
    BAD_INTEGRITY = "bad_integrity"
    REPLAYED = "replayed"
    UNANSWERED = "unanswered"


class _Dropped(Exception):
    def __init__(self, reason: _Drop) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class IpmiTamper:
    """Malformed answers to in-session commands, for robustness tests of IPMI consoles.

    Only answers to requests for which `applies(request)` is true are touched (by default,
    every in-session command), so logins still work and the command under test gets the
    damage. `message` rewrites the plain IPMI response message (header, checksums, completion
    code and data) before it is encrypted and signed, i.e. a well-protected but malformed
    answer. `datagram` rewrites the finished datagram on the wire (truncation, wrong session
    id, broken integrity code); returning None drops it. `handshake` does the same to the
    RMCP+ handshake answers (open session response, RAKP 2, RAKP 4), by payload type. Set
    with `IpmiBmc.tamper`.
    """

    message: Callable[[IpmiRequest, bytes], bytes] | None = None
    datagram: Callable[[IpmiRequest, bytes], bytes | None] | None = None
    applies: Callable[[IpmiRequest], bool] = lambda request: True
    handshake: Callable[[PayloadType, bytes], bytes | None] | None = None


class IpmiBmc:
    """An IPMI 2.0 BMC for one machine, on its own UDP port; many can share one event loop.

    One user, `username` / `password`, with administrator privilege. `cipher_suites` are the
    suites offered (3 and/or 17); a console asking for another is refused with the RMCP+
    status saying which algorithm did not match. Raises ValueError for a user name over 16
    bytes, a password over 20 bytes or a suite that is not emulated. `port=0` picks a free
    port; after `start()` `self.port` is the bound one. At most `max_sessions` sessions live
    at once; a session idle for `session_timeout` seconds is forgotten.
    """

    def __init__(
        self,
        machine: SimMachine,
        username: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        cipher_suites: tuple[int, ...] = (3, 17),
        *,
        max_sessions: int = 32,
        session_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        channel: str = "ipmi",
    ) -> None:
        name = username.encode()
        if not 0 < len(name) <= MAX_USERNAME:
            raise ValueError(f"IPMI user names are 1 to {MAX_USERNAME} bytes, got {len(name)}")
        unknown = [s for s in cipher_suites if s not in crypto.SUITES]
        if unknown or not cipher_suites:
            raise ValueError(
                f"cipher suites {list(cipher_suites)} must be non-empty and among "
                f"{sorted(crypto.SUITES)} (got unsupported {unknown})"
            )
        self.machine = machine
        self.channel = channel
        self.host = host
        self.port = port
        self.cipher_suites = cipher_suites
        self.stats = BmcStats()
        suites = [crypto.SUITES[s] for s in cipher_suites]
        guid = _guid_of(machine)
        self._sessions = SessionTable(max_sessions, session_timeout, clock)
        account = Account(name, crypto.user_key(password))
        self._handshake = Handshake(self._sessions, suites, account, guid)
        self._commands = Commands(machine, guid, suites, self._sessions, self.stats, channel)
        self._transport: asyncio.DatagramTransport | None = None
        self._delayed: set[asyncio.Task[None]] = set()
        self.tamper: IpmiTamper | None = None

    def __repr__(self) -> str:
        return f"IpmiBmc({self.machine.name!r}, {self.host}:{self.port})"

    def set_password(self, password: str) -> None:
        """Change the user's password, as an operator does on a running BMC (sessions already
        open stay open; every new login needs the new password)."""
        if len(password.encode()) > 20:
            raise ValueError("an IPMI 2.0 password is at most 20 bytes")
        old = self._handshake._account
        self._handshake._account = Account(old.username, crypto.user_key(password), old.privilege)

    @property
    def session_count(self) -> int:
        """Sessions alive now, in any state of the RAKP exchange."""
        return len(self._sessions)

    @property
    def active_session_count(self) -> int:
        """Logged-in sessions alive now (half-open ones excluded: they expire on their own)."""
        return self._sessions.active_count()

    @property
    def answers_pending(self) -> int:
        """Datagrams received but held back by the `slow` fault, not handled yet."""
        return len(self._delayed)

    async def start(self) -> None:
        """Bind the UDP port and start answering; raises OSError if the port is taken."""
        if self._transport is not None:
            raise RuntimeError(f"{self!r} is already started")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _BmcProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        logger.debug("ipmi bmc listening", extra={"node": self.machine.name, "port": self.port})

    async def stop(self) -> None:
        """Stop answering and release the port; answers still delayed by `slow` are dropped."""
        delayed = list(self._delayed)
        for task in delayed:
            task.cancel()
        await asyncio.gather(*delayed, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> IpmiBmc:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def datagram_received(self, datagram: bytes, peer: Peer) -> None:
        """Take one datagram: apply the `unreachable` and `slow` faults, then answer it."""
        self.stats.received += 1
        faults = self.machine.faults_of(self.channel)
        if faults.unreachable:
            self.stats.unreachable_drops += 1
            return
        if faults.slow > 0:
            task = asyncio.get_running_loop().create_task(
                self._answer_later(datagram, peer, faults.slow)
            )
            self._delayed.add(task)
            task.add_done_callback(self._delayed.discard)
            return
        self._answer(datagram, peer)

    async def _answer_later(self, datagram: bytes, peer: Peer, delay: float) -> None:
        await asyncio.sleep(delay)
        self._answer(datagram, peer)

    def _answer(self, datagram: bytes, peer: Peer) -> None:
        try:
            answer = self._reply(datagram, peer)
        except MalformedPacket as exc:
            self.stats.malformed += 1
            logger.debug("malformed datagram dropped: %s", exc, extra={"node": self.machine.name})
            return
        except _Dropped as drop:
            counter = drop.reason.value
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            return
        except Exception:
            # A bug in the emulator must not take the endpoint down; it is counted and logged
            # so that tests asserting `internal_errors == 0` catch it.
            self.stats.internal_errors += 1
            logger.exception("ipmi bmc failed on a datagram", extra={"node": self.machine.name})
            return
        if self._transport is not None and answer:
            self._transport.sendto(answer, peer)
            self.stats.answered += 1

    def _reply(self, datagram: bytes, peer: Peer) -> bytes:
        rmcp_class, _, body = split_rmcp(datagram)
        if rmcp_class == RmcpClass.ASF:
            return asf_pong(parse_asf_ping(body))
        if rmcp_class != RmcpClass.IPMI:  # RMCP ACKs and other classes
            raise _Dropped(_Drop.UNSUPPORTED)
        if body[0] == AuthType.NONE:
            return self._sessionless_v15(body)
        if body[0] == AuthType.RMCP_PLUS:
            return self._rmcp_plus(body, peer)
        raise _Dropped(_Drop.UNSUPPORTED)  # IPMI 1.5 authenticated sessions are not emulated

    def _sessionless_v15(self, body: bytes) -> bytes:
        frame = decode_v15(body)
        if frame.session_id != 0:
            raise _Dropped(_Drop.UNSUPPORTED)
        request = decode_request(frame.message)
        reply = self._commands.handle(request, None)
        return encode_v15_sessionless(encode_response(request, reply.completion, reply.data))

    def _rmcp_plus(self, body: bytes, peer: Peer) -> bytes:
        frame = decode_v20(body)
        if frame.payload_type in _ANSWER_TYPE:
            return self._handshake_step(frame, peer)
        if frame.payload_type != PayloadType.IPMI:
            raise _Dropped(_Drop.UNSUPPORTED)  # SOL and OEM payloads
        if frame.session_id != 0:
            return self._in_session(body, frame)
        if frame.authenticated or frame.encrypted:
            raise _Dropped(_Drop.UNKNOWN_SESSION)
        request = decode_request(frame.payload)
        reply = self._commands.handle(request, None)
        message = encode_response(request, reply.completion, reply.data)
        return encode_v20(PayloadType.IPMI, 0, 0, message)

    def _handshake_step(self, frame: V20Frame, peer: Peer) -> bytes:
        if frame.authenticated or frame.encrypted:
            raise MalformedPacket("RMCP+ handshake messages are never signed or encrypted")
        answer: Answer | None
        if frame.payload_type == PayloadType.OPEN_SESSION_REQUEST:
            answer = self._handshake.open_session(frame.payload, peer)
        elif frame.payload_type == PayloadType.RAKP1:
            refuse = self.machine.faults_of(self.channel).wrong_credentials
            answer = self._handshake.rakp1(frame.payload, refuse_login=refuse)
        else:
            answer = self._handshake.rakp3(frame.payload)
        if answer is None:
            raise _Dropped(_Drop.UNANSWERED)
        answer_type = _ANSWER_TYPE[PayloadType(frame.payload_type)]
        if answer.status is not RmcpStatus.OK:
            self.stats.login_refusals += 1
            logger.info(
                "ipmi login refused: %s in %s",
                answer.status.name,
                answer_type.name,
                extra={"node": self.machine.name, "peer": peer},
            )
        elif answer_type is PayloadType.RAKP4:
            self.stats.logins += 1
        datagram = encode_v20(answer_type, 0, 0, answer.payload)
        if self.tamper is not None and self.tamper.handshake is not None:
            return self.tamper.handshake(answer_type, datagram) or b""  # b"": nothing is sent
        return datagram

    def _in_session(self, body: bytes, frame: V20Frame) -> bytes:
        session = self._sessions.get(frame.session_id)
        if session is None or session.state is not SessionState.ACTIVE or session.keys is None:
            raise _Dropped(_Drop.UNKNOWN_SESSION)
        suite, keys = session.suite, session.keys
        # Both emulated suites sign and encrypt; a packet that does neither is refused.
        if not (frame.authenticated and frame.encrypted):
            raise _Dropped(_Drop.BAD_INTEGRITY)
        covered, code = split_integrity_trailer(body, frame, suite.code_length)
        if not hmac.compare_digest(code, crypto.auth_code(suite, keys.k1, covered)):
            raise _Dropped(_Drop.BAD_INTEGRITY)
        if not session.inbound.accept(frame.sequence):
            raise _Dropped(_Drop.REPLAYED)
        request = decode_request(crypto.decrypt_payload(keys.aes_key, frame.payload))
        reply = self._commands.handle(request, session)
        message = encode_response(request, reply.completion, reply.data)
        tamper = self.tamper if self.tamper is not None and self.tamper.applies(request) else None
        if tamper is not None and tamper.message is not None:
            message = tamper.message(request, message)
        datagram = encode_v20(
            PayloadType.IPMI,
            session.console_id,
            session.next_sequence(),
            crypto.encrypt_payload(keys.aes_key, message),
            encrypted=True,
            sign=lambda covered: crypto.auth_code(suite, keys.k1, covered),
        )
        if reply.closes is not None:
            self._sessions.close(reply.closes)
        if tamper is not None and tamper.datagram is not None:
            return tamper.datagram(request, datagram) or b""  # b"": nothing is sent
        return datagram


class _BmcProtocol(asyncio.DatagramProtocol):
    def __init__(self, bmc: IpmiBmc) -> None:
        self._bmc = bmc

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._bmc.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a console that went away; nothing to do.
        logger.debug("ipmi bmc socket error: %s", exc, extra={"node": self._bmc.machine.name})


def _guid_of(machine: SimMachine) -> bytes:
    """The machine's UUID as an IPMI GUID (least significant byte first)."""
    try:
        value = uuid.UUID(machine.uuid)
    except ValueError:
        value = uuid.uuid5(uuid.NAMESPACE_DNS, f"{machine.name}.hwsim")
    return value.bytes[::-1]
