"""Emulated BMCs in a test: started on free loopback ports, stopped even on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nodefence.hwsim.bmcs import BmcFleet
from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import RedfishBmc

StartBmc = Callable[..., Awaitable[RedfishBmc]]


@asynccontextmanager
async def running_bmcs(fleet: Fleet, workdir: Path, **settings: Any) -> AsyncIterator[BmcFleet]:
    """`BmcFleet(fleet, workdir, **settings)` started (an IPMI and a Redfish BMC per node)."""
    bmcs = BmcFleet(fleet, workdir, **settings)
    await bmcs.start()
    try:
        yield bmcs
    finally:
        await bmcs.stop()


@asynccontextmanager
async def redfish_bmcs(
    user: str, password: str, machine: Callable[[], SimMachine]
) -> AsyncIterator[StartBmc]:
    """A starter of Redfish BMCs with this login: `await start(machines=None, **settings)`
    serves `machines` (one `machine()` when None); every BMC it started stops with the block."""
    started: list[RedfishBmc] = []

    async def start(machines: list[SimMachine] | None = None, **settings: Any) -> RedfishBmc:
        bmc = RedfishBmc(machines or [machine()], user, password, **settings)
        await bmc.start()
        started.append(bmc)
        return bmc

    try:
        yield start
    finally:
        for bmc in started:
            await bmc.stop()
