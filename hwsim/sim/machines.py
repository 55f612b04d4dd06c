"""Simulated machines: power (host, chassis, PDU outlets), network, watchdog, kubelet, VMs.

A machine is *powered* while its chassis has power, its host was not switched off, and (for a
node fed by PDU outlets) at least one outlet is on. Losing power kills everything on it at once:
the agent, the kubelet, every VM process; the watchdog device forgets it was armed. Power coming
back boots it: `boot_delay` later the kubelet registers the Node again (a new uid if it was
deleted) and a new agent process starts. A *partitioned* machine runs on, VMs included, but
reaches nothing and nothing reaches it (its BMC is on a separate network and still answers).

The watchdog is a device timer: armed by the first feed, it resets the machine (power cycle)
`timeout` seconds after the last feed unless disarmed by a clean agent stop. Whether to feed is
the real `nodefence.agent.node.watchdog_rules.FeedPolicy`'s decision, asked by the agent
(`nodefence.hwsim.sim.agents`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodefence.hwsim.sim.agents import NodeAgent
    from nodefence.hwsim.sim.world import World

KUBELET_RENEW = 10.0  # kube-node-lease renewals, as the kubelet does


@dataclass
class Watchdog:
    """The machine's watchdog device."""

    armed: bool = False
    deadline: float = 0.0
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Machine:
    """One worker machine of the simulated cluster (see the module doc)."""

    world: World
    name: str
    ip: str
    drift: float  # its clock runs (1 + drift) times as fast as virtual time
    outlets: list[bool] = field(default_factory=list)  # PDU outlets feeding it (empty: none)
    capacity: int = 4  # VMs it can host
    chassis: bool = True  # chassis power (the BMC lives on it)
    host_on: bool = True  # the host as its BMC switches it
    partitioned: bool = False
    cut_since: float | None = None  # when its network was cut (None while connected)
    lost: bool = False  # cut off with every BMC channel unreachable until the quiet phase
    booted: bool = False
    boots: int = 0
    off_periods: list[list[float]] = field(default_factory=list)  # [off, on] virtual times
    vms: set[str] = field(default_factory=set)  # VM processes running here
    agent: NodeAgent | None = None
    agent_wanted: bool = True  # the agent is (re)started at boot
    wall_step: float = 0.0  # seconds its wall clock was stepped by
    watchdog: Watchdog = field(default_factory=Watchdog)
    _boot_timer: asyncio.TimerHandle | None = None
    _kubelet_timer: asyncio.TimerHandle | None = None

    @property
    def powered(self) -> bool:
        """Whether the host runs."""
        return self.chassis and self.host_on and (not self.outlets or any(self.outlets))

    def clock(self) -> float:
        """The machine's monotonic clock."""
        return self.world.loop.time() * (1.0 + self.drift)

    def wall(self) -> float:
        """The machine's wall clock (Unix seconds)."""
        return self.world.wall_epoch + self.world.loop.time() * (1.0 + self.drift) + self.wall_step

    # -- power ---------------------------------------------------------------------------------

    def change_power(self, change: Callable[[Machine], None], why: str) -> None:
        """Apply `change` to the power inputs and run the consequences (death or boot)."""
        before = self.powered
        change(self)
        after = self.powered
        if before and not after:
            self._power_lost(why)
        elif after and not before:
            self._power_back(why)

    def reset(self, why: str) -> None:
        """A hardware reset (watchdog): everything dies, then the machine boots again."""
        if not self.powered:
            return
        self._power_lost(why)
        self._power_back(why)

    def _power_lost(self, why: str) -> None:
        w = self.world
        w.trace.event("power", f"{self.name} off ({why})")
        self.off_periods.append([w.loop.time(), float("inf")])
        self.booted = False
        for timer in (self._boot_timer, self._kubelet_timer, self.watchdog.timer):
            if timer is not None:
                timer.cancel()
        self._boot_timer = self._kubelet_timer = None
        self.watchdog = Watchdog()
        if self.agent is not None:
            self.agent.die()
            self.agent = None
        self.vms.clear()

    def _power_back(self, why: str) -> None:
        w = self.world
        w.trace.event("power", f"{self.name} on ({why})")
        if self.off_periods:
            self.off_periods[-1][1] = w.loop.time()
        delay = w.settings.boot_delay * (0.8 + 0.4 * w.rng.random())
        self._boot_timer = w.loop.call_later(delay, self._boot, context=w.loop.harness)

    def _boot(self) -> None:
        w = self.world
        self._boot_timer = None
        if not self.powered:
            return
        self.booted = True
        self.boots += 1
        w.trace.event("boot", f"{self.name} booted")
        self.kubelet_tick()
        w.vm_controller.machine_booted(self)
        if self.agent_wanted:
            w.start_agent(self)

    def off_since(self, since: float) -> bool:
        """Whether it was without power (or reset) at some moment at or after `since`."""
        return any(end >= since for _, end in self.off_periods)

    def off_since_work(self, since: float) -> bool:
        """Whether it was off at some moment after `since`, or after it was cut off if it has
        been cut off since before `since` (no new work can reach a machine without network)."""
        cut = self.cut_since
        return self.off_since(min(since, cut) if cut is not None else since)

    # -- kubelet -------------------------------------------------------------------------------

    def kubelet_tick(self) -> None:
        """Register the Node if needed and renew the kubelet Lease; again every 10 s."""
        w = self.world
        if not self.booted:
            return
        if not self.partitioned:
            w.api.register_node(self.name, self.ip)
            w.api.renew_kubelet_lease(self.name)
        interval = KUBELET_RENEW / (1.0 + self.drift)
        self._kubelet_timer = w.loop.call_later(interval, self.kubelet_tick, context=w.loop.harness)

    # -- watchdog ------------------------------------------------------------------------------

    def feed_watchdog(self, timeout: float) -> None:
        """A keepalive write: arms the device and pushes its deadline."""
        w = self.world
        wd = self.watchdog
        wd.armed = True
        wd.deadline = w.loop.time() + timeout
        if wd.timer is None:
            wd.timer = w.loop.call_at(wd.deadline, self._watchdog_due, context=w.loop.harness)

    def disarm_watchdog(self) -> None:
        """The magic close: the device stops counting."""
        self.watchdog.armed = False

    def _watchdog_due(self) -> None:
        w = self.world
        wd = self.watchdog
        wd.timer = None
        if not wd.armed:
            return
        if w.loop.time() < wd.deadline:
            wd.timer = w.loop.call_at(wd.deadline, self._watchdog_due, context=w.loop.harness)
            return
        w.trace.event("watchdog", f"{self.name} reset by its watchdog")
        w.trace.faults["watchdog-reset"] += 1
        self.reset("watchdog reset")

    # -- VMs -----------------------------------------------------------------------------------

    def start_vm(self, key: str) -> None:
        """A VM's processes start here (the split-brain check runs right after)."""
        if not self.powered:
            return
        self.vms.add(key)
        self.world.invariants.vm_started(self, key)
