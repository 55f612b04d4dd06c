"""The faults of machines and their BMCs, drawn by `nodefence.hwsim.sim.faults.FaultScheduler`.

Machines: power loss (for good, or repaired later), chassis (mains) loss, network partition,
agent stop (SIGTERM, sometimes then cut off and lost) or kill, reboot, maintenance (labelled,
sometimes switched off). BMCs and PDUs: one channel unreachable, slow, refusing the login,
erroring, ignoring power-off, reading Off too early or late; two channels of one node
disagreeing. Each takes the scheduler `f` and draws from the run's random stream in the order
it always has (a seed stays one exact run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodefence.agent.kube.client import MAINTENANCE_LABEL
from nodefence.hwsim.sim.bmc import ChannelFaults, ChannelKind
from nodefence.hwsim.sim.machines import Machine

if TYPE_CHECKING:
    from nodefence.hwsim.sim.faults import FaultScheduler


# -- machine faults ----------------------------------------------------------------------------


def power_loss(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None:
        return
    f.open(m, "power-loss")
    m.change_power(_host(False), "power lost")
    d = f.duration(15, 45, forever=0.4)
    if d is not None:
        f.later(d, repair, f, m)


def repair(f: FaultScheduler, m: Machine) -> None:
    f.world.trace.fault("repair", m.name)
    m.change_power(_restore, "repaired")
    f.close(m)


def chassis_loss(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None:
        return
    f.open(m, "chassis-loss")
    m.change_power(chassis_power(False), "chassis power lost")
    f.later(f.world.rng.uniform(10, 40), repair, f, m)


def partition(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None:
        return
    f.open(m, "partition")
    f.world.partition(m, True)
    if f.world.rng.random() < 0.3:
        bmc_fault(f, m)
    d = f.duration(3, 30, forever=0.3)
    if d is not None:
        f.later(d, heal_partition, f, m)


def heal_partition(f: FaultScheduler, m: Machine) -> None:
    f.world.trace.fault("heal", m.name)
    f.world.partition(m, False)
    f.close(m)


def agent_stop(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None or m.agent is None:
        return
    f.open(m, "agent-stop", "(SIGTERM)")
    m.agent_wanted = False
    m.agent.stop_cleanly()
    m.agent = None
    if f.world.rng.random() < 0.5:
        # A node whose agent was stopped cleanly, then cut off (issue 12's first case).
        f.later(f.world.rng.uniform(1, 6), cut_after_stop, f, m)
    else:
        f.later(f.world.rng.uniform(10, 40), restart_agent, f, m)


def cut_after_stop(f: FaultScheduler, m: Machine) -> None:
    w = f.world
    if m.partitioned or not m.powered:
        restart_agent(f, m)
        return
    w.trace.fault("partition", f"{m.name} (agent stopped)")
    w.partition(m, True)
    if w.rng.random() < 0.6:
        # Lost: its BMC does not answer either, until the quiet phase (only a watchdog
        # could prove it off; this one was disarmed by the clean stop).
        m.lost = True
        for ch in channels_of(f, m):
            ch.faults = ChannelFaults(unreachable=True)
        w.trace.fault("bmc-unreachable", f"{m.name} all channels, until the quiet phase")
    else:
        f.later(w.rng.uniform(10, 40), restart_agent, f, m)


def restart_agent(f: FaultScheduler, m: Machine) -> None:
    w = f.world
    f.close(m)
    if m.partitioned:
        w.trace.fault("heal", m.name)
        w.partition(m, False)
    m.agent_wanted = True
    if m.agent is None and m.booted:
        w.trace.fault("agent-start", m.name)
        w.start_agent(m)


def agent_kill(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None or m.agent is None:
        return
    f.open(m, "agent-kill", "(SIGKILL)")
    m.agent.die()
    m.agent = None
    f.later(f.world.rng.uniform(2, 25), restart_agent, f, m)


def reboot(f: FaultScheduler) -> None:
    m = f.free_machine()
    if m is None:
        return
    f.open(m, "reboot")
    m.reset("rebooted")
    f.later(f.world.settings.boot_delay + 2, f.close, m)


def maintenance(f: FaultScheduler) -> None:
    w = f.world
    m = f.free_machine()
    if m is None or m.name not in w.api.nodes:
        return
    f.open(m, "maintenance")
    w.api.set_label(m.name, MAINTENANCE_LABEL, "true")
    if w.rng.random() < 0.6:
        f.later(w.rng.uniform(2, 6), maintenance_off, f, m)
    f.later(w.rng.uniform(20, 40), maintenance_end, f, m)


def maintenance_off(f: FaultScheduler, m: Machine) -> None:
    f.world.trace.fault("maintenance-power-off", m.name)
    m.change_power(_host(False), "switched off for maintenance")


def maintenance_end(f: FaultScheduler, m: Machine) -> None:
    w = f.world
    w.trace.fault("maintenance-end", m.name)
    m.change_power(_restore, "back from maintenance")
    w.api.set_label(m.name, MAINTENANCE_LABEL, None)
    f.close(m)


# -- BMC faults ----------------------------------------------------------------------------


def channels_of(f: FaultScheduler, m: Machine) -> list[Any]:
    w = f.world
    return [ch for (node, _), ch in w.channels.items() if node == m.name]


def bmc_fault(f: FaultScheduler, target: Machine | None = None) -> None:
    w = f.world
    rng = w.rng
    m = target or f.troubled_machine()
    if m is None:
        return
    channels = channels_of(f, m)
    ch = rng.choice(channels)
    kind = rng.choice(
        ("unreachable", "slow", "auth", "error", "ignore-off", "early-off", "off-delay")
    )
    faults = ChannelFaults()
    liar = any(c is not ch and c.faults.early_off for c in channels)
    if kind == "unreachable" and liar:
        # The witness of a channel that lies about Off stays: silenced, no read-back of
        # anyone's could tell the lie (an answering error still blocks the proof).
        kind = "error"
    if kind == "unreachable":
        faults.unreachable = True
    elif kind == "slow":
        faults.slow = rng.uniform(0.5, 4.0)
    elif kind == "auth":
        faults.auth = True
    elif kind == "error":
        faults.error = True
    elif kind == "ignore-off":
        faults.ignore_off = ch.kind is ChannelKind.BMC
    elif kind == "early-off":
        # Only where another channel reads the same host truthfully: a lone BMC that lies
        # about Off cannot be caught by any software (verify_all_channels exists for this).
        others = [
            c
            for c in channels
            if c is not ch
            and c.kind is ChannelKind.BMC
            and not c.faults.early_off
            and not c.faults.unreachable  # a silenced witness could not tell the lie
        ]
        faults.early_off = ch.kind is ChannelKind.BMC and bool(others)
        faults.off_delay = rng.uniform(3, 30)
        if not faults.early_off:
            kind = "off-delay"  # where no other channel could tell
    else:
        faults.off_delay = rng.uniform(1, 8)
    ch.faults = faults
    w.trace.fault(f"bmc-{kind}", f"{m.name}/{ch.device}")
    d = f.duration(5, 40, forever=0.3)
    if d is not None:
        f.later(d, _clear_channel, ch)


def channels_disagree(f: FaultScheduler) -> None:
    w = f.world
    rng = w.rng
    two = [
        m
        for m in w.machines.values()
        if sum(ch.kind is ChannelKind.BMC for ch in channels_of(f, m)) >= 2 and not m.lost
    ]
    troubled = [m for m in two if m.name in f.open_machines]
    pool = troubled or two
    if not pool:
        return
    m = rng.choice(pool)
    channels = [ch for ch in channels_of(f, m) if ch.kind is ChannelKind.BMC]
    early, other = rng.sample(channels, 2)
    if other.faults.early_off:
        return
    early.faults = ChannelFaults(early_off=True, off_delay=rng.uniform(5, 40))
    other.faults = ChannelFaults(error=True) if rng.random() < 0.5 else ChannelFaults(auth=True)
    w.trace.fault(
        "channels-disagree", f"{m.name}: {early.device} reads Off early, {other.device} errors"
    )
    d = f.duration(10, 40, forever=0.3)
    if d is not None:
        f.later(d, _clear_channel, early)
        f.later(d, _clear_channel, other)


def _host(on: bool) -> Callable[[Machine], None]:
    def change(m: Machine) -> None:
        m.host_on = on

    return change


def chassis_power(on: bool) -> Callable[[Machine], None]:
    """A power change that switches the chassis (mains) on or off."""

    def change(m: Machine) -> None:
        m.chassis = on

    return change


def _restore(m: Machine) -> None:
    m.chassis = True
    m.host_on = True
    m.outlets = [True] * len(m.outlets)


def _clear_channel(ch: Any) -> None:
    ch.faults = ChannelFaults()
