"""The IPMI 2.0 (RMCP+) BMC emulator, witnessed by ipmitool and pyghmi over real UDP on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyghmi import exceptions as pyghmi_exceptions
from pyghmi.ipmi import command as pyghmi_command

from nodefence.hwsim.ipmi import IpmiBmc, crypto
from nodefence.hwsim.ipmi.packets import (
    PayloadType,
    checksum,
    decode_v20,
    encode_v15_sessionless,
    encode_v20,
    split_rmcp,
)
from nodefence.hwsim.ipmi.session import Privilege, SequenceWindow, SessionState, SessionTable
from nodefence.hwsim.machine import SimMachine
from tests.support.wait import eventually

USER = "admin"
PASSWORD = "s3cret"
UUID = "6f1c3a52-0b7e-4d5e-9a43-2c1b0e9d7a11"

needs_ipmitool = [
    pytest.mark.ipmitool,
    pytest.mark.skipif(shutil.which("ipmitool") is None, reason="needs the ipmitool binary"),
]


def with_ipmitool(test: Callable[..., Any]) -> Callable[..., Any]:
    for mark in needs_ipmitool:
        test = mark(test)
    return test


# --- fixtures and witnesses ----------------------------------------------------------------


@pytest.fixture
def machine() -> SimMachine:
    return SimMachine("node-1", UUID)


@pytest.fixture
async def bmc(machine: SimMachine) -> AsyncIterator[IpmiBmc]:
    async with IpmiBmc(machine, USER, PASSWORD) as running:
        yield running
    assert running.stats.internal_errors == 0


@dataclass(frozen=True)
class ToolRun:
    returncode: int
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def ipmitool(
    bmc: IpmiBmc,
    *args: str,
    user: str = USER,
    password: str = PASSWORD,
    cipher: int | None = 3,
    extra: tuple[str, ...] = (),
) -> ToolRun:
    """Run `ipmitool -I lanplus` against `bmc`; stdout and stderr together in `output`."""
    argv = ["ipmitool", "-I", "lanplus", "-H", bmc.host, "-p", str(bmc.port), "-U", user]
    argv += ["-P", password, *(["-C", str(cipher)] if cipher is not None else []), *extra]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return ToolRun(proc.returncode, out.decode(), time.monotonic() - started)


def pyghmi_session(bmc: IpmiBmc, user: str = USER, password: str = PASSWORD) -> Any:
    """A logged-in pyghmi `Command` (blocking: call it through `asyncio.to_thread`)."""
    return pyghmi_command.Command(bmc=bmc.host, port=bmc.port, userid=user, password=password)


@contextmanager
def pyghmi_logged_out(cmd: Any) -> Iterator[Any]:
    try:
        yield cmd
    finally:
        cmd.ipmi_session.logout()


class RawConsole(asyncio.DatagramProtocol):
    """A bare UDP socket for hand-built packets: what ipmitool and pyghmi never send."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.answers.put_nowait(data)

    def send(self, bmc: IpmiBmc, datagram: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(datagram, (bmc.host, bmc.port))

    async def ask(self, bmc: IpmiBmc, datagram: bytes, timeout: float = 2.0) -> bytes:
        self.send(bmc, datagram)
        return await asyncio.wait_for(self.answers.get(), timeout)


@pytest.fixture
async def console() -> AsyncIterator[RawConsole]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        RawConsole, local_addr=("127.0.0.1", 0)
    )
    protocol.transport = transport
    yield protocol
    transport.close()


def open_session_request(
    algorithms: tuple[int, int, int], console_id: int = 0xC0FFEE, privilege: int = 4, tag: int = 1
) -> bytes:
    auth, integrity, confidentiality = algorithms
    payload = bytes([tag, privilege, 0, 0]) + struct.pack("<I", console_id)
    payload += bytes([0, 0, 0, 8, auth, 0, 0, 0, 1, 0, 0, 8, integrity, 0, 0, 0])
    payload += bytes([2, 0, 0, 8, confidentiality, 0, 0, 0])
    return encode_v20(PayloadType.OPEN_SESSION_REQUEST, 0, 0, payload)


def rakp1(bmc_id: int, console_random: bytes, user: bytes, role: int = 0x14) -> bytes:
    payload = bytes([2, 0, 0, 0]) + struct.pack("<I", bmc_id) + console_random
    payload += bytes([role, 0, 0, len(user)]) + user
    return encode_v20(PayloadType.RAKP1, 0, 0, payload)


def rmcp_plus_payload(datagram: bytes) -> tuple[int, bytes]:
    """(payload type, payload) of an unencrypted RMCP+ answer."""
    frame = decode_v20(split_rmcp(datagram)[2])
    return frame.payload_type, frame.payload


SUITE_3 = (1, 1, 1)
SUITE_17 = (3, 4, 1)
SUITE_0 = (0, 0, 0)


# --- ipmitool as the witness -----------------------------------------------------------------


@with_ipmitool
@pytest.mark.parametrize("cipher", [3, 17, None], ids=["suite-3", "suite-17", "ipmitool-default"])
async def test_ipmitool_reads_power_status_with_each_cipher_suite(
    bmc: IpmiBmc, cipher: int | None
) -> None:
    run = await ipmitool(bmc, "chassis", "power", "status", cipher=cipher)
    assert run.ok, run.output
    assert "Chassis Power is on" in run.output
    assert bmc.stats.logins == 1


@with_ipmitool
@pytest.mark.parametrize("cipher", [3, 17])
async def test_ipmitool_power_off_and_on_change_the_simulated_machine(
    bmc: IpmiBmc, machine: SimMachine, cipher: int
) -> None:
    off = await ipmitool(bmc, "chassis", "power", "off", cipher=cipher)
    assert off.ok, off.output
    assert machine.power_state() == "off"
    status = await ipmitool(bmc, "chassis", "power", "status", cipher=cipher)
    assert "Chassis Power is off" in status.output

    on = await ipmitool(bmc, "chassis", "power", "on", cipher=cipher)
    assert on.ok, on.output
    assert machine.power_state() == "on"
    assert machine.power_changes == 2


@with_ipmitool
async def test_ipmitool_closes_its_session_so_none_is_left_behind(bmc: IpmiBmc) -> None:
    for _ in range(3):
        assert (await ipmitool(bmc, "chassis", "power", "status")).ok
    assert bmc.session_count == 0


@with_ipmitool
async def test_ipmitool_lists_exactly_the_offered_cipher_suites(machine: SimMachine) -> None:
    async with IpmiBmc(machine, USER, PASSWORD, cipher_suites=(17,)) as only_17:
        run = await ipmitool(only_17, "channel", "getciphers", "ipmi", cipher=17)
    assert run.ok, run.output
    suites = [line.split()[0] for line in run.output.splitlines()[1:] if line.strip()]
    assert suites == ["17"]


@with_ipmitool
async def test_power_cycle_of_an_off_machine_is_refused_not_in_present_state(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    machine.cut_power()
    run = await ipmitool(bmc, "raw", "0x00", "0x02", "0x02")
    assert not run.ok
    assert "rsp=0xd5" in run.output
    assert machine.power_state() == "off"


@with_ipmitool
async def test_hard_reset_of_a_running_machine_keeps_it_on_and_is_counted(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    run = await ipmitool(bmc, "chassis", "power", "reset")
    assert run.ok, run.output
    assert machine.power_state() == "on"
    assert bmc.stats.resets == 1


@with_ipmitool
async def test_soft_off_is_treated_as_power_off(bmc: IpmiBmc, machine: SimMachine) -> None:
    run = await ipmitool(bmc, "chassis", "power", "soft")
    assert run.ok, run.output
    assert machine.power_state() == "off"


@with_ipmitool
async def test_user_privilege_session_reads_power_but_cannot_change_it(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    status = await ipmitool(bmc, "chassis", "power", "status", extra=("-L", "USER"))
    assert status.ok, status.output
    off = await ipmitool(bmc, "chassis", "power", "off", extra=("-L", "USER"))
    assert not off.ok
    assert "Insufficient privilege level" in off.output
    assert machine.power_state() == "on"


@with_ipmitool
async def test_operator_privilege_is_enough_to_power_off(bmc: IpmiBmc, machine: SimMachine) -> None:
    run = await ipmitool(bmc, "chassis", "power", "off", extra=("-L", "OPERATOR"))
    assert run.ok, run.output
    assert machine.power_state() == "off"


@with_ipmitool
async def test_unknown_command_answers_invalid_command(bmc: IpmiBmc) -> None:
    run = await ipmitool(bmc, "raw", "0x0a", "0x10")
    assert not run.ok
    assert "rsp=0xc1" in run.output


# --- pyghmi as the witness -------------------------------------------------------------------


async def test_pyghmi_reads_and_sets_power(bmc: IpmiBmc, machine: SimMachine) -> None:
    def drive() -> list[str]:
        with pyghmi_logged_out(pyghmi_session(bmc)) as cmd:
            seen = [cmd.get_power()["powerstate"]]
            cmd.set_power("off", wait=True)
            seen.append(cmd.get_power()["powerstate"])
            cmd.set_power("on", wait=True)
            seen.append(cmd.get_power()["powerstate"])
            return seen

    assert await asyncio.to_thread(drive) == ["on", "off", "on"]
    assert machine.power_state() == "on"
    assert machine.power_changes == 2
    await eventually(
        "no session left", lambda: bmc.session_count == 0
    )  # pyghmi's logout closed the session


async def test_pyghmi_falls_back_to_suite_3_when_only_suite_3_is_offered(
    machine: SimMachine,
) -> None:
    async with IpmiBmc(machine, USER, PASSWORD, cipher_suites=(3,)) as only_3:

        def drive() -> str:
            with pyghmi_logged_out(pyghmi_session(only_3)) as cmd:
                return str(cmd.get_power()["powerstate"])

        assert await asyncio.to_thread(drive) == "on"
        # pyghmi asks for suite 17 first; it is refused with a status, not answered as suite 3.
        assert only_3.stats.login_refusals == 1
        assert only_3.stats.logins == 1


# --- credentials -----------------------------------------------------------------------------


@with_ipmitool
@pytest.mark.parametrize("cipher", [3, 17])
async def test_wrong_password_fails_fast_for_ipmitool(bmc: IpmiBmc, cipher: int) -> None:
    run = await ipmitool(
        bmc, "chassis", "power", "status", password="wrong", cipher=cipher, extra=("-v",)
    )
    assert not run.ok
    assert "RAKP 2 HMAC is invalid" in run.output
    assert run.seconds < 2


@with_ipmitool
async def test_abandoned_wrong_password_logins_do_not_lock_out_the_right_one(
    machine: SimMachine,
) -> None:
    async with IpmiBmc(machine, USER, PASSWORD, max_sessions=2) as small:
        for _ in range(3):
            assert not (await ipmitool(small, "chassis", "power", "status", password="no")).ok
        run = await ipmitool(small, "chassis", "power", "status")
        assert run.ok, run.output


async def test_wrong_password_fails_fast_for_pyghmi(bmc: IpmiBmc) -> None:
    started = time.monotonic()
    with pytest.raises(pyghmi_exceptions.IpmiException, match="Incorrect password"):
        await asyncio.to_thread(pyghmi_session, bmc, USER, "wrong")
    assert time.monotonic() - started < 2


@with_ipmitool
async def test_unknown_user_is_refused_at_rakp2_for_ipmitool(bmc: IpmiBmc) -> None:
    run = await ipmitool(bmc, "chassis", "power", "status", user="mallory", extra=("-v",))
    assert not run.ok
    assert "unauthorized name" in run.output
    assert run.seconds < 2


async def test_unknown_user_is_refused_at_rakp2_for_pyghmi(bmc: IpmiBmc) -> None:
    started = time.monotonic()
    with pytest.raises(pyghmi_exceptions.IpmiException, match="Unauthorized name"):
        await asyncio.to_thread(pyghmi_session, bmc, "mallory", PASSWORD)
    assert time.monotonic() - started < 2


@with_ipmitool
async def test_wrong_credentials_fault_refuses_even_the_right_password(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    machine.set_faults(wrong_credentials=True)
    run = await ipmitool(bmc, "chassis", "power", "off", extra=("-v",))
    assert not run.ok
    assert "unauthorized name" in run.output
    assert run.seconds < 2
    assert machine.power_state() == "on"

    machine.set_faults(wrong_credentials=False)
    assert (await ipmitool(bmc, "chassis", "power", "status")).ok


async def test_rakp3_with_a_bad_auth_code_gets_invalid_integrity_check_value(
    bmc: IpmiBmc, console: RawConsole
) -> None:
    kind, opened = rmcp_plus_payload(await console.ask(bmc, open_session_request(SUITE_3)))
    assert (kind, opened[1]) == (PayloadType.OPEN_SESSION_RESPONSE, 0)
    (bmc_id,) = struct.unpack_from("<I", opened, 8)
    console_random = os.urandom(16)
    kind, rakp2 = rmcp_plus_payload(await console.ask(bmc, rakp1(bmc_id, console_random, b"admin")))
    assert (kind, rakp2[1]) == (PayloadType.RAKP2, 0)

    bogus = encode_v20(PayloadType.RAKP3, 0, 0, bytes([3, 0, 0, 0]) + opened[8:12] + bytes(20))
    kind, rakp4 = rmcp_plus_payload(await console.ask(bmc, bogus))
    assert (kind, rakp4[1]) == (PayloadType.RAKP4, 0x0F)
    assert bmc.session_count == 0


async def test_rakp2_proves_the_bmc_knows_the_password(bmc: IpmiBmc, console: RawConsole) -> None:
    _, opened = rmcp_plus_payload(await console.ask(bmc, open_session_request(SUITE_17)))
    console_id, bmc_id = struct.unpack_from("<II", opened, 4)
    console_random = os.urandom(16)
    _, rakp2 = rmcp_plus_payload(await console.ask(bmc, rakp1(bmc_id, console_random, b"admin")))
    bmc_random, guid, code = rakp2[8:24], rakp2[24:40], rakp2[40:]
    expected = crypto.rakp2_auth_code(
        crypto.SUITES[17],
        crypto.user_key(PASSWORD),
        console_id,
        bmc_id,
        console_random,
        bmc_random,
        guid,
        0x14,
        b"admin",
    )
    assert code == expected


# --- cipher suite negotiation ----------------------------------------------------------------


@with_ipmitool
@pytest.mark.parametrize(
    ("offered", "asked", "message"),
    [
        ((17,), 3, "invalid authentication algorithm"),
        ((3,), 17, "invalid authentication algorithm"),
        ((3, 17), 0, "invalid authentication algorithm"),
        ((3, 17), 1, "invalid integrity algorithm"),
    ],
)
async def test_unsupported_cipher_suite_is_refused_with_an_rmcp_status(
    machine: SimMachine, offered: tuple[int, ...], asked: int, message: str
) -> None:
    async with IpmiBmc(machine, USER, PASSWORD, cipher_suites=offered) as limited:
        run = await ipmitool(limited, "chassis", "power", "status", cipher=asked, extra=("-v",))
        assert not run.ok
        assert message in run.output
        assert run.seconds < 2
        assert limited.stats.logins == 0


@pytest.mark.parametrize(
    ("offered", "asked", "status"),
    [
        ((17,), SUITE_3, 0x04),
        ((3, 17), SUITE_0, 0x04),
        ((3,), (1, 4, 1), 0x05),  # SHA-1 key exchange with SHA-256 integrity
        ((3, 17), (1, 4, 1), 0x11),  # every algorithm offered, but in no single suite
        ((3,), (1, 1, 0), 0x10),  # no confidentiality is not offered
    ],
)
async def test_open_session_answers_a_status_never_another_suite(
    machine: SimMachine,
    console: RawConsole,
    offered: tuple[int, ...],
    asked: tuple[int, int, int],
    status: int,
) -> None:
    async with IpmiBmc(machine, USER, PASSWORD, cipher_suites=offered) as limited:
        kind, payload = rmcp_plus_payload(await console.ask(limited, open_session_request(asked)))
        assert kind == PayloadType.OPEN_SESSION_RESPONSE
        assert payload[1] == status
        assert len(payload) == 8  # tag, status, reserved, console session id: no algorithms
        assert limited.session_count == 0


async def test_open_session_for_an_offered_suite_echoes_that_suite(
    bmc: IpmiBmc, console: RawConsole
) -> None:
    request = open_session_request(SUITE_17, privilege=3)
    _, payload = rmcp_plus_payload(await console.ask(bmc, request))
    assert payload[1] == 0
    assert payload[2] == 3  # the maximum privilege asked is the one granted
    assert (payload[16], payload[24], payload[32]) == SUITE_17


# --- faults ----------------------------------------------------------------------------------


@with_ipmitool
async def test_unreachable_bmc_stays_silent_and_ipmitool_times_out(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    machine.set_faults(unreachable=True)
    run = await ipmitool(bmc, "chassis", "power", "off", extra=("-N", "1", "-R", "1"))
    assert not run.ok
    assert bmc.stats.answered == 0
    assert bmc.stats.unreachable_drops >= 1
    assert machine.power_state() == "on"


@with_ipmitool
async def test_fail_first_answers_node_busy_then_succeeds(
    bmc: IpmiBmc, machine: SimMachine
) -> None:
    machine.set_faults(fail_first=2)
    first = await ipmitool(bmc, "raw", "0x00", "0x01")
    second = await ipmitool(bmc, "chassis", "power", "off")
    assert not first.ok and "rsp=0xc0" in first.output
    assert not second.ok
    assert machine.power_state() == "on"

    third = await ipmitool(bmc, "chassis", "power", "off")
    assert third.ok, third.output
    assert machine.power_state() == "off"


async def test_slow_bmc_answers_late_without_holding_up_another_bmc(
    console: RawConsole,
) -> None:
    slow_machine, fast_machine = SimMachine("slow", UUID), SimMachine("fast", UUID)
    slow_machine.set_faults(slow=0.5)
    ping = bytes([6, 0, 0xFF, 6]) + struct.pack(">IBBBB", 4542, 0x80, 9, 0, 0)
    async with (
        IpmiBmc(slow_machine, USER, PASSWORD) as slow,
        IpmiBmc(fast_machine, USER, PASSWORD) as fast,
    ):
        started = time.monotonic()
        console.send(slow, ping)
        await console.ask(fast, ping)
        fast_seconds = time.monotonic() - started
        await asyncio.wait_for(console.answers.get(), timeout=2)
        slow_seconds = time.monotonic() - started
    assert fast_seconds < 0.25
    assert slow_seconds >= 0.5


async def test_slow_bmc_still_serves_pyghmi(machine: SimMachine) -> None:
    machine.set_faults(slow=0.05)
    async with IpmiBmc(machine, USER, PASSWORD) as slow:

        def drive() -> str:
            with pyghmi_logged_out(pyghmi_session(slow)) as cmd:
                return str(cmd.get_power()["powerstate"])

        assert await asyncio.to_thread(drive) == "on"


# --- many BMCs, bad input --------------------------------------------------------------------


@with_ipmitool
async def test_two_bmcs_in_one_loop_are_independent() -> None:
    first, second = SimMachine("node-1", UUID), SimMachine("node-2", UUID)
    async with (
        IpmiBmc(first, "alice", "one") as bmc1,
        IpmiBmc(second, "bob", "two", cipher_suites=(17,)) as bmc2,
    ):
        assert bmc1.port != bmc2.port
        off = await ipmitool(bmc1, "chassis", "power", "off", user="alice", password="one")
        assert off.ok, off.output
        crossed = await ipmitool(bmc2, "chassis", "power", "off", user="alice", password="one")
        assert not crossed.ok
        status = await ipmitool(
            bmc2, "chassis", "power", "status", user="bob", password="two", cipher=17
        )
        assert "Chassis Power is on" in status.output
    assert (first.power_state(), second.power_state()) == ("off", "on")


async def test_asf_presence_ping_is_answered_with_a_pong(bmc: IpmiBmc, console: RawConsole) -> None:
    ping = bytes([6, 0, 0xFF, 6]) + struct.pack(">IBBBB", 4542, 0x80, 0x2A, 0, 0)
    pong = await console.ask(bmc, ping)
    iana, kind, tag = struct.unpack_from(">IBB", pong, 4)
    assert (pong[3], iana, kind, tag) == (6, 4542, 0x40, 0x2A)
    assert pong[20] & 0x80  # supported entities: IPMI


def _ipmi_message(netfn: int, command: int, data: bytes = b"") -> bytes:
    head = bytes([0x20, netfn << 2])
    body = bytes([0x81, 0x04, command]) + data
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])


async def test_garbage_datagrams_are_counted_and_ignored(bmc: IpmiBmc, console: RawConsole) -> None:
    good_message = _ipmi_message(0x06, 0x38, bytes([0x8E, 0x04]))
    malformed = [
        b"\x06\x00\xff\x07",  # RMCP header and nothing else
        bytes(range(1, 64)),  # not RMCP 1.0
        bytes([6, 0, 0xFF, 6]) + bytes(8),  # ASF, but not a presence ping
        encode_v15_sessionless(good_message)[:-3],  # IPMI 1.5 message cut short
        encode_v15_sessionless(good_message[:-1] + b"\x00"),  # bad checksum
        encode_v20(PayloadType.IPMI, 0, 0, good_message)[:20],  # RMCP+ length beyond the end
        encode_v20(PayloadType.OPEN_SESSION_REQUEST, 0, 0, bytes(10)),  # truncated request
        encode_v20(PayloadType.RAKP1, 0, 0, bytes(27)),  # truncated RAKP 1
    ]
    for datagram in malformed:
        console.send(bmc, datagram)
    console.send(bmc, encode_v20(PayloadType.IPMI, 0x1234, 1, good_message))  # no such session
    await eventually("every packet received", lambda: bmc.stats.received == len(malformed) + 1)
    assert bmc.stats.malformed == len(malformed)
    assert bmc.stats.unknown_session == 1
    assert bmc.stats.answered == 0
    assert console.answers.empty()

    # Still healthy: a session-less discovery request is answered.
    answer = await console.ask(bmc, encode_v15_sessionless(good_message))
    assert answer[:4] == bytes([6, 0, 0xFF, 7])


_RMCP_PREFIXES = [
    b"",
    bytes([6, 0, 0xFF, 7, 0]),
    bytes([6, 0, 0xFF, 7, 6]),
    bytes([6, 0, 0xFF, 7, 6, PayloadType.OPEN_SESSION_REQUEST]),
    bytes([6, 0, 0xFF, 7, 6, PayloadType.RAKP1]),
    bytes([6, 0, 0xFF, 7, 6, PayloadType.RAKP3]),
    bytes([6, 0, 0xFF, 7, 6, 0xC0]),
    bytes([6, 0, 0xFF, 6]),
]


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(_RMCP_PREFIXES), rest=st.binary(max_size=120))
def test_no_datagram_makes_the_bmc_fail(prefix: bytes, rest: bytes) -> None:
    bmc = IpmiBmc(SimMachine("fuzz", UUID), USER, PASSWORD)
    bmc.datagram_received(prefix + rest, ("127.0.0.1", 9))
    assert bmc.stats.internal_errors == 0
    assert bmc.stats.received == 1


# --- session bookkeeping (pure) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "sequence", "accepted"),
    [
        ([], 0, False),  # 0 is never a session sequence number
        ([], 1, True),
        ([1, 2, 3], 3, False),  # replay
        ([1, 2, 5], 4, True),  # late but within the window
        ([1, 2, 5], 5, False),
        ([1, 40], 8, False),  # too far behind
        ([1], 0xFFFFFFFF, True),  # a jump ahead is fine
    ],
)
def test_sequence_window_accepts_fresh_numbers_and_rejects_replays(
    history: list[int], sequence: int, accepted: bool
) -> None:
    window = SequenceWindow()
    for seen in history:
        assert window.accept(seen)
    assert window.accept(sequence) is accepted


def test_full_session_table_forgets_an_abandoned_handshake_but_never_an_active_session() -> None:
    now = [0.0]
    table = SessionTable(capacity=2, timeout=60.0, clock=lambda: now[0])
    suite = crypto.SUITES[3]
    active = table.open(1, suite, Privilege.ADMINISTRATOR, ("127.0.0.1", 1))
    abandoned = table.open(2, suite, Privilege.ADMINISTRATOR, ("127.0.0.1", 2))
    assert active is not None and abandoned is not None
    active.state = SessionState.ACTIVE

    newcomer = table.open(3, suite, Privilege.ADMINISTRATOR, ("127.0.0.1", 3))
    assert newcomer is not None
    assert abandoned.bmc_id not in table and active.bmc_id in table

    newcomer.state = SessionState.ACTIVE
    assert table.open(4, suite, Privilege.ADMINISTRATOR, ("127.0.0.1", 4)) is None


def test_idle_sessions_expire_after_the_session_timeout() -> None:
    now = [0.0]
    table = SessionTable(capacity=4, timeout=60.0, clock=lambda: now[0])
    session = table.open(1, crypto.SUITES[17], Privilege.ADMINISTRATOR, ("127.0.0.1", 1))
    assert session is not None
    now[0] = 59.0
    assert table.get(session.bmc_id) is session  # use restarts the idle timer
    now[0] = 118.0
    assert session.bmc_id in table
    now[0] = 119.5
    assert table.get(session.bmc_id) is None


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cipher_suites": (3, 8)},
        {"cipher_suites": ()},
        {"password": "x" * 21},
        {"username": "u" * 17},
        {"username": ""},
    ],
)
def test_bmc_refuses_a_configuration_it_cannot_emulate(
    machine: SimMachine, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"username": USER, "password": PASSWORD, **kwargs}
    with pytest.raises(ValueError):
        IpmiBmc(machine, **args)
