"""The IPMI backend (pyghmi in a worker process per backend) against our RMCP+ emulator over
real UDP on 127.0.0.1; its worker protocol and the Close Session it sends for a killed worker."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from nodefence.backends.base import PowerState
from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.ipmi.backend import IpmiBackend
from nodefence.backends.ipmi.close import close_session_datagram
from nodefence.backends.ipmi.console import classify_ipmi_error
from nodefence.backends.ipmi.pool import POOL, WorkerPool
from nodefence.backends.ipmi.wire import (
    Answer,
    Command,
    Failure,
    FrameReader,
    Heard,
    LoggedIn,
    Logout,
    Open,
    Ready,
    SessionClosed,
    SessionKeys,
    SessionSequence,
    WireError,
    encode,
)
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, Secret
from nodefence.hwsim.ipmi import IpmiBmc, IpmiTamper, crypto
from nodefence.hwsim.ipmi.packets import (
    PayloadType,
    decode_request,
    decode_v20,
    split_integrity_trailer,
    split_rmcp,
)
from nodefence.hwsim.machine import SimMachine
from tests.support.wait import eventually, eventually_blocking, throughout

PASSWORD = "ipmi-Pa55"


@pytest.fixture(autouse=True)
def warm_workers() -> None:
    """Spare worker processes started and loaded, as they are in a running agent."""
    assert POOL.wait_ready(30), "IPMI worker processes did not start"


@pytest_asyncio.fixture
async def bmc() -> AsyncIterator[IpmiBmc]:
    server = IpmiBmc(
        SimMachine("node-1", "6e1f0f2a-0000-4000-8000-000000000001"), "admin", PASSWORD
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def other_bmc() -> AsyncIterator[IpmiBmc]:
    """A second, healthy BMC in the same process (another node's)."""
    server = IpmiBmc(
        SimMachine("node-2", "6e1f0f2a-0000-4000-8000-000000000002"), "admin", PASSWORD
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def backend(
    port: int,
    *,
    password: str = PASSWORD,
    cipher: int = 3,
    timeout: float = 2.0,
    username: str = "admin",
    privilege: str = "administrator",
    pool: WorkerPool = POOL,
) -> IpmiBackend:
    spec = IpmiDevice(
        "ipmi",
        "127.0.0.1",
        username,
        Secret(password),
        port=port,
        cipher=cipher,
        privilege=privilege,  # type: ignore[arg-type]
        timeouts=DeviceTimeouts(timeout=timeout),
    )
    return IpmiBackend("node-1", spec, pool=pool)


@pytest.mark.parametrize("cipher", [3, 17])
async def test_power_off_and_on_through_each_cipher_suite(bmc: IpmiBmc, cipher: int) -> None:
    be = backend(bmc.port, cipher=cipher)
    try:
        assert await be.power_state() is PowerState.ON
        await be.power_off()
        assert await be.power_state() is PowerState.OFF
        await be.power_on()
        assert await be.power_state() is PowerState.ON
    finally:
        await be.close()


async def test_operator_privilege_can_fence(bmc: IpmiBmc) -> None:
    be = backend(bmc.port, privilege="operator")
    await be.power_off()
    assert bmc.machine.power_state() == "off"
    await be.close()


async def test_wrong_password_fails_at_once_as_an_auth_error(bmc: IpmiBmc) -> None:
    start = time.monotonic()
    with pytest.raises(BmcAuthFailed, match=r"IPMI login refused: .*check username") as info:
        await backend(bmc.port, password="wrong").power_state()
    assert time.monotonic() - start < 1.5
    assert info.value.node == "node-1" and info.value.device == "ipmi"
    assert PASSWORD not in str(info.value) and "wrong" not in str(info.value)


async def test_unknown_user_fails_at_once_as_an_auth_error(bmc: IpmiBmc) -> None:
    start = time.monotonic()
    with pytest.raises(BmcAuthFailed):
        await backend(bmc.port, username="nobody").power_state()
    assert time.monotonic() - start < 1.5


async def test_wrong_credentials_fault_is_an_auth_error(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(wrong_credentials=True)
    with pytest.raises(BmcAuthFailed):
        await backend(bmc.port).power_state()


async def test_unreachable_bmc_fails_within_its_timeout(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(unreachable=True)
    start = time.monotonic()
    with pytest.raises(BmcUnreachable, match="no answer from the BMC within 1 s"):
        await backend(bmc.port, timeout=1.0).power_state()
    assert time.monotonic() - start < 1.6


async def test_closed_port_fails_within_its_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(BmcUnreachable):
        await backend(port, timeout=1.0).power_state()
    assert time.monotonic() - start < 1.6


# pyghmi gives up its own login retries after ~4-5.5 s with an error whose text is "None";
# a deadline longer than that must not turn silence into "reachable".
_PAST_PYGHMI_RETRIES = 8.0


async def test_a_bmc_that_never_answers_is_unreachable_past_pyghmis_own_retry_budget(
    bmc: IpmiBmc,
) -> None:
    bmc.machine.set_faults(unreachable=True)
    checked, read = await asyncio.gather(
        backend(bmc.port, timeout=_PAST_PYGHMI_RETRIES).check(),
        backend(bmc.port, timeout=_PAST_PYGHMI_RETRIES).power_state(),
        return_exceptions=True,
    )
    assert isinstance(read, BmcUnreachable), repr(read)
    assert not isinstance(checked, BaseException)
    assert (checked.reachable, checked.authenticated) == (False, False), checked.detail
    assert checked.power is PowerState.UNKNOWN


@pytest.mark.parametrize(
    ("dropped", "timeout"),
    [
        # RAKP 2 never comes: our deadline ends the login.
        (PayloadType.RAKP2, 1.0),
        # The open session response never comes (the channel capabilities did): pyghmi gives
        # up first, after its own retries, with an error whose text is "None".
        (PayloadType.OPEN_SESSION_RESPONSE, _PAST_PYGHMI_RETRIES),
    ],
)
async def test_a_login_answered_in_part_then_silent_is_never_unreachable(
    bmc: IpmiBmc, dropped: PayloadType, timeout: float
) -> None:
    # The BMC answers part of the login, then goes silent: it is there (a watchdog proof
    # must not count it as dead), but no session comes up.
    bmc.tamper = IpmiTamper(handshake=lambda kind, datagram: None if kind is dropped else datagram)
    checked, read = await asyncio.gather(
        backend(bmc.port, timeout=timeout).check(),
        backend(bmc.port, timeout=timeout).power_state(),
        return_exceptions=True,
    )
    assert not isinstance(checked, BaseException)
    assert checked.reachable, checked.detail
    assert not checked.authenticated, checked.detail
    assert isinstance(read, FenceError) and not isinstance(read, BmcUnreachable), repr(read)


async def test_stuck_on_machine_still_reads_on_after_power_off(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(ignore_off=True)
    be = backend(bmc.port)
    await be.power_off()
    assert await be.power_state() is PowerState.ON
    await be.close()


async def test_delayed_off_reads_off_only_after_the_delay(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(off_delay=0.4)
    be = backend(bmc.port)
    start = time.monotonic()
    await be.power_off()
    assert await be.power_state() is PowerState.ON
    while await be.power_state() is PowerState.ON:
        assert time.monotonic() - start < 3, "delayed off never showed"
    assert time.monotonic() - start >= 0.4
    await be.close()


async def test_busy_bmc_answers_are_errors_then_the_next_call_succeeds(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(fail_first=1)
    be = backend(bmc.port)
    with pytest.raises(BmcProtocolError, match="0xc0"):
        await be.power_state()
    assert await be.power_state() is PowerState.ON
    await be.close()


async def test_check_reports_reachability_credentials_and_power(bmc: IpmiBmc) -> None:
    ok = await backend(bmc.port).check()
    assert ok.reachable and ok.authenticated and ok.reset_supported and ok.power is PowerState.ON
    bad = await backend(bmc.port, password="nope").check()
    assert bad.reachable and not bad.authenticated


def test_unsupported_cipher_is_refused_before_any_packet() -> None:
    with pytest.raises(BmcUnsupported, match="cipher suite 1 "):
        backend(623, cipher=1)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Unauthorized name", BmcAuthFailed),
        ("Incorrect password provided", BmcAuthFailed),
        ("No Cipher suite match with proposed security algorithms", BmcUnsupported),
        ("timeout", BmcUnreachable),
        ("None", BmcUnreachable),
        ("Node busy (completion code 0xc0)", BmcProtocolError),
    ],
)
def test_pyghmi_messages_map_to_typed_errors(message: str, kind: type) -> None:
    err = classify_ipmi_error(message, node="n", device="d", during_login=True)
    assert isinstance(err, kind)


@pytest.mark.parametrize("message", ["None", "timeout", ""])
def test_a_failed_login_after_the_bmc_answered_is_a_timeout_never_unreachable(
    message: str,
) -> None:
    err = classify_ipmi_error(message, node="n", device="d", during_login=True, heard=True)
    assert isinstance(err, BmcTimeout)


# --- abandoned calls: nothing acts after the backend gave up --------------------------------

# pyghmi logs in with five exchanges (channel auth capabilities, open session, RAKP 1 and 3,
# session privilege); each answer delayed this long puts the power-off request well past the
# deadline below, so a call that kept running after it was abandoned would send it late.
_SLOW_LOGIN = 0.3
_DEADLINE = 0.5


async def test_an_abandoned_power_off_never_lands_after_the_backend_gave_up(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(slow=_SLOW_LOGIN)
    be = backend(bmc.port, timeout=_DEADLINE)
    started = time.monotonic()
    with pytest.raises((BmcUnreachable, BmcTimeout)):
        await be.power_off()
    assert time.monotonic() - started < _DEADLINE + 0.5
    await be.close()
    # The abandoned login would have completed and its power-off landed about 1.5-1.8 s in.
    await throughout(
        "the machine stays on and no session logs in after the backend gave up",
        lambda: bmc.machine.power_state() == "on" and bmc.stats.logins == 0,
        seconds=3.0,
    )
    assert bmc.machine.power_changes == 0


async def test_a_close_after_abandoned_calls_leaves_no_session_on_the_bmc(bmc: IpmiBmc) -> None:
    be = backend(bmc.port, timeout=_DEADLINE)
    assert await be.power_state() is PowerState.ON
    assert bmc.active_session_count == 1
    bmc.machine.set_faults(slow=2 * _DEADLINE)  # every answer now comes after the deadline
    for _ in range(3):  # the later calls are the ones queued behind the first
        with pytest.raises(FenceError):
            await be.power_state()
    await be.close()
    bmc.machine.set_faults(slow=0.0)
    await eventually(
        "every session the backend opened is closed on the BMC",
        lambda: bmc.active_session_count == 0 and bmc.answers_pending == 0,
        timeout=5.0,
    )
    await throughout(
        "no session logs in again after close", lambda: bmc.active_session_count == 0, 1.0
    )


async def test_abandoned_calls_to_one_bmc_do_not_stall_another_bmcs_calls(
    bmc: IpmiBmc, other_bmc: IpmiBmc
) -> None:
    # The first BMC logs in fine, then never answers a command: every call to it is
    # abandoned at its deadline while its library keeps retrying.
    bmc.tamper = IpmiTamper(datagram=lambda request, datagram: None)
    stop = asyncio.Event()

    async def abandon_calls_to_the_first() -> int:
        abandoned = 0
        while not stop.is_set():
            be = backend(bmc.port, timeout=_DEADLINE)
            try:
                await be.power_off()
            except FenceError:
                abandoned += 1
            finally:
                await be.close()
        return abandoned

    hammer = asyncio.create_task(abandon_calls_to_the_first())
    failures: list[str] = []
    reads = 0
    until = time.monotonic() + 6.0
    try:
        while time.monotonic() < until:
            be = backend(other_bmc.port, timeout=2.0)
            try:
                assert await be.power_state() is PowerState.ON
                assert await be.power_state() is PowerState.ON
                reads += 2
            except FenceError as err:
                failures.append(str(err))
            finally:
                await be.close()
    finally:
        stop.set()
        abandoned = await hammer
    assert abandoned >= 5 and reads > 0
    assert failures == [], f"{len(failures)} of the healthy BMC's calls stalled: {failures[0]}"


async def test_a_cancelled_call_cannot_power_the_machine_off_later(bmc: IpmiBmc) -> None:
    bmc.machine.set_faults(slow=_SLOW_LOGIN)
    be = backend(bmc.port, timeout=5.0)
    call = asyncio.create_task(be.power_off())
    await eventually("the login started", lambda: bmc.stats.received > 0, timeout=5.0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await be.close()
    await throughout(
        "the machine stays on and no session logs in after the call was cancelled",
        lambda: bmc.machine.power_state() == "on" and bmc.stats.logins == 0,
        seconds=2.5,
    )


async def test_an_abandoned_call_ends_its_worker_and_the_next_call_starts_afresh(
    bmc: IpmiBmc,
) -> None:
    be = backend(bmc.port, timeout=_DEADLINE)
    try:
        assert await be.power_state() is PowerState.ON
        first = be.worker_pid
        assert first is not None
        bmc.machine.set_faults(slow=2 * _DEADLINE)
        with pytest.raises(BmcTimeout):
            await be.power_state()
        assert be.worker_pid is None
        await eventually("the abandoned worker is gone", lambda: not alive(first), timeout=5.0)
        bmc.machine.set_faults(slow=0.0)
        assert await be.power_state() is PowerState.ON
        assert be.worker_pid not in (None, first)
    finally:
        await be.close()
    assert be.worker_pid is None


async def test_without_spare_workers_a_call_starts_its_own_and_still_gets_its_full_timeout(
    bmc: IpmiBmc,
) -> None:
    be = backend(bmc.port, timeout=0.5, pool=WorkerPool(spares=0))
    try:
        await be.power_off()
        assert await be.power_state() is PowerState.OFF
    finally:
        await be.close()


async def test_at_most_max_workers_run_at_once_and_the_others_wait_their_turn(
    bmc: IpmiBmc,
) -> None:
    pool = WorkerPool(spares=0, max_workers=2)
    most = 0

    async def check_and_close() -> bool:
        nonlocal most
        be = backend(bmc.port, timeout=1.0, pool=pool)
        try:
            result = await be.check()
            most = max(most, pool.in_use())
            return result.authenticated and result.power is PowerState.ON
        finally:
            await be.close()

    assert all(await asyncio.gather(*(check_and_close() for _ in range(5))))
    assert 1 <= most <= 2
    assert pool.in_use() == 0


async def test_the_password_never_shows_in_the_workers_command_line_or_environment(
    bmc: IpmiBmc,
) -> None:
    be = backend(bmc.port)
    try:
        assert await be.power_state() is PowerState.ON
        pid = be.worker_pid
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"nodefence.backends.ipmi.worker" in cmdline
        assert PASSWORD.encode() not in cmdline
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        await be.close()


_ORPHAN_SCRIPT = """
import asyncio, socket, sys
from nodefence.backends.ipmi.backend import IpmiBackend, prestart_workers
from nodefence.backends.ipmi.pool import POOL
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, Secret

async def main():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    spec = IpmiDevice("ipmi", "127.0.0.1", "admin", Secret("pw"), port=silent.getsockname()[1],
                      timeouts=DeviceTimeouts(timeout=60))
    be = IpmiBackend("node-1", spec)
    call = asyncio.create_task(be.power_state())
    while be.worker_pid is None:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(POOL.wait_ready, 30)
    print(be.worker_pid, *POOL.spare_pids(), flush=True)
    await call

asyncio.run(main())
"""


def test_workers_die_with_the_process_that_started_them() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) >= 2, pids  # the busy worker and at least one spare
        assert all(alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    eventually_blocking(
        f"workers {pids} gone with their parent", lambda: not any(alive(p) for p in pids)
    )


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- the worker protocol and the Close Session a killed worker needs ------------------------


@pytest.mark.parametrize(
    "message",
    [
        Open("127.0.0.1", 623, "admin", Secret(PASSWORD), 17, 4),
        Command(7, 0x00, 0x02, b"\x00"),
        Logout(8),
        Ready(),
        Heard(),
        LoggedIn(),
        Answer(7, b"\x01\x10\x00"),
        Failure(7, "BmcAuthFailed", "IPMI login refused: Incorrect password provided"),
        SessionKeys(0x1234ABCD, "sha256", b"k" * 32, b"a" * 16),
        SessionSequence(0x1234ABCD, 9),
        SessionClosed(0x1234ABCD),
    ],
)
def test_every_worker_message_survives_the_wire_whole(message: object) -> None:
    frame = encode(message)  # type: ignore[arg-type]
    reader = FrameReader()
    assert reader.feed(frame[:3]) == []  # a frame cut anywhere waits for its rest
    assert reader.feed(frame[3:] + frame) == [message, message]


def test_secrets_do_not_show_in_the_messages_repr() -> None:
    shown = repr(Open("bmc", 623, "admin", Secret(PASSWORD), 3, 4))
    shown += repr(SessionKeys(1, "sha1", b"K1-secret", b"aes-secret"))
    assert PASSWORD not in shown and "K1-secret" not in shown and "aes-secret" not in shown


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"t": "Nope"}',
        b'{"t": "Answer", "id": 1}',
        b'{"t": "Answer", "id": "1", "data": ""}',
        b'{"t": "Answer", "id": true, "data": ""}',
        b'{"t": "Answer", "id": 1, "data": "zz"}',
        b'{"t": "SessionKeys", "session_id": 1, "integrity": "md5", "k1": "", "aes_key": ""}',
    ],
)
def test_a_frame_that_is_not_a_worker_message_breaks_the_stream(body: bytes) -> None:
    with pytest.raises(WireError):
        FrameReader().feed(len(body).to_bytes(4, "big") + body)


def test_an_oversized_frame_breaks_the_stream_before_it_is_read() -> None:
    with pytest.raises(WireError, match="bytes"):
        FrameReader().feed((1 << 30).to_bytes(4, "big"))


@pytest.mark.parametrize(("suite", "integrity"), [(3, "sha1"), (17, "sha256")])
def test_the_close_session_datagram_is_a_valid_packet_of_its_session(
    suite: int, integrity: str
) -> None:
    k1 = hashlib.new(integrity, b"k1").digest()
    keys = SessionKeys(0xA1B2C3D4, integrity, k1, b"0123456789abcdef")  # type: ignore[arg-type]
    datagram = close_session_datagram(keys, sequence=42)
    _, _, body = split_rmcp(datagram)
    frame = decode_v20(body)
    assert (frame.payload_type, frame.session_id, frame.sequence) == (
        PayloadType.IPMI,
        0xA1B2C3D4,
        42,
    )
    assert frame.authenticated and frame.encrypted
    cipher = crypto.SUITES[suite]
    covered, code = split_integrity_trailer(body, frame, cipher.code_length)
    assert code == crypto.auth_code(cipher, k1, covered)
    request = decode_request(crypto.decrypt_payload(keys.aes_key, frame.payload))
    assert (request.netfn, request.command) == (0x06, 0x3C)
    assert request.data == (0xA1B2C3D4).to_bytes(4, "little")
