"""The one small async interface every power backend implements."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

from nodefence.backends.errors import BmcAuthFailed, BmcUnreachable, FenceError


class PowerState(enum.Enum):
    """A power state as read back from a BMC."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    """What `check()` learned about a device: reachable, credentials accepted, power, reset.

    `reason` is the failing error's reason (`nodefence.backends.errors`), "" when nothing failed.
    """

    reachable: bool
    authenticated: bool
    power: PowerState
    reset_supported: bool
    detail: str = ""
    reason: str = ""


def failed_check(err: FenceError, authenticated: bool) -> CheckResult:
    """What a `check()` that failed with `err` learned: nothing received is unreachable,
    refused credentials are reachable but not authenticated, anything else came from a BMC
    that answered (`authenticated`: a session or login had succeeded before it failed)."""
    if isinstance(err, BmcUnreachable):
        return CheckResult(False, False, PowerState.UNKNOWN, False, str(err), err.reason)
    if isinstance(err, BmcAuthFailed):
        return CheckResult(True, False, PowerState.UNKNOWN, False, str(err), err.reason)
    return CheckResult(True, authenticated, PowerState.UNKNOWN, False, str(err), err.reason)


class PowerBackend(abc.ABC):
    """Power control of one node through one BMC channel.

    Every method is bounded by the device's timeout and raises a
    `nodefence.backends.errors.FenceError` subclass on failure. `power_off`/`power_on` only
    *request* the change; proving it is the caller's job (read back with `power_state`).
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
