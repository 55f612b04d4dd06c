"""A Redfish BMC emulator: HTTP or HTTPS on 127.0.0.1, Basic and session auth, fault injection.

    bmc = RedfishBmc([machine], "admin", "secret", tls=make_tls(tmp_path))
    await bmc.start()          # bmc.url == "https://127.0.0.1:<port>"
    ...
    await bmc.stop()

Each `SimMachine` is one ComputerSystem (Id and Name = machine name, UUID = machine.uuid).
The machine's `faults` shape every answer; see `nodefence.hwsim.machine.Faults`.
"""

from nodefence.hwsim.redfish.resources import DEFAULT_RESET_TYPES, RESET_TYPES_ENUM
from nodefence.hwsim.redfish.server import RawAnswer, RedfishBmc, RedfishTamper
from nodefence.hwsim.redfish.service import RedfishOptions, RedfishService

__all__ = [
    "DEFAULT_RESET_TYPES",
    "RESET_TYPES_ENUM",
    "RawAnswer",
    "RedfishBmc",
    "RedfishOptions",
    "RedfishService",
    "RedfishTamper",
]
