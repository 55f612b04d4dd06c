"""A PDU outlet feeding one machine, as its own power device (served over Redfish as a System).

The outlet is a `SimMachine` of its own (named `<host>-outlet`), so a Redfish emulator serves it
like any system: `ForceOff` opens the outlet, `On` closes it, `PowerState` reads the outlet.
Its power is independent of the host's: the host's BMC turning the host off leaves the outlet
On; the outlet turning off cuts the host *and* its BMC (`SimMachine.set_mains`: every channel
of the host unreachable). With the outlet back on the host's BMC answers again and the host
stays off until something powers it on.
"""

from __future__ import annotations

import uuid

from nodefence.hwsim.machine import PowerLiteral, SimMachine

OUTLET_SUFFIX = "-outlet"


def outlet_name(host: str) -> str:
    """The outlet's system name (its Redfish system id) for `host`."""
    return host + OUTLET_SUFFIX


def feed_from_outlet(host: SimMachine) -> SimMachine:
    """A new outlet (On) that feeds `host`: switching it switches the host's mains."""
    name = outlet_name(host.name)
    outlet = SimMachine(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.hwsim")))

    def switched(_outlet: SimMachine, state: PowerLiteral) -> None:
        host.set_mains(state == "on")

    outlet.on_power_change(switched)
    return outlet


def restore(host: SimMachine, outlet: SimMachine | None) -> None:
    """Power `host` on, closing its outlet first when it is open (a repair)."""
    if outlet is not None and outlet.power_state() == "off":
        outlet.request_on()
    host.request_on()
