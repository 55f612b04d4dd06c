"""IPMI 2.0 RMCP+ (lanplus) BMC emulator: one `IpmiBmc` per `SimMachine`, on its own UDP port.

Usable with `ipmitool -I lanplus` (cipher suites 3 and 17) and pyghmi's client. Modules:
`packets` (wire formats), `crypto` (RAKP, keys, integrity, AES), `session` (session state),
`handshake` (open session and RAKP), `commands` (IPMI commands), `server` (the UDP endpoint).
"""

from nodefence.hwsim.ipmi.server import IpmiBmc, IpmiTamper
from nodefence.hwsim.ipmi.stats import BmcStats

__all__ = ["BmcStats", "IpmiBmc", "IpmiTamper"]
