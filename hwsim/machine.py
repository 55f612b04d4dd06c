"""A simulated bare-metal machine: its power state and the faults its BMC injects.

Both BMC emulators (IPMI, Redfish) drive the same `SimMachine`, so a node powered off over IPMI
reads Off over Redfish. Each emulator is one *channel* of the machine ("ipmi", "redfish"):
`faults` apply to every channel (the BMC as a whole), `channel_faults` to one channel only
(Redfish answering 500 while IPMI works). A machine fed by a PDU outlet has `mains`: with the
outlet off the host is off and its BMC has no power either (every channel unreachable).
The state is guarded by a lock because emulators may run in threads. Time is read from an
injectable monotonic clock so delayed power-offs are deterministic.
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
    - `errors`: every power request (read or change) is answered with an error (Redfish 500,
      IPMI completion code FFh); logins still succeed.
    - `reads_off`: the power reads Off whatever it is (a BMC that lost track of its host);
      with `ignore_off` on the same channel, a BMC that says it switched off a host still on.

    `off_delay` is how the machine's power reacts, so it is machine-wide; a channel's own
    faults (`SimMachine.set_channel_faults`) are the others.
    """

    unreachable: bool = False
    slow: float = 0.0
    wrong_credentials: bool = False
    ignore_off: bool = False
    off_delay: float = 0.0
    fail_first: int = 0
    errors: bool = False
    reads_off: bool = False


# Fields that describe how the power itself reacts, not how one channel answers.
MACHINE_ONLY = frozenset({"off_delay"})


def _merge(base: Faults, own: Faults) -> Faults:
    """`base` with a channel's own faults added (the worse of the two for every field)."""
    return replace(
        base,
        unreachable=base.unreachable or own.unreachable,
        slow=max(base.slow, own.slow),
        wrong_credentials=base.wrong_credentials or own.wrong_credentials,
        ignore_off=base.ignore_off or own.ignore_off,
        errors=base.errors or own.errors,
        reads_off=base.reads_off or own.reads_off,
    )


@dataclass
class SimMachine:
    """One machine: name, identity, power and faults; thread-safe."""

    name: str
    uuid: str
    power: PowerLiteral = "on"
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.monotonic
    power_changes: int = 0
    off_requests: int = 0  # power-off requests received by any channel (acted on or not)
    _offs_by_channel: dict[str, int] = field(default_factory=dict)
    # Called with the channel of every power-off request, in the emulator's thread, before
    # the request acts (tests and chaos runs time things on it); keep it quick.
    off_request_hook: Callable[[str], None] | None = field(default=None, repr=False)
    channel_faults: dict[str, Faults] = field(default_factory=dict)
    mains: bool = True  # the supply (a PDU outlet) gives power; see `set_mains`
    _pending_off_at: float | None = None
    _failures_left: int = 0
    _channel_failures_left: dict[str, int] = field(default_factory=dict)
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

    def set_channel_faults(
        self, channel: str, faults: Faults | None = None, **changes: object
    ) -> None:
        """Replace (or change some fields of) the faults of one channel only; the machine-wide
        `faults` still apply to it too. `off_delay` is refused (machine-wide)."""
        with self._lock:
            base = faults if faults is not None else self.channel_faults.get(channel, Faults())
            own = replace(base, **changes)  # type: ignore[arg-type]
            wrong = sorted(f for f in MACHINE_ONLY if getattr(own, f) != getattr(Faults(), f))
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: machine-wide faults, not per channel")
            self.channel_faults[channel] = own
            self._channel_failures_left[channel] = own.fail_first

    def clear_channel_faults(self, channel: str | None = None) -> None:
        """Drop the faults of one channel (None: of every channel)."""
        with self._lock:
            for name in [channel] if channel is not None else list(self.channel_faults):
                self.channel_faults.pop(name, None)
                self._channel_failures_left.pop(name, None)

    def faults_of(self, channel: str) -> Faults:
        """What `channel` shows: the machine's faults plus the channel's own, and unreachable
        while the machine has no mains power (its BMC is off too)."""
        with self._lock:
            base, own, mains = self.faults, self.channel_faults.get(channel), self.mains
        merged = base if own is None else _merge(base, own)
        return merged if mains else replace(merged, unreachable=True)

    def on_power_change(self, listener: Callable[[SimMachine, PowerLiteral], None]) -> None:
        """Call `listener(machine, new_state)` after every power transition."""
        self._listeners.append(listener)

    def consume_failure(self, channel: str | None = None) -> bool:
        """True when this request must fail: a `fail_first` fault (of `channel`, else of the
        machine) still has failures left."""
        with self._lock:
            if channel is not None and self._channel_failures_left.get(channel, 0) > 0:
                self._channel_failures_left[channel] -= 1
                return True
            if self._failures_left > 0:
                self._failures_left -= 1
                return True
            return False

    def off_requests_by_channel(self) -> dict[str, int]:
        """How many power-off requests each channel received ("" when none was named)."""
        with self._lock:
            return dict(self._offs_by_channel)

    def power_state(self) -> PowerLiteral:
        """The power state now, applying a delayed power-off whose time has come."""
        self._settle()
        return self.power

    def power_seen_by(self, channel: str) -> PowerLiteral:
        """The power state as `channel` reports it (Off under its `reads_off` fault)."""
        return "off" if self.faults_of(channel).reads_off else self.power_state()

    def request_off(self, channel: str = "") -> None:
        """A hard power-off as a BMC receives it on `channel`, subject to `ignore_off` and
        `off_delay`."""
        hook = self.off_request_hook
        if hook is not None:
            hook(channel)
        with self._lock:
            self.off_requests += 1
            self._offs_by_channel[channel] = self._offs_by_channel.get(channel, 0) + 1
            own = self.channel_faults.get(channel)
            ignored = self.faults.ignore_off or (own is not None and own.ignore_off)
            if ignored or self.power == "off":
                return
            if self.faults.off_delay > 0:
                if self._pending_off_at is None:
                    self._pending_off_at = self.clock() + self.faults.off_delay
                return
        self._set("off")

    def request_on(self) -> None:
        """Power on (cancels a pending delayed off); nothing happens without mains power."""
        with self._lock:
            self._pending_off_at = None
            if not self.mains:
                return
        self._set("on")

    def set_mains(self, on: bool) -> None:
        """The machine's supply (its PDU outlet) switched: off cuts the host at once and leaves
        its BMC without power (every channel unreachable); on gives the BMC back and leaves
        the host off until something powers it on (restore policy "always off")."""
        with self._lock:
            self.mains = on
            if not on:
                self._pending_off_at = None
        if not on:
            self._set("off")

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
