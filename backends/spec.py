"""Typed, validated descriptions of BMC devices, as the inventory loader produces them.

Option names follow fence-agents where the meaning is the same (`ipport` is `port` here,
`power_timeout`, `power_wait`, `cipher`, `ssl_insecure`, `systems_uri`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class Secret:
    """A password that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it to the protocol library and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DeviceTimeouts:
    """Deadlines of one device, in seconds.

    - `timeout`: one request to the BMC (login, read, action), including retries inside it.
    - `power_timeout`: from the power-off request until Off must be read back.
    - `power_wait`: pause after a power request before the first read-back (some BMCs report
      stale state right after an action).
    - `poll_interval`: pause between read-backs while waiting for the asked-for state.
    """

    timeout: float = 5.0
    power_timeout: float = 20.0
    power_wait: float = 0.0
    poll_interval: float = 0.2


@dataclass(frozen=True)
class IpmiDevice:
    """An IPMI 2.0 (RMCP+, lanplus) BMC."""

    name: str
    address: str
    username: str
    password: Secret
    port: int = 623
    cipher: int = 3
    privilege: Literal["administrator", "operator"] = "administrator"
    timeouts: DeviceTimeouts = DeviceTimeouts()
    type: Literal["ipmi"] = "ipmi"


@dataclass(frozen=True)
class RedfishDevice:
    """A Redfish service; the system is found by `systems_uri`, `system_id`, `system_name` or
    `system_uuid` (first set wins), or is the only system of the service."""

    name: str
    address: str
    username: str
    password: Secret
    port: int = 443
    scheme: Literal["https", "http"] = "https"
    auth: Literal["session", "basic", "auto"] = "auto"
    ssl_insecure: bool = False
    ca_file: str | None = None
    systems_uri: str | None = None
    system_id: str | None = None
    system_name: str | None = None
    system_uuid: str | None = None
    timeouts: DeviceTimeouts = DeviceTimeouts()
    type: Literal["redfish"] = "redfish"

    @property
    def base_url(self) -> str:
        """`scheme://address:port` of the service (IPv6 addresses bracketed)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class FenceAgentDevice:
    """A ClusterLabs fence agent (`fence_ipmilan`, `fence_redfish`, `fence_apc_snmp`, ...),
    run with its options on standard input.

    `agent` is the agent's absolute path (the inventory resolves a bare name). `address`,
    `port`, `username` and `password` are passed as the agent's `ip`, `ipport`, `username`
    and `password` when set; `options` are any other agent options, as its stdin takes them
    (`name=value`). `ca_file` is exported to the agent as REQUESTS_CA_BUNDLE and
    SSL_CERT_FILE (honoured by agents built on Python's requests or ssl, e.g. fence_redfish).
    """

    name: str
    agent: str
    options: tuple[tuple[str, str], ...] = ()
    address: str | None = None
    port: int | None = None
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    timeouts: DeviceTimeouts = DeviceTimeouts()
    type: Literal["fence_agent"] = "fence_agent"


DeviceSpec = IpmiDevice | RedfishDevice | FenceAgentDevice
