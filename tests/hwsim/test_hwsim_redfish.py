"""The Redfish emulator seen from the wire: plain HTTP requests, no nodefence client code."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests

from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import RedfishBmc
from nodefence.hwsim.tls import TlsFiles, make_tls
from tests.support.bmcs import StartBmc, redfish_bmcs

USER, PASSWORD = "admin", "s3cret-pw"
SYSTEMS = "/redfish/v1/Systems"
SESSIONS = "/redfish/v1/SessionService/Sessions"


def machine(name: str = "node-1", **faults: Any) -> SimMachine:
    m = SimMachine(name, f"{name}-uuid")
    if faults:
        m.set_faults(**faults)
    return m


async def http(method: str, url: str, **kwargs: Any) -> requests.Response:
    """A blocking `requests` call, off the event loop."""
    kwargs.setdefault("timeout", 5)
    return await asyncio.to_thread(requests.request, method, url, **kwargs)


@pytest.fixture
async def start_bmc() -> AsyncIterator[StartBmc]:
    async with redfish_bmcs(USER, PASSWORD, machine) as start:
        yield start


async def test_service_root_is_public_and_links_systems_and_sessions(start_bmc: StartBmc) -> None:
    bmc = await start_bmc()
    assert (await http("GET", bmc.url + "/redfish")).json() == {"v1": "/redfish/v1/"}
    resp = await http("GET", bmc.url + "/redfish/v1/")
    root = resp.json()
    assert resp.status_code == 200
    assert resp.headers["OData-Version"] == "4.0"
    assert root["Systems"] == {"@odata.id": SYSTEMS}
    assert root["SessionService"] == {"@odata.id": "/redfish/v1/SessionService"}
    assert root["Links"]["Sessions"] == {"@odata.id": SESSIONS}


async def test_resources_without_credentials_get_401_with_a_redfish_error(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc()
    resp = await http("GET", bmc.url + SYSTEMS)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert resp.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("NoValidSession")


async def test_session_login_returns_201_with_token_and_location_and_delete_logs_out(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc()
    login = await http("POST", bmc.url + SESSIONS, json={"UserName": USER, "Password": PASSWORD})
    assert login.status_code == 201
    token, location = login.headers["X-Auth-Token"], login.headers["Location"]
    assert location.startswith(SESSIONS + "/")
    assert login.json()["@odata.id"] == location
    assert bmc.service.active_sessions() == 1

    systems = await http("GET", bmc.url + SYSTEMS, headers={"X-Auth-Token": token})
    assert systems.status_code == 200
    listed = await http("GET", bmc.url + SESSIONS, headers={"X-Auth-Token": token})
    assert listed.json()["Members"] == [{"@odata.id": location}]

    assert (await http("DELETE", bmc.url + location, headers={"X-Auth-Token": token})).ok
    assert bmc.service.active_sessions() == 0
    after = await http("GET", bmc.url + SYSTEMS, headers={"X-Auth-Token": token})
    assert after.status_code == 401


async def test_session_login_with_a_wrong_password_is_401(start_bmc: StartBmc) -> None:
    bmc = await start_bmc()
    resp = await http("POST", bmc.url + SESSIONS, json={"UserName": USER, "Password": "nope"})
    assert resp.status_code == 401
    assert "error" in resp.json()
    assert "X-Auth-Token" not in resp.headers


async def test_wrong_credentials_fault_refuses_the_right_password_too(start_bmc: StartBmc) -> None:
    bmc = await start_bmc([machine(wrong_credentials=True)])
    login = await http("POST", bmc.url + SESSIONS, json={"UserName": USER, "Password": PASSWORD})
    basic = await http("GET", bmc.url + SYSTEMS, auth=(USER, PASSWORD))
    assert (login.status_code, basic.status_code) == (401, 401)


async def test_basic_auth_is_accepted_unless_disabled(start_bmc: StartBmc) -> None:
    on = await start_bmc()
    off = await start_bmc(basic_auth=False)
    assert (await http("GET", on.url + SYSTEMS, auth=(USER, PASSWORD))).status_code == 200
    refused = await http("GET", off.url + SYSTEMS, auth=(USER, PASSWORD))
    assert refused.status_code == 401
    assert "WWW-Authenticate" not in refused.headers


async def test_without_sessions_the_root_has_no_session_service_and_login_fails(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc(sessions=False)
    root = (await http("GET", bmc.url + "/redfish/v1/")).json()
    assert "SessionService" not in root
    assert "Sessions" not in root["Links"]
    login = await http("POST", bmc.url + SESSIONS, json={"UserName": USER, "Password": PASSWORD})
    assert login.status_code == 401  # authentication comes before routing, as on real BMCs
    authed = await http("POST", bmc.url + SESSIONS, json={}, auth=(USER, PASSWORD))
    assert authed.status_code == 404


async def test_systems_collection_lists_every_machine_with_id_name_and_uuid(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc([machine("node-1"), machine("node-2")])
    collection = (await http("GET", bmc.url + SYSTEMS, auth=(USER, PASSWORD))).json()
    uris = [m["@odata.id"] for m in collection["Members"]]
    assert uris == [f"{SYSTEMS}/node-1", f"{SYSTEMS}/node-2"]
    assert collection["Members@odata.count"] == 2
    system = (await http("GET", bmc.url + uris[1], auth=(USER, PASSWORD))).json()
    assert (system["Id"], system["Name"], system["UUID"]) == ("node-2", "node-2", "node-2-uuid")
    assert system["PowerState"] == "On"
    reset = system["Actions"]["#ComputerSystem.Reset"]
    assert reset["target"] == f"{SYSTEMS}/node-2/Actions/ComputerSystem.Reset"
    assert "ForceOff" in reset["ResetType@Redfish.AllowableValues"]


async def test_reset_allowable_values_are_configurable_or_published_as_action_info(
    start_bmc: StartBmc,
) -> None:
    narrow = await start_bmc(reset_types=("On", "GracefulShutdown"))
    absent = await start_bmc(reset_types=None)
    info = await start_bmc(reset_types_via_action_info=True)

    async def reset_of(bmc: RedfishBmc) -> dict[str, Any]:
        doc = (await http("GET", bmc.url + f"{SYSTEMS}/node-1", auth=(USER, PASSWORD))).json()
        action: dict[str, Any] = doc["Actions"]["#ComputerSystem.Reset"]
        return action

    assert (await reset_of(narrow))["ResetType@Redfish.AllowableValues"] == [
        "On",
        "GracefulShutdown",
    ]
    assert "ResetType@Redfish.AllowableValues" not in await reset_of(absent)
    info_uri = (await reset_of(info))["@Redfish.ActionInfo"]
    params = (await http("GET", info.url + info_uri, auth=(USER, PASSWORD))).json()["Parameters"]
    assert params[0]["Name"] == "ResetType"
    assert "ForceOff" in params[0]["AllowableValues"]


async def test_force_off_and_on_drive_the_machine(start_bmc: StartBmc) -> None:
    m = machine()
    bmc = await start_bmc([m])
    target = bmc.url + f"{SYSTEMS}/node-1/Actions/ComputerSystem.Reset"
    off = await http("POST", target, json={"ResetType": "ForceOff"}, auth=(USER, PASSWORD))
    assert (off.status_code, m.power_state()) == (204, "off")
    on = await http("POST", target, json={"ResetType": "On"}, auth=(USER, PASSWORD))
    assert (on.status_code, m.power_state()) == (204, "on")


async def test_force_restart_powers_off_then_on(start_bmc: StartBmc) -> None:
    m = machine()
    bmc = await start_bmc([m])
    target = bmc.url + f"{SYSTEMS}/node-1/Actions/ComputerSystem.Reset"
    resp = await http("POST", target, json={"ResetType": "ForceRestart"}, auth=(USER, PASSWORD))
    assert resp.status_code == 204
    assert (m.power, m.power_changes) == ("on", 2)


@pytest.mark.parametrize(
    ("body", "message_id"),
    [
        ({"ResetType": "Nmi"}, "ActionParameterNotSupported"),
        ({"ResetType": "Explode"}, "ActionParameterNotSupported"),
        ({}, "ActionParameterMissing"),
        ("not json", "MalformedJSON"),
    ],
)
async def test_a_bad_reset_request_is_400_and_leaves_power_alone(
    start_bmc: StartBmc, body: object, message_id: str
) -> None:
    m = machine()
    bmc = await start_bmc([m])
    target = bmc.url + f"{SYSTEMS}/node-1/Actions/ComputerSystem.Reset"
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    resp = await http("POST", target, auth=(USER, PASSWORD), **kwargs)
    assert resp.status_code == 400
    assert resp.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith(message_id)
    assert (m.power, m.power_changes) == ("on", 0)


async def test_a_reset_to_the_current_state_is_409_when_configured_like_some_vendors(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc(reject_noop_reset=True)
    target = bmc.url + f"{SYSTEMS}/node-1/Actions/ComputerSystem.Reset"
    resp = await http("POST", target, json={"ResetType": "On"}, auth=(USER, PASSWORD))
    assert resp.status_code == 409


async def test_unknown_resources_are_404_and_wrong_methods_are_405(start_bmc: StartBmc) -> None:
    bmc = await start_bmc()
    missing = await http("GET", bmc.url + f"{SYSTEMS}/nope", auth=(USER, PASSWORD))
    assert missing.status_code == 404
    assert "error" in missing.json()
    wrong = await http("DELETE", bmc.url + f"{SYSTEMS}/node-1", auth=(USER, PASSWORD))
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    reset_get = await http(
        "GET", bmc.url + f"{SYSTEMS}/node-1/Actions/ComputerSystem.Reset", auth=(USER, PASSWORD)
    )
    assert reset_get.status_code == 405


async def test_fail_first_answers_503_then_recovers(start_bmc: StartBmc) -> None:
    bmc = await start_bmc([machine(fail_first=2)])
    codes = [(await http("GET", bmc.url + "/redfish/v1/")).status_code for _ in range(3)]
    assert codes == [503, 503, 200]


async def test_slow_fault_delays_every_answer(start_bmc: StartBmc) -> None:
    bmc = await start_bmc([machine(slow=0.3)])
    started = time.monotonic()
    resp = await http("GET", bmc.url + "/redfish/v1/")
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_unreachable_fault_holds_the_connection_silent_and_stop_still_returns(
    start_bmc: StartBmc,
) -> None:
    bmc = await start_bmc([machine(unreachable=True)])
    with pytest.raises(requests.exceptions.ReadTimeout):
        await http("GET", bmc.url + "/redfish/v1/", timeout=0.5)
    # A second client still waiting when the BMC stops must not hold stop() up.
    waiting = asyncio.create_task(http("GET", bmc.url + "/redfish/v1/", timeout=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await bmc.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(requests.exceptions.ConnectionError):
        await waiting


async def test_the_fault_of_the_addressed_system_applies(start_bmc: StartBmc) -> None:
    bmc = await start_bmc([machine("node-1"), machine("node-2", unreachable=True)])
    healthy = await http("GET", bmc.url + f"{SYSTEMS}/node-1", auth=(USER, PASSWORD))
    assert healthy.status_code == 200
    with pytest.raises(requests.exceptions.ReadTimeout):
        await http("GET", bmc.url + f"{SYSTEMS}/node-2", auth=(USER, PASSWORD), timeout=0.5)


async def test_malformed_requests_never_kill_the_server(start_bmc: StartBmc) -> None:
    bmc = await start_bmc()

    def send_raw(data: bytes) -> bytes:
        """Send `data`, read one answer (headers, then Content-Length bytes)."""
        with socket.create_connection(("127.0.0.1", bmc.port), timeout=5) as sock:
            sock.sendall(data)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length and (chunk := sock.recv(4096)):
                body += chunk
            return head + b"\r\n\r\n" + body

    for garbage in (
        b"\x00\xff\x16\x03garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /redfish/v1/SessionService/Sessions HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
        b"POST /redfish/v1/SessionService/Sessions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
    ):
        answer = await asyncio.to_thread(send_raw, garbage)
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 405 ")), answer
        assert b'"error"' in answer
    # A client that connects and leaves without a word.
    socket.create_connection(("127.0.0.1", bmc.port)).close()
    assert (await http("GET", bmc.url + "/redfish/v1/")).status_code == 200


async def test_https_presents_a_certificate_for_127_0_0_1_signed_by_the_test_ca(
    start_bmc: StartBmc, tls: TlsFiles, tmp_path: Path
) -> None:
    bmc = await start_bmc(tls=tls)
    assert bmc.url.startswith("https://127.0.0.1:")
    resp = await http("GET", bmc.url + "/redfish/v1/", verify=str(tls.ca_cert))
    assert resp.status_code == 200
    stranger = make_tls(tmp_path / "other")
    with pytest.raises(requests.exceptions.SSLError):
        await http("GET", bmc.url + "/redfish/v1/", verify=str(stranger.ca_cert))


async def test_many_emulators_run_in_one_process_and_stop_cleanly() -> None:
    bmcs = [RedfishBmc([machine(f"node-{i}")], USER, PASSWORD) for i in range(8)]
    for bmc in bmcs:
        await bmc.start()
    assert len({bmc.port for bmc in bmcs}) == len(bmcs)
    answers = await asyncio.gather(*(http("GET", b.url + "/redfish/v1/") for b in bmcs))
    assert all(a.status_code == 200 for a in answers)
    for bmc in bmcs:
        await bmc.stop()
        await bmc.stop()  # idempotent
    with pytest.raises(requests.exceptions.ConnectionError):
        await http("GET", bmcs[0].url + "/redfish/v1/", timeout=1)
