"""A simulated bare-metal machine: its power state and the faults its BMC injects.

Both BMC emulators (IPMI, Redfish) drive the same `SimMachine`, so a node powered off over IPMI
reads Off over Redfish. The state is guarded by a lock because emulators may run in threads.
Time is read from an injectable monotonic clock so delayed power-offs are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

PowerLiteral = Literal["on", "off"]


@dataclass(frozen=True)
class Faults:
    """Faults a BMC injects. All default to "healthy".

    - `unreachable`: the BMC does not answer at all (IPMI drops datagrams, HTTP holds the
      connection silent until the client gives up).
    - `slow`: seconds added before every answer.
    - `wrong_credentials`: every login is refused, whatever the password.
    - `ignore_off`: power-off requests are acknowledged but the machine stays On.
    - `off_delay`: seconds between an acknowledged power-off and the machine reading Off.
    - `fail_first`: the first K requests (after this fault was set) fail with a BMC error.
    """

    unreachable: bool = False
    slow: float = 0.0
    wrong_credentials: bool = False
    ignore_off: bool = False
    off_delay: float = 0.0
    fail_first: int = 0


@dataclass
class SimMachine:
    """One machine: name, identity, power and faults; thread-safe."""

    name: str
    uuid: str
    power: PowerLiteral = "on"
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.monotonic
    power_changes: int = 0
    _pending_off_at: float | None = None
    _failures_left: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listeners: list[Callable[[SimMachine, PowerLiteral], None]] = field(
        default_factory=list, repr=False
    )

    def set_faults(self, faults: Faults | None = None, **changes: object) -> None:
        """Replace the faults (or change some fields); restarts the `fail_first` count."""
        with self._lock:
            base = faults if faults is not None else self.faults
            self.faults = replace(base, **changes)  # type: ignore[arg-type]
            self._failures_left = self.faults.fail_first

    def on_power_change(self, listener: Callable[[SimMachine, PowerLiteral], None]) -> None:
        """Call `listener(machine, new_state)` after every power transition."""
        self._listeners.append(listener)

    def consume_failure(self) -> bool:
        """True when this request must fail (a `fail_first` fault still has failures left)."""
        with self._lock:
            if self._failures_left > 0:
                self._failures_left -= 1
                return True
            return False

    def power_state(self) -> PowerLiteral:
        """The power state now, applying a delayed power-off whose time has come."""
        self._settle()
        return self.power

    def request_off(self) -> None:
        """A hard power-off as a BMC receives it, subject to `ignore_off` and `off_delay`."""
        with self._lock:
            if self.faults.ignore_off or self.power == "off":
                return
            if self.faults.off_delay > 0:
                if self._pending_off_at is None:
                    self._pending_off_at = self.clock() + self.faults.off_delay
                return
        self._set("off")

    def request_on(self) -> None:
        """Power on (cancels a pending delayed off)."""
        with self._lock:
            self._pending_off_at = None
        self._set("on")

    def cut_power(self) -> None:
        """The machine loses power (the test's hand, not a BMC request): Off at once."""
        with self._lock:
            self._pending_off_at = None
        self._set("off")

    def _settle(self) -> None:
        with self._lock:
            due = self._pending_off_at is not None and self.clock() >= self._pending_off_at
            if due:
                self._pending_off_at = None
        if due:
            self._set("off")

    def _set(self, state: PowerLiteral) -> None:
        with self._lock:
            if self.power == state:
                return
            self.power = state
            self.power_changes += 1
        for listener in list(self._listeners):
            listener(self, state)
