"""Build the power backend for a device spec, chosen by its `type`.

Drivers are imported on first use so that a command touching only IPMI never pays for
loading the Redfish library (and the other way round).
"""

from __future__ import annotations

from nodefence.backends.base import PowerBackend
from nodefence.backends.spec import DeviceSpec, FenceAgentDevice, IpmiDevice, RedfishDevice


def build_backend(node: str, spec: DeviceSpec) -> PowerBackend:
    """A ready-to-use backend for `spec` (no I/O happens until its first call)."""
    if isinstance(spec, IpmiDevice):
        from nodefence.backends.ipmi.backend import IpmiBackend

        return IpmiBackend(node, spec)
    if isinstance(spec, RedfishDevice):
        from nodefence.backends.redfish.backend import RedfishBackend

        return RedfishBackend(node, spec)
    if isinstance(spec, FenceAgentDevice):
        from nodefence.backends.fence_agent import FenceAgentBackend

        return FenceAgentBackend(node, spec)
    raise TypeError(f"unknown device spec {type(spec).__name__}")
