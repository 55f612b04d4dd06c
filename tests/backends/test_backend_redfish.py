"""RedfishBackend against the hwsim Redfish emulator over real HTTP(S) on loopback."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from nodefence.agent.config.inventory_file import FencingPolicy, Level, NodeInventory
from nodefence.agent.fencing.executor import all_unreachable
from nodefence.agent.fencing.power_executor import PowerFencer
from nodefence.agent.fencing.topology import PowerRequest
from nodefence.backends.base import PowerState
from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.redfish.backend import RedfishBackend
from nodefence.backends.redfish.model import choose_reset_type, power_state_from
from nodefence.backends.spec import DeviceTimeouts, RedfishDevice, Secret
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import RawAnswer, RedfishBmc
from nodefence.hwsim.tls import TlsFiles, make_tls
from tests.support.bmcs import StartBmc, redfish_bmcs
from tests.support.clock import FakeClock
from tests.support.wait import eventually

USER, PASSWORD = "admin", "Pa55-w0rd-never-shown"
SYSTEMS = "/redfish/v1/Systems"

MakeBackend = Callable[..., RedfishBackend]


def machine(name: str = "node-1", clock: Callable[[], float] = time.monotonic) -> SimMachine:
    return SimMachine(name, f"{name}-uuid", clock=clock)


@pytest.fixture(scope="module")
def stranger_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A second, unrelated CA: its certificates are "from an unknown CA" to the first."""
    return make_tls(tmp_path_factory.mktemp("stranger"))


@pytest.fixture
async def start_bmc() -> AsyncIterator[StartBmc]:
    async with redfish_bmcs(USER, PASSWORD, machine) as start:
        yield start


@pytest.fixture
async def backend_for() -> AsyncIterator[MakeBackend]:
    made: list[RedfishBackend] = []

    def make(bmc: RedfishBmc, timeout: float = 3.0, **fields: Any) -> RedfishBackend:
        fields.setdefault("scheme", "https" if bmc.tls else "http")
        if bmc.tls is not None:
            fields.setdefault("ca_file", str(bmc.tls.ca_cert))
        fields.setdefault("password", Secret(PASSWORD))
        spec = RedfishDevice(
            name="bmc-a",
            address=bmc.host,
            port=bmc.port,
            username=USER,
            timeouts=DeviceTimeouts(timeout=timeout),
            **fields,
        )
        backend = RedfishBackend("node-1", spec)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


# --- happy paths ---------------------------------------------------------------------------


async def test_https_verified_with_the_bmc_ca_reads_state_powers_off_and_on(
    start_bmc: StartBmc, backend_for: MakeBackend, tls: TlsFiles
) -> None:
    m = machine()
    backend = backend_for(await start_bmc([m], tls=tls))
    assert await backend.power_state() is PowerState.ON
    await backend.power_off()
    assert m.power == "off"
    assert await backend.power_state() is PowerState.OFF
    await backend.power_on()
    assert await backend.power_state() is PowerState.ON


async def test_plain_http_service_works_the_same(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    backend = backend_for(await start_bmc([m]))
    await backend.power_off()
    assert await backend.power_state() is PowerState.OFF


async def test_check_reports_a_healthy_device(
    start_bmc: StartBmc, backend_for: MakeBackend, tls: TlsFiles
) -> None:
    result = await backend_for(await start_bmc(tls=tls)).check()
    assert (result.reachable, result.authenticated, result.power, result.reset_supported) == (
        True,
        True,
        PowerState.ON,
        True,
    )
    assert "ForceOff" in result.detail


# --- authentication ------------------------------------------------------------------------


async def test_one_session_serves_every_call_and_close_logs_it_out(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    bmc = await start_bmc()
    backend = backend_for(bmc, auth="session")
    for _ in range(3):
        await backend.power_state()
    assert bmc.service.active_sessions() == 1
    await backend.close()
    assert bmc.service.active_sessions() == 0
    await backend.close()  # safe twice


async def test_an_expired_session_is_replaced_by_one_fresh_login(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    bmc = await start_bmc()
    backend = backend_for(bmc, auth="session")
    await backend.power_state()
    bmc.service.drop_sessions()
    assert await backend.power_state() is PowerState.ON
    assert bmc.service.active_sessions() == 1


async def test_auto_auth_falls_back_to_basic_when_the_service_has_no_sessions(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    bmc = await start_bmc([m], sessions=False)
    backend = backend_for(bmc, auth="auto")
    await backend.power_off()
    assert m.power == "off"
    assert bmc.service.active_sessions() == 0


async def test_auto_auth_falls_back_to_basic_when_root_and_session_login_answer_401(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    # A BMC that protects its service root: auto cannot see whether it has sessions, tries
    # one, is refused (401, no credentials reach a missing SessionService), and must then
    # try Basic before calling correct credentials refused.
    m = machine()
    bmc = await start_bmc([m], sessions=False, protect_root=True)
    backend = backend_for(bmc, auth="auto")
    result = await backend.check()
    assert (result.reachable, result.authenticated) == (True, True), result.detail
    assert "basic auth" in result.detail
    await backend.power_off()
    assert m.power == "off"


async def test_auto_auth_on_a_protected_root_still_refuses_a_wrong_password(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    bmc = await start_bmc(sessions=False, protect_root=True)
    backend = backend_for(bmc, auth="auto", password=Secret("wrong-password"))
    with pytest.raises(BmcAuthFailed):
        await backend.power_state()


async def test_session_auth_on_a_service_without_sessions_is_unsupported(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    backend = backend_for(await start_bmc(sessions=False), auth="session")
    with pytest.raises(BmcUnsupported, match="SessionService"):
        await backend.power_state()


async def test_basic_auth_refused_by_the_service_is_an_auth_failure(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    backend = backend_for(await start_bmc(basic_auth=False), auth="basic")
    with pytest.raises(BmcAuthFailed):
        await backend.power_state()


@pytest.mark.parametrize("auth", ["session", "basic", "auto"])
async def test_a_wrong_password_is_an_auth_failure_at_once(
    start_bmc: StartBmc, backend_for: MakeBackend, auth: str
) -> None:
    backend = backend_for(await start_bmc(), auth=auth, password=Secret("wrong-password"))
    started = time.monotonic()
    with pytest.raises(BmcAuthFailed) as caught:
        await backend.power_state()
    assert time.monotonic() - started < 2
    assert (caught.value.node, caught.value.device) == ("node-1", "bmc-a")
    assert "wrong-password" not in str(caught.value)


async def test_the_wrong_credentials_fault_refuses_even_the_right_password(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.set_faults(wrong_credentials=True)
    backend = backend_for(await start_bmc([m]))
    with pytest.raises(BmcAuthFailed):
        await backend.power_off()
    result = await backend.check()
    assert (result.reachable, result.authenticated) == (True, False)
    assert m.power == "on"


# --- TLS -----------------------------------------------------------------------------------


TlsCase = Callable[[StartBmc, MakeBackend, TlsFiles, TlsFiles], Awaitable[RedfishBackend]]


async def _unknown_ca(
    start: StartBmc, make: MakeBackend, tls: TlsFiles, stranger: TlsFiles
) -> RedfishBackend:
    return make(await start(tls=stranger), ca_file=str(tls.ca_cert))


async def _system_cas(
    start: StartBmc, make: MakeBackend, tls: TlsFiles, stranger: TlsFiles
) -> RedfishBackend:
    return make(await start(tls=tls), ca_file=None)


async def _another_address(
    start: StartBmc, make: MakeBackend, tls: TlsFiles, stranger: TlsFiles
) -> RedfishBackend:
    # The test certificate names 127.0.0.1, ::1 and localhost; 127.0.0.2 is loopback too.
    return make(await start(tls=tls, host="127.0.0.2"))


async def _plain_http_port(
    start: StartBmc, make: MakeBackend, tls: TlsFiles, stranger: TlsFiles
) -> RedfishBackend:
    return make(await start(), scheme="https", ca_file=str(tls.ca_cert))


TLS_FAILURES: list[tuple[str, TlsCase, str]] = [
    ("certificate from an unknown CA", _unknown_ca, r"not trusted by ca_file .*ssl_insecure"),
    ("private CA, no ca_file", _system_cas, r"not trusted by the system CAs.*ca_file"),
    ("certificate for another address", _another_address, r"is not for 127\.0\.0\.2.*ssl_insecure"),
    ("https to a plain-HTTP port", _plain_http_port, r"TLS handshake .*scheme and port"),
]


@pytest.mark.parametrize(
    ("case", "remedy"), [(c, r) for _, c, r in TLS_FAILURES], ids=[i for i, _, _ in TLS_FAILURES]
)
async def test_a_tls_failure_is_its_own_error_and_never_unreachable(
    start_bmc: StartBmc,
    backend_for: MakeBackend,
    tls: TlsFiles,
    stranger_tls: TlsFiles,
    case: TlsCase,
    remedy: str,
) -> None:
    # The BMC answered (it spoke TLS, or plain HTTP): it is not "no answer at all", so it must
    # never count towards the self-fence rule's "every BMC unreachable".
    backend = await case(start_bmc, backend_for, tls, stranger_tls)
    for call in (backend.power_state, backend.power_off):
        with pytest.raises(FenceError) as caught:
            await call()
        assert not isinstance(caught.value, BmcUnreachable), caught.value
        assert caught.value.reason == "tls"
        assert re.search(remedy, str(caught.value)), str(caught.value)
        assert "node=node-1 device=bmc-a" in str(caught.value)
    result = await backend.check()
    assert result.reachable and not result.authenticated
    assert result.power is PowerState.UNKNOWN and "TLS" in result.detail


async def test_a_certificate_from_an_unknown_ca_never_gets_the_credentials_or_the_power_off(
    start_bmc: StartBmc, backend_for: MakeBackend, stranger_tls: TlsFiles, tls: TlsFiles
) -> None:
    m = machine()
    bmc = await start_bmc([m], tls=stranger_tls)
    backend = backend_for(bmc, ca_file=str(tls.ca_cert))
    with pytest.raises(FenceError):
        await backend.power_off()
    assert m.power == "on"
    assert bmc.service.active_sessions() == 0  # the credentials never left the client


async def test_a_walk_against_a_bmc_failing_tls_is_not_all_unreachable(
    start_bmc: StartBmc, stranger_tls: TlsFiles, tls: TlsFiles
) -> None:
    # The self-fence rule (watchdog proof) needs every device of the node unreachable.
    bmc = await start_bmc(tls=stranger_tls)
    device = RedfishDevice(
        name="bmc-a",
        address=bmc.host,
        port=bmc.port,
        username=USER,
        password=Secret(PASSWORD),
        ca_file=str(tls.ca_cert),
        timeouts=DeviceTimeouts(timeout=3.0, power_timeout=1.0, poll_interval=0.1),
    )
    node = NodeInventory("node-1", (Level((device,)),))
    outcome = await PowerFencer(node, FencingPolicy(attempts=1)).run(PowerRequest.OFF)
    assert not outcome.off_proven
    assert [s.result for s in outcome.steps] == ["tls"]
    assert not all_unreachable(node, outcome)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_ssl_insecure_accepts_a_certificate_from_an_unknown_ca(
    start_bmc: StartBmc, backend_for: MakeBackend, stranger_tls: TlsFiles, tls: TlsFiles
) -> None:
    bmc = await start_bmc(tls=stranger_tls)
    backend = backend_for(bmc, ca_file=str(tls.ca_cert), ssl_insecure=True)
    assert await backend.power_state() is PowerState.ON


# --- reachability and deadlines ------------------------------------------------------------


async def test_a_silent_bmc_is_unreachable_within_the_configured_timeout(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.set_faults(unreachable=True)
    backend = backend_for(await start_bmc([m]), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BmcUnreachable):
        await backend.power_off()
    assert time.monotonic() - started < 2


async def test_a_closed_port_is_unreachable_at_once(backend_for: MakeBackend) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    placeholder = RedfishBmc([machine()], USER, PASSWORD, port=port)  # never started
    backend = backend_for(placeholder, timeout=3.0)
    started = time.monotonic()
    with pytest.raises(BmcUnreachable, match="cannot reach"):
        await backend.power_state()
    assert time.monotonic() - started < 1
    result = await backend.check()
    assert (result.reachable, result.power) == (False, PowerState.UNKNOWN)


async def test_a_bmc_that_answers_then_stalls_is_a_timeout(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    # Service-level URIs follow the first machine's faults, the system its own: login and
    # discovery get answers, the system read does not.
    slow = machine("node-2")
    slow.set_faults(slow=3.0)
    bmc = await start_bmc([machine("node-1"), slow])
    backend = backend_for(bmc, timeout=1.0, system_id="node-2")
    started = time.monotonic()
    with pytest.raises(BmcTimeout):
        await backend.power_state()
    assert time.monotonic() - started < 2


async def test_a_bmc_that_sends_headers_then_stalls_in_its_first_answer_is_a_timeout(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    # The status line and headers came: the BMC answered, so it is not "unreachable" (which
    # would let it be skipped in a proof of Off and count towards a watchdog self-fence).
    bmc = await start_bmc()
    body = b'{"@odata.id": "/redfish/v1/", "Systems": {"@odata.id": "/redfish/v1/Systems"}}'
    bmc.tamper = lambda method, path: RawAnswer(
        body=[body[:10], body[10:]], content_length=len(body), drip=5.0
    )
    backend = backend_for(bmc, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BmcTimeout) as caught:
        await backend.power_state()
    assert not isinstance(caught.value, BmcUnreachable)
    assert time.monotonic() - started < 2


async def test_a_call_cut_off_by_its_deadline_leaves_no_session_behind(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    bmc = await start_bmc([m])
    # 2 s: the call after the fault is a fresh login and a read, which a loaded machine has
    # taken more than 1 s for (BmcTimeout in a full run at load 6).
    backend = backend_for(bmc, timeout=2.0, auth="session")
    await backend.power_state()
    m.set_faults(unreachable=True)
    with pytest.raises(BmcUnreachable):
        await backend.power_state()
    m.set_faults(unreachable=False)
    assert await backend.power_state() is PowerState.ON
    # The abandoned client logs its session out once its thread is released.
    await eventually("one session open", lambda: bmc.service.active_sessions() == 1)


async def test_a_failing_bmc_fails_the_first_call_with_a_typed_error_and_a_later_one_succeeds(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.set_faults(fail_first=1)
    backend = backend_for(await start_bmc([m]))
    with pytest.raises(BmcProtocolError, match="503"):
        await backend.power_off()
    await backend.power_off()
    assert m.power == "off"


# --- power semantics ---------------------------------------------------------------------


async def test_a_stuck_on_bmc_acknowledges_power_off_but_keeps_reading_on(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.set_faults(ignore_off=True)
    backend = backend_for(await start_bmc([m]))
    await backend.power_off()
    assert await backend.power_state() is PowerState.ON


async def test_a_delayed_power_off_reads_off_only_after_the_delay(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    clock = FakeClock(1000.0)
    m = machine(clock=clock)
    m.set_faults(off_delay=5.0)
    backend = backend_for(await start_bmc([m]))
    await backend.power_off()
    assert await backend.power_state() is PowerState.ON
    clock.now += 5.0
    assert await backend.power_state() is PowerState.OFF


async def test_without_force_off_power_off_is_unsupported_never_graceful(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    graceful_only = ("On", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PushPowerButton")
    backend = backend_for(await start_bmc([m], reset_types=graceful_only))
    with pytest.raises(BmcUnsupported, match=r"no hard power-off.*GracefulShutdown"):
        await backend.power_off()
    assert (m.power, m.power_changes) == ("on", 0)
    result = await backend.check()
    assert (result.authenticated, result.reset_supported) == (True, False)


async def test_force_off_is_sent_when_the_service_does_not_advertise_reset_types(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    backend = backend_for(await start_bmc([m], reset_types=None))
    await backend.power_off()
    assert m.power == "off"


@pytest.mark.parametrize(
    ("reset_types", "works"),
    [(("On", "ForceOff"), True), (("On", "GracefulShutdown"), False)],
)
async def test_reset_types_published_through_action_info_are_honoured(
    start_bmc: StartBmc, backend_for: MakeBackend, reset_types: tuple[str, ...], works: bool
) -> None:
    m = machine()
    bmc = await start_bmc([m], reset_types=reset_types, reset_types_via_action_info=True)
    backend = backend_for(bmc)
    if works:
        await backend.power_off()
    else:
        with pytest.raises(BmcUnsupported):
            await backend.power_off()
    assert m.power == ("off" if works else "on")


async def test_power_on_uses_force_on_when_on_is_not_offered(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.cut_power()
    backend = backend_for(await start_bmc([m], reset_types=("ForceOn", "ForceOff")))
    await backend.power_on()
    assert m.power == "on"


async def test_a_reset_refused_because_the_state_is_already_reached_counts_as_done(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    m = machine()
    m.cut_power()
    backend = backend_for(await start_bmc([m], reject_noop_reset=True))
    await backend.power_off()  # the BMC answers 409; the system reads Off: done
    assert m.power == "off"


# --- finding the system --------------------------------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [
        {"system_id": "node-2"},
        {"system_name": "node-2"},
        {"system_uuid": "NODE-2-UUID"},
        {"systems_uri": f"{SYSTEMS}/node-2"},
    ],
)
async def test_the_system_is_found_by_id_name_uuid_or_explicit_path(
    start_bmc: StartBmc, backend_for: MakeBackend, selector: dict[str, str]
) -> None:
    one, two = machine("node-1"), machine("node-2")
    backend = backend_for(await start_bmc([one, two]), **selector)
    await backend.power_off()
    assert (one.power, two.power) == ("on", "off")


async def test_several_systems_and_no_selector_is_unsupported_and_lists_them(
    start_bmc: StartBmc, backend_for: MakeBackend
) -> None:
    backend = backend_for(await start_bmc([machine("node-1"), machine("node-2")]))
    with pytest.raises(BmcUnsupported, match="2 systems") as caught:
        await backend.power_off()
    assert "Id=node-1" in str(caught.value)
    assert "Id=node-2" in str(caught.value)


@pytest.mark.parametrize(
    "selector", [{"system_id": "node-9"}, {"systems_uri": f"{SYSTEMS}/node-9"}]
)
async def test_a_system_that_does_not_exist_is_unsupported(
    start_bmc: StartBmc, backend_for: MakeBackend, selector: dict[str, str]
) -> None:
    backend = backend_for(await start_bmc([machine("node-1")]), **selector)
    with pytest.raises(BmcUnsupported, match="node-9"):
        await backend.power_state()


# --- secrets -------------------------------------------------------------------------------


async def test_the_password_never_appears_in_errors_or_logs(
    start_bmc: StartBmc,
    backend_for: MakeBackend,
    stranger_tls: TlsFiles,
    tls: TlsFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = machine()
    refused.set_faults(wrong_credentials=True)
    attempts = [
        backend_for(await start_bmc([refused])),
        backend_for(await start_bmc(tls=stranger_tls), ca_file=str(tls.ca_cert)),
        backend_for(await start_bmc([machine("a"), machine("b")])),
        backend_for(await start_bmc(basic_auth=False), auth="basic"),
    ]
    texts: list[str] = []
    for backend in attempts:
        with pytest.raises(FenceError) as caught:
            await backend.power_off()
        texts.append(str(caught.value))
        texts.append((await backend.check()).detail)
    texts.append(caplog.text)
    assert all(PASSWORD not in text for text in texts)


# --- pure decisions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("On", PowerState.ON),
        ("PoweringOn", PowerState.ON),
        ("PoweringOff", PowerState.ON),
        ("Off", PowerState.OFF),
        ("Paused", PowerState.UNKNOWN),
        (None, PowerState.UNKNOWN),
        ("off", PowerState.UNKNOWN),
    ],
)
def test_only_a_redfish_off_reads_as_off(value: object, state: PowerState) -> None:
    assert power_state_from(value) is state


@pytest.mark.parametrize(
    ("allowed", "preferred", "chosen"),
    [
        (None, ("ForceOff",), "ForceOff"),
        (["On", "ForceOff", "GracefulShutdown"], ("ForceOff",), "ForceOff"),
        (["On", "GracefulShutdown", "PushPowerButton", "PowerCycle"], ("ForceOff",), None),
        ([], ("ForceOff",), None),
        (["ForceOn", "ForceOff"], ("On", "ForceOn"), "ForceOn"),
        (["On", "ForceOn"], ("On", "ForceOn"), "On"),
    ],
)
def test_reset_type_choice(
    allowed: list[str] | None, preferred: tuple[str, ...], chosen: str | None
) -> None:
    assert choose_reset_type(allowed, preferred) == chosen
