"""The IPMI commands the emulated BMC answers, the privilege each needs, and their effects.

Outside a session only the discovery commands are answered (Get Channel Authentication
Capabilities, Get Channel Cipher Suites, Get System GUID); anything else asked outside a
session gets D4h. Inside a session a command needs the session's current privilege (raised
with Set Session Privilege Level). Unknown commands get C1h. Chassis commands consult the
`fail_first` fault first and answer C0h (node busy) while it has failures left.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from nodefence.hwsim.ipmi.crypto import CipherSuite
from nodefence.hwsim.ipmi.packets import IpmiRequest
from nodefence.hwsim.ipmi.session import Privilege, Session, SessionTable
from nodefence.hwsim.ipmi.stats import BmcStats
from nodefence.hwsim.machine import SimMachine

LAN_CHANNEL = 1
CURRENT_CHANNEL = 0x0E
_RECORD_CHUNK = 16  # Get Channel Cipher Suites returns the record list 16 bytes at a time


class NetFn(IntEnum):
    """Request network functions we serve."""

    CHASSIS = 0x00
    APP = 0x06


class Completion(IntEnum):
    """IPMI completion codes (table 5-2) we answer with."""

    OK = 0x00
    NODE_BUSY = 0xC0
    INVALID_COMMAND = 0xC1
    REQUEST_DATA_LENGTH_INVALID = 0xC7
    INVALID_DATA_FIELD = 0xCC
    INSUFFICIENT_PRIVILEGE = 0xD4
    NOT_SUPPORTED_IN_PRESENT_STATE = 0xD5
    UNSPECIFIED_ERROR = 0xFF
    PRIVILEGE_EXCEEDS_LIMIT = 0x81  # Set Session Privilege Level specific
    INVALID_SESSION_ID = 0x87  # Close Session specific


class ChassisAction(IntEnum):
    """Chassis Control actions (table 28-4)."""

    POWER_DOWN = 0
    POWER_UP = 1
    POWER_CYCLE = 2
    HARD_RESET = 3
    DIAGNOSTIC_INTERRUPT = 4
    SOFT_SHUTDOWN = 5


@dataclass(frozen=True)
class Reply:
    """A command's completion code and data; `closes` names a session to forget once sent."""

    completion: int
    data: bytes = b""
    closes: int | None = None


Handler = Callable[[IpmiRequest, Session | None], Reply]


class Commands:
    """Command dispatch for one BMC: netfn/command to handler, with privilege checks."""

    def __init__(
        self,
        machine: SimMachine,
        guid: bytes,
        suites: Sequence[CipherSuite],
        sessions: SessionTable,
        stats: BmcStats,
        channel: str = "ipmi",
    ) -> None:
        self._machine = machine
        self._channel = channel
        self._guid = guid
        self._suites = tuple(suites)
        self._sessions = sessions
        self._stats = stats
        # (netfn, command) -> (privilege needed, or None when allowed outside a session; handler)
        self._table: dict[tuple[int, int], tuple[Privilege | None, Handler]] = {
            (NetFn.APP, 0x01): (Privilege.USER, self._get_device_id),
            (NetFn.APP, 0x37): (None, self._get_system_guid),
            (NetFn.APP, 0x38): (None, self._get_channel_auth_capabilities),
            (NetFn.APP, 0x3B): (Privilege.CALLBACK, self._set_session_privilege),
            (NetFn.APP, 0x3C): (Privilege.CALLBACK, self._close_session),
            (NetFn.APP, 0x54): (None, self._get_channel_cipher_suites),
            (NetFn.CHASSIS, 0x01): (Privilege.USER, self._get_chassis_status),
            (NetFn.CHASSIS, 0x02): (Privilege.OPERATOR, self._chassis_control),
        }

    def handle(self, request: IpmiRequest, session: Session | None) -> Reply:
        """Run one request, in `session` or outside any session (None)."""
        entry = self._table.get((request.netfn, request.command))
        if entry is None:
            return Reply(Completion.INVALID_COMMAND)
        needed, handler = entry
        if needed is not None and (session is None or session.privilege < needed):
            return Reply(Completion.INSUFFICIENT_PRIVILEGE)
        return handler(request, session)

    def _get_device_id(self, request: IpmiRequest, session: Session | None) -> Reply:
        # Device 20h rev 1, firmware 1.00, IPMI 2.0, chassis device; manufacturer and product 0
        # so that clients pick no OEM extensions.
        return Reply(Completion.OK, bytes([0x20, 0x01, 0x01, 0x00, 0x02, 0x80, 0, 0, 0, 0, 0]))

    def _get_system_guid(self, request: IpmiRequest, session: Session | None) -> Reply:
        return Reply(Completion.OK, self._guid)

    def _get_channel_auth_capabilities(
        self, request: IpmiRequest, session: Session | None
    ) -> Reply:
        if len(request.data) < 2:
            return Reply(Completion.REQUEST_DATA_LENGTH_INVALID)
        extended = bool(request.data[0] & 0x80)
        level = request.data[1] & 0x0F
        if request.data[0] & 0x0F not in (CURRENT_CHANNEL, LAN_CHANNEL) or not (
            Privilege.CALLBACK <= level <= Privilege.OEM
        ):
            return Reply(Completion.INVALID_DATA_FIELD)
        # No IPMI 1.5 auth types; with the v2.0 bit: non-null user names, RMCP+ only, Kg unset.
        auth_types = 0x80 if extended else 0x00
        data = bytes([LAN_CHANNEL, auth_types, 0x04, 0x02 if extended else 0x00, 0, 0, 0, 0])
        return Reply(Completion.OK, data)

    def _get_channel_cipher_suites(self, request: IpmiRequest, session: Session | None) -> Reply:
        if len(request.data) < 3:
            return Reply(Completion.REQUEST_DATA_LENGTH_INVALID)
        if request.data[0] & 0x0F not in (CURRENT_CHANNEL, LAN_CHANNEL):
            return Reply(Completion.INVALID_DATA_FIELD)
        if request.data[2] & 0x80:  # list by cipher suite: C0h, id, auth, integrity, conf
            records = b"".join(suite.record() for suite in self._suites)
        else:  # list every supported algorithm once, each with its tag bits
            records = bytes(
                dict.fromkeys(
                    [s.auth for s in self._suites]
                    + [0x40 | s.integrity for s in self._suites]
                    + [0x80 | s.confidentiality for s in self._suites]
                )
            )
        start = (request.data[2] & 0x3F) * _RECORD_CHUNK
        return Reply(Completion.OK, bytes([LAN_CHANNEL]) + records[start : start + _RECORD_CHUNK])

    def _set_session_privilege(self, request: IpmiRequest, session: Session | None) -> Reply:
        assert session is not None  # guaranteed by the privilege check
        if len(request.data) < 1:
            return Reply(Completion.REQUEST_DATA_LENGTH_INVALID)
        level = request.data[0] & 0x0F
        if level > Privilege.OEM:
            return Reply(Completion.INVALID_DATA_FIELD)
        if level > session.max_privilege:
            return Reply(Completion.PRIVILEGE_EXCEEDS_LIMIT)
        if level:  # 0 asks for the present level without changing it
            session.privilege = Privilege(level)
        return Reply(Completion.OK, bytes([session.privilege]))

    def _close_session(self, request: IpmiRequest, session: Session | None) -> Reply:
        assert session is not None  # guaranteed by the privilege check
        if len(request.data) < 4:
            return Reply(Completion.REQUEST_DATA_LENGTH_INVALID)
        (bmc_id,) = struct.unpack_from("<I", request.data)
        if bmc_id == session.bmc_id:
            return Reply(Completion.OK, closes=bmc_id)
        if bmc_id not in self._sessions:
            return Reply(Completion.INVALID_SESSION_ID)
        if session.privilege < Privilege.ADMINISTRATOR:
            return Reply(Completion.INSUFFICIENT_PRIVILEGE)
        self._sessions.close(bmc_id)
        return Reply(Completion.OK)

    def _injected_failure(self) -> Reply | None:
        """The answer of a chassis command under a `fail_first` or `errors` fault, else None."""
        if self._machine.consume_failure(self._channel):
            return Reply(Completion.NODE_BUSY)
        if self._machine.faults_of(self._channel).errors:
            return Reply(Completion.UNSPECIFIED_ERROR)
        return None

    def _get_chassis_status(self, request: IpmiRequest, session: Session | None) -> Reply:
        failed = self._injected_failure()
        if failed is not None:
            return failed
        power = 0x01 if self._machine.power_seen_by(self._channel) == "on" else 0x00
        # Byte 1: power on bit, restore policy "previous" (bits 6:5 = 01b); no faults, no events.
        return Reply(Completion.OK, bytes([power | 0x20, 0x00, 0x00]))

    def _chassis_control(self, request: IpmiRequest, session: Session | None) -> Reply:
        if len(request.data) < 1:
            return Reply(Completion.REQUEST_DATA_LENGTH_INVALID)
        try:
            action = ChassisAction(request.data[0] & 0x0F)
        except ValueError:
            return Reply(Completion.INVALID_DATA_FIELD)
        if action is ChassisAction.DIAGNOSTIC_INTERRUPT:
            return Reply(Completion.INVALID_DATA_FIELD)
        failed = self._injected_failure()
        if failed is not None:
            return failed
        machine = self._machine
        if action in (ChassisAction.POWER_DOWN, ChassisAction.SOFT_SHUTDOWN):
            # No OS runs on a simulated machine, so a soft shutdown is an immediate power-off.
            machine.request_off(self._channel)
        elif action is ChassisAction.POWER_UP:
            machine.request_on()
        elif machine.power_state() == "off":
            # The spec recommends D5h for cycle (28.3); reset of an off machine is refused alike.
            return Reply(Completion.NOT_SUPPORTED_IN_PRESENT_STATE)
        elif action is ChassisAction.POWER_CYCLE:
            machine.request_off(self._channel)
            machine.request_on()
        else:
            self._stats.resets += 1
        return Reply(Completion.OK)
