"""The one small async interface every power backend implements."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class PowerState(enum.Enum):
    """A power state as read back from a BMC."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    """What `check()` learned about a device: reachable, credentials accepted, power, reset.

    `reason` is the failing error's reason (`backends.errors`), "" when nothing failed.
    """

    reachable: bool
    authenticated: bool
    power: PowerState
    reset_supported: bool
    detail: str = ""
    reason: str = ""


class PowerBackend(abc.ABC):
    """Power control of one node through one BMC channel.

    Every method is bounded by the device's timeout and raises a `backends.errors.FenceError`
    subclass on failure. `power_off`/`power_on` only *request* the change; proving it is the
    caller's job (read back with `power_state`).
    """

    node: str
    device: str

    @abc.abstractmethod
    async def power_state(self) -> PowerState:
        """Read the current power state; raise on any failure, never guess."""

    @abc.abstractmethod
    async def power_off(self) -> None:
        """Request an immediate hard power-off (no graceful shutdown)."""

    @abc.abstractmethod
    async def power_on(self) -> None:
        """Request power-on."""

    @abc.abstractmethod
    async def check(self) -> CheckResult:
        """Probe reachability, credentials, power state and reset support; never raises."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release sessions and sockets; safe to call more than once."""
