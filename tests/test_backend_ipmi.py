"""The IPMI backend (pyghmi) against our RMCP+ emulator over real UDP on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from backends.base import PowerState
from backends.errors import BmcAuthFailed, BmcProtocolError, BmcUnreachable, BmcUnsupported
from backends.ipmi import IpmiBackend, classify_ipmi_error
from backends.spec import DeviceTimeouts, IpmiDevice, Secret
from hwsim.ipmi import IpmiBmc
from hwsim.machine import SimMachine

PASSWORD = "ipmi-Pa55"


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


def backend(
    port: int,
    *,
    password: str = PASSWORD,
    cipher: int = 3,
    timeout: float = 2.0,
    username: str = "admin",
    privilege: str = "administrator",
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
    return IpmiBackend("node-1", spec)


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
    with pytest.raises(BmcAuthFailed) as info:
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
        ("Node busy (completion code 0xc0)", BmcProtocolError),
    ],
)
def test_pyghmi_messages_map_to_typed_errors(message: str, kind: type) -> None:
    err = classify_ipmi_error(message, node="n", device="d", during_login=True)
    assert isinstance(err, kind)
