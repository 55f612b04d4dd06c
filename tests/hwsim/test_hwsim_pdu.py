"""hwsim per-channel faults and the PDU outlet, driven over real sockets by nodefence's own
power backends (IPMI over UDP, Redfish over HTTPS) as witnesses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from nodefence.agent.config.inventory_file import Inventory, load_inventory
from nodefence.backends.base import PowerBackend, PowerState
from nodefence.backends.errors import BmcAuthFailed, BmcProtocolError, BmcUnreachable, FenceError
from nodefence.backends.registry import build_backend
from nodefence.hwsim.bmcs import BmcFleet
from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.machine import Faults, SimMachine
from tests.support.bmcs import running_bmcs


@dataclass
class PduFleet:
    """Two nodes with IPMI + Redfish BMCs; node-2 is also fed by a PDU outlet."""

    fleet: Fleet
    bmcs: BmcFleet
    inventory: Inventory


@pytest_asyncio.fixture
async def pdu_fleet(tmp_path: Path) -> AsyncIterator[PduFleet]:
    fleet = Fleet.of_size(2)
    async with running_bmcs(fleet, tmp_path, power_timeout=1.0, pdus=("node-2",)) as bmcs:
        path = bmcs.write_inventory(tmp_path / "inventory.yaml")
        text = path.read_text().replace("timeout: 2\n", "timeout: 0.5\n", 1)
        path.write_text(text)
        yield PduFleet(fleet, bmcs, load_inventory(path, env={}))


async def read(fleet: PduFleet, node: str, device: str) -> PowerState:
    """The power state `device` of `node` reports, through a fresh backend."""
    backend = backend_of(fleet, node, device)
    try:
        return await backend.power_state()
    finally:
        await backend.close()


def backend_of(fleet: PduFleet, node: str, device: str) -> PowerBackend:
    spec = next(d for d in fleet.inventory.node(node).devices() if d.name == device)
    return build_backend(node, spec)


async def read_error(fleet: PduFleet, node: str, device: str) -> FenceError:
    with pytest.raises(FenceError) as caught:
        await read(fleet, node, device)
    return caught.value


async def switch(fleet: PduFleet, node: str, device: str, on: bool) -> None:
    backend = backend_of(fleet, node, device)
    try:
        await (backend.power_on() if on else backend.power_off())
    finally:
        await backend.close()


# ---- per-channel faults ---------------------------------------------------------------------


async def test_redfish_answering_errors_leaves_ipmi_reading_the_power(pdu_fleet: PduFleet) -> None:
    machine = pdu_fleet.fleet["node-1"]
    machine.cut_power()
    machine.set_channel_faults("redfish", errors=True)
    assert await read(pdu_fleet, "node-1", "ipmi") is PowerState.OFF
    err = await read_error(pdu_fleet, "node-1", "redfish")
    assert isinstance(err, BmcProtocolError) and "500" in str(err)
    machine.clear_channel_faults("redfish")
    assert await read(pdu_fleet, "node-1", "redfish") is PowerState.OFF


async def test_ipmi_answering_errors_leaves_redfish_reading_the_power(pdu_fleet: PduFleet) -> None:
    machine = pdu_fleet.fleet["node-1"]
    machine.set_channel_faults("ipmi", errors=True)
    assert await read(pdu_fleet, "node-1", "redfish") is PowerState.ON
    err = await read_error(pdu_fleet, "node-1", "ipmi")
    assert isinstance(err, BmcProtocolError) and "0xff" in str(err).lower()
    with pytest.raises(BmcProtocolError):
        await switch(pdu_fleet, "node-1", "ipmi", on=False)
    assert machine.power_state() == "on"  # an errored request changed nothing


async def test_a_channel_refusing_credentials_does_not_lock_the_other_out(
    pdu_fleet: PduFleet,
) -> None:
    pdu_fleet.fleet["node-1"].set_channel_faults("redfish", wrong_credentials=True)
    assert isinstance(await read_error(pdu_fleet, "node-1", "redfish"), BmcAuthFailed)
    assert await read(pdu_fleet, "node-1", "ipmi") is PowerState.ON
    assert pdu_fleet.fleet["node-2"].faults_of("redfish") == Faults()  # other machines: healthy


def test_channel_faults_add_to_the_machine_faults_and_power_faults_stay_machine_wide() -> None:
    m = SimMachine("m", "u", faults=Faults(slow=0.5))
    m.set_channel_faults("ipmi", slow=0.2, errors=True)
    assert m.faults_of("ipmi") == Faults(slow=0.5, errors=True)
    assert m.faults_of("redfish") == Faults(slow=0.5)
    with pytest.raises(ValueError, match="off_delay"):
        m.set_channel_faults("ipmi", off_delay=1.0)
    m.set_channel_faults("redfish", fail_first=1)
    assert m.consume_failure("redfish") and not m.consume_failure("redfish")
    assert not m.consume_failure("ipmi")
    m.clear_channel_faults()
    assert m.faults_of("ipmi") == Faults(slow=0.5)


async def test_a_lying_channel_reads_off_and_ignores_the_power_off_while_the_other_tells(
    pdu_fleet: PduFleet,
) -> None:
    machine = pdu_fleet.fleet["node-1"]
    machine.set_channel_faults("ipmi", reads_off=True, ignore_off=True)
    await switch(pdu_fleet, "node-1", "ipmi", on=False)  # acknowledged
    assert await read(pdu_fleet, "node-1", "ipmi") is PowerState.OFF
    assert machine.power_state() == "on"
    assert await read(pdu_fleet, "node-1", "redfish") is PowerState.ON
    assert machine.off_requests_by_channel() == {"ipmi": 1}  # the request did reach it


async def test_the_off_request_hook_hears_each_power_off_before_it_acts(
    pdu_fleet: PduFleet,
) -> None:
    machine, outlet = pdu_fleet.fleet["node-2"], pdu_fleet.bmcs.outlets["node-2"]
    heard: list[tuple[str, str]] = []
    machine.off_request_hook = lambda channel: heard.append((channel, machine.power_state()))
    outlet.off_request_hook = lambda channel: heard.append((channel, outlet.power_state()))
    await switch(pdu_fleet, "node-2", "redfish", on=False)
    await switch(pdu_fleet, "node-2", "pdu", on=False)
    assert heard == [("redfish", "on"), ("pdu", "on")]  # each heard while still on


# ---- the PDU outlet -------------------------------------------------------------------------


async def test_the_hosts_bmc_turning_it_off_leaves_the_outlet_on(pdu_fleet: PduFleet) -> None:
    await switch(pdu_fleet, "node-2", "ipmi", on=False)
    assert pdu_fleet.fleet["node-2"].power_state() == "off"
    assert await read(pdu_fleet, "node-2", "redfish") is PowerState.OFF
    assert await read(pdu_fleet, "node-2", "pdu") is PowerState.ON  # the outlet still feeds it


async def test_the_outlet_off_cuts_the_host_and_its_bmc_and_on_gives_the_bmc_back(
    pdu_fleet: PduFleet,
) -> None:
    host = pdu_fleet.fleet["node-2"]
    await switch(pdu_fleet, "node-2", "pdu", on=False)
    assert host.power_state() == "off"
    assert await read(pdu_fleet, "node-2", "pdu") is PowerState.OFF
    for device in ("ipmi", "redfish"):
        err = await read_error(pdu_fleet, "node-2", device)
        assert isinstance(err, BmcUnreachable), (device, err)
    host.request_on()  # no supply: nothing happens
    assert host.power_state() == "off"
    await switch(pdu_fleet, "node-2", "pdu", on=True)
    # The BMC answers again; the host stays off until something powers it on.
    assert await read(pdu_fleet, "node-2", "ipmi") is PowerState.OFF
    assert host.power_state() == "off"
    await switch(pdu_fleet, "node-2", "redfish", on=True)
    assert host.power_state() == "on"
    assert pdu_fleet.fleet["node-1"].power_state() == "on"  # another node's outlet: none


async def test_the_pdu_node_inventory_has_the_outlet_after_its_bmc(pdu_fleet: PduFleet) -> None:
    node = pdu_fleet.inventory.node("node-2")
    assert [[d.name for d in lv.devices] for lv in node.levels] == [["ipmi"], ["redfish"], ["pdu"]]
    # The agent reads the outlet as a view of other power than the BMC's.
    assert node.channel_groups is not None
    assert [sorted(g) for g in node.channel_groups] == [["ipmi", "redfish"], ["pdu"]]
    other = pdu_fleet.inventory.node("node-1")
    assert [d.name for d in other.devices()] == ["ipmi", "redfish"]
    assert other.channel_groups is None
    without = pdu_fleet.bmcs.inventory("bmc-password", channel_groups=False)
    assert "verify_all_channels" not in without["nodes"]["node-2"]
