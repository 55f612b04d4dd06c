"""Execute a power action on one node through its fencing topology.

The thin, effectful half of `nodefence.agent.fencing.topology`: it asks backends for power changes
and reads the state back until it is proven. Time (clock, sleep) and backends are injected so the
walk is tested without sockets, and driven over real sockets by the CLI and, later, the leader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nodefence.agent.config.inventory_file import FencingPolicy, Level, NodeInventory
from nodefence.agent.fencing.channels import ChannelErrors, cross_checked
from nodefence.agent.fencing.stop import StopReason
from nodefence.agent.fencing.topology import (
    PowerOutcome,
    PowerRequest,
    Step,
    attempt_plan,
    channel_errors,
    channel_groups,
    combined_state,
)
from nodefence.backends.base import PowerBackend, PowerState
from nodefence.backends.errors import BmcUnreachable, FenceError, PowerVerifyFailed
from nodefence.backends.registry import build_backend
from nodefence.backends.spec import DeviceSpec

BackendFactory = Callable[[str, DeviceSpec], PowerBackend]
StepListener = Callable[[Step], None]
# (level, device, request, seconds waited, power_timeout, what it read last): each read-back
# that did not show the wanted state yet, for progress on a terminal.
PollListener = Callable[[int, str, str, float, float, str], None]
Guard = Callable[[str], Awaitable[None]]
LastLook = Callable[[str], None]


class StopWalk(Exception):
    """Raised by a guard to stop the walk at once (e.g. this process lost the leader Lease),
    with its typed `reason` (`nodefence.agent.fencing.stop`); its message is the reason's text.

    Unlike a `FenceError` it is not retried and does not escalate to the next level.
    """

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.text)
        self.reason = reason


class PowerFencer:
    """Walks one node's levels to switch its power and prove the result.

    `guard(step)` is awaited before every irreversible request (power off/on); it raises
    `StopWalk` to stop the walk (the leader uses it to check it still holds its Lease).
    `last_look(device)` is called right before each power-off request is handed to its
    backend, with nothing awaited in between (it may raise `StopWalk` too). `on_poll` hears
    every read-back that does not show the wanted state yet (see `PollListener`).
    """

    def __init__(
        self,
        node: NodeInventory,
        policy: FencingPolicy,
        *,
        factory: BackendFactory = build_backend,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_step: StepListener | None = None,
        guard: Guard | None = None,
        last_look: LastLook | None = None,
        on_poll: PollListener | None = None,
    ) -> None:
        self.node = node
        self._on_poll = on_poll
        self.policy = policy
        self._factory = factory
        self._clock = clock
        self._sleep = sleep
        self._on_step = on_step
        self._guard = guard
        self._last_look = last_look
        self._backends: dict[str, PowerBackend] = {}
        self._started = 0.0
        self._outcome = PowerOutcome(node.name, PowerRequest.STATUS)

    async def run(self, action: PowerRequest) -> PowerOutcome:
        """Carry out `action`; never raises a `FenceError` (failures are in the outcome)."""
        self._started = self._clock()
        self._outcome = PowerOutcome(self.node.name, action)
        try:
            if action is PowerRequest.STATUS:
                await self._status()
            elif action is PowerRequest.ON:
                await self._walk_on()
            else:
                await self._walk_off(then_on=action is PowerRequest.REBOOT)
        except StopWalk as stop:
            self._outcome.success = False
            self._outcome.errors.append(f"stopped: {stop}")
        finally:
            self._outcome.elapsed = self._clock() - self._started
            await self._close_all()
        return self._outcome

    # -- actions ---------------------------------------------------------------------------

    async def _status(self) -> None:
        devices = [(li, d) for li, level in enumerate(self.node.levels) for d in level.devices]
        reads = await asyncio.gather(*(self._read(li, d, "status") for li, d in devices))
        states = [s for s in reads if s is not None]
        out = self._outcome
        out.state = combined_state(states)
        out.success = bool(states)
        out.off_proven = out.state is PowerState.OFF and len(states) == len(devices)
        if not states:
            out.errors.append("no device of the node could be read")

    async def _walk_off(self, *, then_on: bool) -> None:
        out = self._outcome
        for att in attempt_plan(self.node, self.policy):
            if att.delay:
                await self._sleep(att.delay)
            level = self.node.levels[att.level]
            try:
                await self._level_set(att.level, level, PowerState.OFF)
            except FenceError as err:
                out.errors.append(str(err))
                continue
            out.level = att.level + 1
            break
        else:
            out.state = PowerState.UNKNOWN
            return
        try:
            await self._confirm_off_elsewhere(out.level - 1)
        except FenceError as err:
            out.errors.append(str(err))
            out.state = PowerState.ON  # doubt counts as On
            return
        out.off_proven = True
        out.state = PowerState.OFF
        if not then_on:
            out.success = True
            return
        try:
            level_index = out.level - 1
            await self._level_set(level_index, self.node.levels[level_index], PowerState.ON)
        except FenceError as err:
            out.errors.append(f"node is proven off, but power-on failed: {err}")
            return
        out.state = PowerState.ON
        out.success = True

    async def _walk_on(self) -> None:
        out = self._outcome
        for att in attempt_plan(self.node, self.policy):
            if att.delay:
                await self._sleep(att.delay)
            try:
                await self._level_set(att.level, self.node.levels[att.level], PowerState.ON)
            except FenceError as err:
                out.errors.append(str(err))
                continue
            out.level = att.level + 1
            out.state = PowerState.ON
            out.success = True
            return

    # -- building blocks -------------------------------------------------------------------

    async def _level_set(self, li: int, level: Level, want: PowerState) -> None:
        """Request `want` on every device of the level, then prove it on every device."""
        verb = "off" if want is PowerState.OFF else "on"
        if self._guard is not None:
            await self._guard(f"power-{verb}")
        results = await asyncio.gather(
            *(self._request(li, d, verb) for d in level.devices), return_exceptions=True
        )
        _raise_first(results)
        results = await asyncio.gather(
            *(self._verify(li, d, want) for d in level.devices), return_exceptions=True
        )
        _raise_first(results)

    async def _request(self, li: int, dev: DeviceSpec, verb: str) -> None:
        backend = self._backend(dev)
        if verb == "off" and self._last_look is not None:
            self._last_look(dev.name)  # no await between this look and the request
        try:
            await (backend.power_off() if verb == "off" else backend.power_on())
        except FenceError as err:
            self._step(li, dev, verb, err.reason, str(err))
            raise
        self._step(li, dev, verb, "sent")

    async def _verify(
        self, li: int, dev: DeviceSpec, want: PowerState, *, confirming: int | None = None
    ) -> None:
        """Poll the device until it reads `want`, within the device's `power_timeout`.

        `confirming` (a 1-based level) words the failure as a cross-check of that level's Off.
        """
        t = dev.timeouts
        deadline = self._clock() + t.power_timeout
        if t.power_wait:
            await self._sleep(t.power_wait)
        request = f"verify-{want.value}"
        last = "no read-back yet"
        error: FenceError | None = None
        while True:
            try:
                state = await self._backend(dev).power_state()
            except FenceError as err:
                last, error = f"read-back failed: {err}", err
            else:
                if state is want:
                    self._step(li, dev, request, state.value)
                    return
                last, error = f"reads {state.value}", None
            if self._on_poll is not None:
                waited = t.power_timeout - (deadline - self._clock())
                self._on_poll(li + 1, dev.name, request, waited, t.power_timeout, last)
            if self._clock() >= deadline:
                text = (
                    f"power {want.value} not confirmed within power_timeout="
                    f"{t.power_timeout:g} s ({last})"
                )
                if confirming is not None:
                    text = _not_confirmed(confirming, dev, t.power_timeout, error, last)
                failure = PowerVerifyFailed(text, node=self.node.name, device=dev.name)
                self._step(li, dev, request, failure.reason, str(failure))
                raise failure
            await self._sleep(t.poll_interval)

    async def _confirm_off_elsewhere(self, fenced_level: int) -> None:
        """Every device sharing a channel group with the fenced level's devices reads Off.

        A device that does not answer at all (`BmcUnreachable`) cannot contradict the proof and
        is skipped; one that answers anything but Off (On, or an error unless `channel_errors:
        ignore`) gets its full power_timeout to read Off, or the proof fails.
        """
        proven = [d.name for d in self.node.levels[fenced_level].devices]
        must = cross_checked(channel_groups(self.node, self.policy), proven)
        errors = channel_errors(self.node, self.policy)
        others = [
            (li, d)
            for li, level in enumerate(self.node.levels)
            if li != fenced_level
            for d in level.devices
        ]
        for li, d in others:
            if d.name not in must:
                self._step(
                    li,
                    d,
                    "confirm-off",
                    "skipped",
                    f"not in a channel group with level {fenced_level + 1}'s devices "
                    "(verify_all_channels): not cross-checked",
                )
        checks = [(li, d) for li, d in others if d.name in must]
        reads = await asyncio.gather(*(self._read_for_proof(li, d, errors) for li, d in checks))
        pending = [check for check, settled in zip(checks, reads, strict=True) if not settled]
        if pending:
            results = await asyncio.gather(
                *(
                    self._verify(li, d, PowerState.OFF, confirming=fenced_level + 1)
                    for li, d in pending
                ),
                return_exceptions=True,
            )
            _raise_first(results)

    async def _read_for_proof(self, li: int, dev: DeviceSpec, errors: ChannelErrors) -> bool:
        """Read a cross-checked device once; True when it needs no further reads."""
        request = "confirm-off"
        try:
            state = await self._backend(dev).power_state()
        except BmcUnreachable as err:
            detail = f"skipped: no answer at all cannot contradict the proof; {err}"
            self._step(li, dev, request, err.reason, detail)
            return True
        except FenceError as err:
            if errors is ChannelErrors.IGNORE:
                self._step(li, dev, request, err.reason, f"ignored (channel_errors: ignore); {err}")
                return True
            detail = f"answered with an error: must read Off within power_timeout; {err}"
            self._step(li, dev, request, err.reason, detail)
            return False
        self._step(li, dev, request, state.value)
        return state is PowerState.OFF

    async def _read(self, li: int, dev: DeviceSpec, request: str) -> PowerState | None:
        try:
            state = await self._backend(dev).power_state()
        except FenceError as err:
            self._step(li, dev, request, err.reason, str(err))
            return None
        self._step(li, dev, request, state.value)
        return state

    def _backend(self, dev: DeviceSpec) -> PowerBackend:
        backend = self._backends.get(dev.name)
        if backend is None:
            backend = self._factory(self.node.name, dev)
            self._backends[dev.name] = backend
        return backend

    def _step(self, li: int, dev: DeviceSpec, request: str, result: str, detail: str = "") -> None:
        step = Step(li + 1, dev.name, request, result, self._clock() - self._started, detail)
        self._outcome.steps.append(step)
        if self._on_step is not None:
            self._on_step(step)

    async def _close_all(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            try:
                await backend.close()
            except FenceError:
                continue  # a failed logout changes nothing about the outcome


def _not_confirmed(
    level: int, dev: DeviceSpec, timeout: float, error: FenceError | None, last: str
) -> str:
    """Why a cross-checked channel fails the proof of `level`'s Off, and what to change."""
    head = (
        f"level {level} read Off, but {dev.name}, a channel of the same power, did not read "
        f"Off within power_timeout={timeout:g} s"
    )
    if error is None:
        return (
            f"{head} (it {last}); if {dev.name} does not see this power (e.g. a PDU outlet "
            "behind a BMC), give it its own group in verify_all_channels"
        )
    return (
        f"{head} (it answered: {error.message}); an answering channel must read Off, its "
        "errors are no proof (channel_errors: not-proven)"
    )


def _raise_first(results: list[BaseException | None]) -> None:
    for r in results:
        if isinstance(r, BaseException):
            raise r
