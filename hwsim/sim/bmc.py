"""Simulated BMC channels and the `PowerBackend` the leader's `PowerFencer` drives over them.

A node has one or more channels, each named like the inventory device it answers for:
- `bmc` channels (IPMI, Redfish: two views of the same BMC) switch and read the host; they
  live on the chassis' standby power, so a chassis without power does not answer;
- `pdu` channels are outlets of a power distribution unit, independent of the host: they switch
  and read their outlet, and the host runs while one of its outlets is on.

Faults are per channel (`ChannelFaults`): unreachable, slow (past the device `timeout`: a
`BmcTimeout`, the request may have been carried out), wrong credentials, protocol errors, Off
acknowledged but never done (reads On), and Off read early (the channel reads Off at once while
the host goes off only `off_delay` later). Every request lands on the channel after a latency,
even if the caller is cancelled or paused meanwhile; the backend respects the device timeouts
exactly as the real backends do.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    FenceError,
)
from nodefence.backends.spec import DeviceSpec
from nodefence.hwsim.sim.vloop import VirtualLoop

if TYPE_CHECKING:
    from nodefence.hwsim.sim.machines import Machine


class ChannelKind(enum.Enum):
    """What a channel switches."""

    BMC = "bmc"
    PDU = "pdu"


@dataclass
class ChannelFaults:
    """What is wrong with one channel now (all healthy by default)."""

    unreachable: bool = False
    slow: float = 0.0  # extra seconds per request
    auth: bool = False
    error: bool = False
    ignore_off: bool = False  # power-off acknowledged, nothing happens
    early_off: bool = False  # reads Off at once after a power-off request
    off_delay: float = 0.0  # seconds before a requested Off takes effect

    @property
    def healthy(self) -> bool:
        """No fault at all."""
        return self == ChannelFaults()


@dataclass(eq=False)
class Channel:
    """One BMC or PDU channel of a machine."""

    machine: Machine
    device: str
    kind: ChannelKind
    outlet: int = 0
    faults: ChannelFaults = field(default_factory=ChannelFaults)
    off_requested: bool = False

    def reachable(self) -> bool:
        """Whether it answers at all."""
        if self.faults.unreachable:
            return False
        return self.kind is ChannelKind.PDU or self.machine.chassis

    def reads(self) -> PowerState:
        """The power state it reports now."""
        m = self.machine
        if self.kind is ChannelKind.PDU:
            return PowerState.ON if m.outlets[self.outlet] else PowerState.OFF
        if self.faults.early_off and self.off_requested:
            return PowerState.OFF
        return PowerState.ON if m.powered else PowerState.OFF

    def carry_out(self, verb: str) -> None:
        """A power request that reached the channel."""
        m = self.machine
        w = m.world
        if verb == "off":
            self.off_requested = True
            if self.faults.ignore_off:
                return
            delay = self.faults.off_delay
            if delay > 0:
                w.loop.call_later(delay, self._switch, False, context=w.loop.harness)
            else:
                self._switch(False)
        elif verb == "on":
            self.off_requested = False
            self._switch(True)

    def _switch(self, on: bool) -> None:
        m = self.machine
        why = f"{self.device} power {'on' if on else 'off'}"
        if self.kind is ChannelKind.PDU:
            outlet = self.outlet

            def change(x: Machine) -> None:
                x.outlets[outlet] = on

            m.change_power(change, why)
        else:

            def change(x: Machine) -> None:
                x.host_on = on

            m.change_power(change, why)


PowerRequestListener = Callable[[str, str, str], None]  # node, device, verb


class SimPowerBackend(PowerBackend):
    """`nodefence.backends.base.PowerBackend` over one simulated channel."""

    def __init__(
        self,
        loop: VirtualLoop,
        rng: random.Random,
        channel: Channel,
        spec: DeviceSpec,
        on_request: PowerRequestListener,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.channel = channel
        self.spec = spec
        self.node = channel.machine.name
        self.device = channel.device
        self.on_request = on_request

    def _where(self) -> dict[str, str]:
        return {"node": self.node, "device": self.device, "address": self.spec.address or ""}

    async def _call(self, verb: str) -> PowerState:
        ch = self.channel
        f = ch.faults
        timeout = self.spec.timeouts.timeout
        loop = self.loop
        if not ch.reachable():
            await asyncio.sleep(timeout)
            raise BmcUnreachable("no answer from the BMC", **self._where())
        latency = 0.005 + self.rng.random() * 0.03
        if f.slow:
            latency += self.rng.random() * f.slow
        if f.auth:
            await asyncio.sleep(min(latency, timeout))
            raise BmcAuthFailed("the BMC refused the credentials", **self._where())
        if f.error:
            await asyncio.sleep(min(latency, timeout))
            raise BmcProtocolError("the BMC answered with an error", **self._where())
        fut: asyncio.Future[PowerState] = loop.create_future()

        def land() -> None:
            if verb != "status":
                ch.carry_out(verb)
            state = ch.reads()
            if not fut.done() and latency < timeout:
                loop.call_later(latency / 2, _settle, fut, state, context=loop.harness)

        loop.call_later(latency / 2, land, context=loop.harness)
        if latency >= timeout:
            await asyncio.sleep(timeout)
            raise BmcTimeout(f"no answer within timeout={timeout:g} s", **self._where())
        return await fut

    async def power_state(self) -> PowerState:
        """See `PowerBackend.power_state`."""
        return await self._call("status")

    async def power_off(self) -> None:
        """See `PowerBackend.power_off`."""
        self.on_request(self.node, self.device, "off")
        await self._call("off")

    async def power_on(self) -> None:
        """See `PowerBackend.power_on`."""
        self.on_request(self.node, self.device, "on")
        await self._call("on")

    async def check(self) -> CheckResult:
        """See `PowerBackend.check`."""
        try:
            state = await self._call("status")
        except FenceError as err:
            return CheckResult(False, False, PowerState.UNKNOWN, False, str(err))
        return CheckResult(True, True, state, True)


def _settle(fut: asyncio.Future[PowerState], state: PowerState) -> None:
    if not fut.done():
        fut.set_result(state)
