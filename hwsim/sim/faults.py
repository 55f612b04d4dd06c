"""The seeded fault scheduler: which fault, on what, when, for how long; then the quiet phase.

After `warmup` (the first leader hears every node for a full window), faults start at random
times (exponential gaps, mean `mean_gap`) until `warmup + fault_phase`. Each is drawn by weight
from `KINDS` and aimed at what makes it bite (a leader, a node already in trouble, a channel of
a node being fenced); most end after a random while, some last until the quiet phase. Machine
faults open at once are capped by `max_faulty`. Besides the clock-driven ones, *reactive*
faults hit the leader at the moments that matter: right after it stores a fencing record in a
given phase, it may be killed or paused (as `nodefence-hwsim chaos` does at each phase).

An operator's pause of all fencing (`fencing-pause`, the Lease annotation `nodefence pause`
writes) is one of the faults: no first power-off may go out once a leader has read it.

`heal()` starts the quiet phase: every fault is cleared except dead machines (powered off or
partitioned) and stuck VMs (a pause ends: `nodefence resume`), so the liveness invariants can
demand that each dead node with a reachable BMC is fenced and every operation ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.cluster import MAINTENANCE_LABEL
from agent.fencing_operation import RESTART_POLICIES
from hwsim.sim.api import ApiChaos
from hwsim.sim.bmc import ChannelFaults, ChannelKind
from hwsim.sim.broker import DeliveryChaos
from hwsim.sim.machines import Machine

if TYPE_CHECKING:
    from hwsim.sim.candidates import Candidate
    from hwsim.sim.world import World

KINDS: dict[str, int] = {
    "power-loss": 10,
    "chassis-loss": 3,
    "partition": 10,
    "agent-stop": 4,
    "agent-kill": 4,
    "reboot": 3,
    "maintenance": 3,
    "bmc-fault": 12,
    "channels-disagree": 5,
    "broker-restart": 3,
    "broker-chaos": 5,
    "leader-broker-loss": 3,
    "api-chaos": 5,
    "api-cut": 3,
    "watch-gap": 5,
    "record-touch": 3,
    "leader-kill": 6,
    "leader-pause": 6,
    "clock-step": 2,
    "vm-stuck": 3,
    "fencing-pause": 3,
}
MACHINE_KINDS = frozenset(
    {"power-loss", "chassis-loss", "partition", "agent-stop", "agent-kill", "reboot", "maintenance"}
)
REACTIVE_PHASES = ("Pending", "Fencing", "PoweredOff", "Recovering")


class FaultScheduler:
    """Draws and applies the faults of one run (see the module doc)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.open_machines: set[str] = set()  # machine faults not ended yet
        self.quiet = False
        self.reactive_left = 2
        self._names = sorted(KINDS)
        self._weights = [KINDS[k] for k in self._names]

    # -- timeline ------------------------------------------------------------------------------

    def start(self) -> None:
        """Plan the first fault."""
        s = self.world.settings
        self._at(s.warmup + self.world.rng.expovariate(1.0 / s.mean_gap), self._next)

    def _at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        w = self.world
        w.loop.call_at(t, fn, *args, context=w.loop.harness)

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        w = self.world
        w.loop.call_later(delay, self._unless_quiet, fn, args, context=w.loop.harness)

    def _unless_quiet(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        if not self.quiet:
            fn(*args)

    def _next(self) -> None:
        w = self.world
        s = w.settings
        if self.quiet or w.loop.time() >= s.warmup + s.fault_phase:
            return
        kind = w.rng.choices(self._names, self._weights)[0]
        getattr(self, "_" + kind.replace("-", "_"))()
        self._at(w.loop.time() + w.rng.expovariate(1.0 / s.mean_gap), self._next)

    # -- targets -------------------------------------------------------------------------------

    def _free_machine(self) -> Machine | None:
        w = self.world
        if len(self.open_machines) >= w.settings.max_faulty:
            return None
        free = [m for name, m in w.machines.items() if name not in self.open_machines]
        free = [m for m in free if m.powered and m.booted and not m.partitioned]
        return w.rng.choice(free) if free else None

    def _troubled_machine(self) -> Machine | None:
        """A machine with an open fault, else any (never a lost one: its BMC stays silent)."""
        w = self.world
        names = [n for n in sorted(self.open_machines) if not w.machines[n].lost]
        names = names or [n for n in sorted(w.machines) if not w.machines[n].lost]
        return w.machines[w.rng.choice(names)] if names else None

    def _leader(self) -> Candidate | None:
        w = self.world
        alive = [c for c in w.candidates.values() if c.alive]
        leading = [c for c in alive if c.leader is not None]
        pool = leading if leading and w.rng.random() < 0.8 else alive
        return w.rng.choice(pool) if pool else None

    def _duration(self, lo: float, hi: float, forever: float = 0.0) -> float | None:
        """Seconds the fault lasts, or None: until the quiet phase (with odds `forever`)."""
        rng = self.world.rng
        return None if rng.random() < forever else rng.uniform(lo, hi)

    def _open(self, m: Machine, kind: str, detail: str = "") -> None:
        self.open_machines.add(m.name)
        self.world.trace.fault(kind, f"{m.name}{' ' + detail if detail else ''}")

    def _close(self, m: Machine) -> None:
        self.open_machines.discard(m.name)

    # -- machine faults ------------------------------------------------------------------------

    def _power_loss(self) -> None:
        m = self._free_machine()
        if m is None:
            return
        self._open(m, "power-loss")
        m.change_power(_host(False), "power lost")
        d = self._duration(15, 45, forever=0.4)
        if d is not None:
            self._later(d, self._repair, m)

    def _repair(self, m: Machine) -> None:
        self.world.trace.fault("repair", m.name)
        m.change_power(_restore, "repaired")
        self._close(m)

    def _chassis_loss(self) -> None:
        m = self._free_machine()
        if m is None:
            return
        self._open(m, "chassis-loss")
        m.change_power(_chassis(False), "chassis power lost")
        self._later(self.world.rng.uniform(10, 40), self._repair, m)

    def _partition(self) -> None:
        m = self._free_machine()
        if m is None:
            return
        self._open(m, "partition")
        self.world.partition(m, True)
        if self.world.rng.random() < 0.3:
            self._bmc_fault(m)
        d = self._duration(3, 30, forever=0.3)
        if d is not None:
            self._later(d, self._heal_partition, m)

    def _heal_partition(self, m: Machine) -> None:
        self.world.trace.fault("heal", m.name)
        self.world.partition(m, False)
        self._close(m)

    def _agent_stop(self) -> None:
        m = self._free_machine()
        if m is None or m.agent is None:
            return
        self._open(m, "agent-stop", "(SIGTERM)")
        m.agent_wanted = False
        m.agent.stop_cleanly()
        m.agent = None
        if self.world.rng.random() < 0.5:
            # A node whose agent was stopped cleanly, then cut off (issue 12's first case).
            self._later(self.world.rng.uniform(1, 6), self._cut_after_stop, m)
        else:
            self._later(self.world.rng.uniform(10, 40), self._restart_agent, m)

    def _cut_after_stop(self, m: Machine) -> None:
        w = self.world
        if m.partitioned or not m.powered:
            self._restart_agent(m)
            return
        w.trace.fault("partition", f"{m.name} (agent stopped)")
        w.partition(m, True)
        if w.rng.random() < 0.6:
            # Lost: its BMC does not answer either, until the quiet phase (only a watchdog
            # could prove it off; this one was disarmed by the clean stop).
            m.lost = True
            for ch in self._channels(m):
                ch.faults = ChannelFaults(unreachable=True)
            w.trace.fault("bmc-unreachable", f"{m.name} all channels, until the quiet phase")
        else:
            self._later(w.rng.uniform(10, 40), self._restart_agent, m)

    def _restart_agent(self, m: Machine) -> None:
        w = self.world
        self._close(m)
        if m.partitioned:
            w.trace.fault("heal", m.name)
            w.partition(m, False)
        m.agent_wanted = True
        if m.agent is None and m.booted:
            w.trace.fault("agent-start", m.name)
            w.start_agent(m)

    def _agent_kill(self) -> None:
        m = self._free_machine()
        if m is None or m.agent is None:
            return
        self._open(m, "agent-kill", "(SIGKILL)")
        m.agent.die()
        m.agent = None
        self._later(self.world.rng.uniform(2, 25), self._restart_agent, m)

    def _reboot(self) -> None:
        m = self._free_machine()
        if m is None:
            return
        self._open(m, "reboot")
        m.reset("rebooted")
        self._later(self.world.settings.boot_delay + 2, self._close, m)

    def _maintenance(self) -> None:
        w = self.world
        m = self._free_machine()
        if m is None or m.name not in w.api.nodes:
            return
        self._open(m, "maintenance")
        w.api.set_label(m.name, MAINTENANCE_LABEL, "true")
        if w.rng.random() < 0.6:
            self._later(w.rng.uniform(2, 6), self._maintenance_off, m)
        self._later(w.rng.uniform(20, 40), self._maintenance_end, m)

    def _maintenance_off(self, m: Machine) -> None:
        self.world.trace.fault("maintenance-power-off", m.name)
        m.change_power(_host(False), "switched off for maintenance")

    def _maintenance_end(self, m: Machine) -> None:
        w = self.world
        w.trace.fault("maintenance-end", m.name)
        m.change_power(_restore, "back from maintenance")
        w.api.set_label(m.name, MAINTENANCE_LABEL, None)
        self._close(m)

    # -- BMC faults ----------------------------------------------------------------------------

    def _channels(self, m: Machine) -> list[Any]:
        w = self.world
        return [ch for (node, _), ch in w.channels.items() if node == m.name]

    def _bmc_fault(self, target: Machine | None = None) -> None:
        w = self.world
        rng = w.rng
        m = target or self._troubled_machine()
        if m is None:
            return
        channels = self._channels(m)
        ch = rng.choice(channels)
        kind = rng.choice(
            ("unreachable", "slow", "auth", "error", "ignore-off", "early-off", "off-delay")
        )
        f = ChannelFaults()
        liar = any(c is not ch and c.faults.early_off for c in channels)
        if kind == "unreachable" and liar:
            # The witness of a channel that lies about Off stays: silenced, no read-back of
            # anyone's could tell the lie (an answering error still blocks the proof).
            kind = "error"
        if kind == "unreachable":
            f.unreachable = True
        elif kind == "slow":
            f.slow = rng.uniform(0.5, 4.0)
        elif kind == "auth":
            f.auth = True
        elif kind == "error":
            f.error = True
        elif kind == "ignore-off":
            f.ignore_off = ch.kind is ChannelKind.BMC
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
            f.early_off = ch.kind is ChannelKind.BMC and bool(others)
            f.off_delay = rng.uniform(3, 30)
            if not f.early_off:
                kind = "off-delay"  # where no other channel could tell
        else:
            f.off_delay = rng.uniform(1, 8)
        ch.faults = f
        w.trace.fault(f"bmc-{kind}", f"{m.name}/{ch.device}")
        d = self._duration(5, 40, forever=0.3)
        if d is not None:
            self._later(d, _clear_channel, ch)

    def _channels_disagree(self) -> None:
        w = self.world
        rng = w.rng
        two = [
            m
            for m in w.machines.values()
            if sum(ch.kind is ChannelKind.BMC for ch in self._channels(m)) >= 2 and not m.lost
        ]
        troubled = [m for m in two if m.name in self.open_machines]
        pool = troubled or two
        if not pool:
            return
        m = rng.choice(pool)
        channels = [ch for ch in self._channels(m) if ch.kind is ChannelKind.BMC]
        early, other = rng.sample(channels, 2)
        if other.faults.early_off:
            return
        early.faults = ChannelFaults(early_off=True, off_delay=rng.uniform(5, 40))
        other.faults = ChannelFaults(error=True) if rng.random() < 0.5 else ChannelFaults(auth=True)
        w.trace.fault(
            "channels-disagree", f"{m.name}: {early.device} reads Off early, {other.device} errors"
        )
        d = self._duration(10, 40, forever=0.3)
        if d is not None:
            self._later(d, _clear_channel, early)
            self._later(d, _clear_channel, other)

    # -- broker and API ------------------------------------------------------------------------

    def _broker_restart(self) -> None:
        w = self.world
        seconds = w.rng.uniform(1, 10)
        w.trace.fault("broker-restart", f"down {seconds:.1f} s")
        w.broker.go_down(seconds)

    def _broker_chaos(self) -> None:
        w = self.world
        rng = w.rng
        w.broker.chaos = DeliveryChaos(
            drop=rng.choice((0.0, 0.05, 0.3)),
            duplicate=rng.choice((0.0, 0.1, 0.3)),
            reorder=rng.choice((0.0, 0.2, 0.5)),
            max_delay=rng.choice((0.0, 0.5, 3.0, 6.0)),
        )
        seconds = rng.uniform(5, 25)
        w.broker.chaos_until = w.loop.time() + seconds
        w.trace.fault("broker-chaos", f"{w.broker.chaos} for {seconds:.1f} s")

    def _leader_broker_loss(self) -> None:
        cand = self._leader()
        if cand is None or cand.broker.client is None:
            return
        self.world.trace.fault("leader-broker-loss", cand.proc.name)
        self.world.broker.drop(cand.broker.client, "connection lost")

    def _api_chaos(self) -> None:
        w = self.world
        rng = w.rng
        chaos = ApiChaos(
            error=rng.choice((0.0, 0.1, 0.4)),
            timeout=rng.choice((0.0, 0.1, 0.3)),
            landed=0.5,
            slow=rng.choice((0.0, 0.5, 2.0)),
        )
        seconds = rng.uniform(5, 25)
        until = w.loop.time() + seconds
        share = rng.choice((0.0, 0.5, 1.0))  # of the watches the troubled server ends
        for cand in w.candidates.values():
            cand.api.chaos = chaos
            cand.api.chaos_until = until
            w.api.watches.slow_down(cand.proc, until, chaos.slow)
            broken = w.api.watches.break_watches(cand.proc, share)
            if broken:
                w.trace.faults["watch-break"] += broken
        w.trace.fault("api-chaos", f"{chaos} for {seconds:.1f} s")

    def _watch_gap(self) -> None:
        """The leader's watches go silent (a congested API server, a stalled connection);
        then what they held arrives late, or they break; the history may be compacted
        meanwhile, so resuming them needs a new list (410)."""
        cand = self._leader()
        if cand is None:
            return
        w = self.world
        rng = w.rng
        seconds = rng.uniform(2, 40)
        then_break = rng.random() < 0.5
        w.api.watches.gap(cand.proc, seconds, then_break)
        detail = f"{cand.proc.name} {seconds:.1f} s, then {'break' if then_break else 'late'}"
        if rng.random() < 0.5:
            w.api.watches.compact()
            detail += ", history compacted"
        w.trace.fault("watch-gap", detail)

    def _api_cut(self) -> None:
        cand = self._leader()
        if cand is None:
            return
        cand.api_cut = True
        self.world.trace.fault("api-cut", cand.proc.name)
        self._later(self.world.rng.uniform(3, 30), self._api_back, cand)

    def _api_back(self, cand: Candidate) -> None:
        cand.api_cut = False
        self.world.trace.event("heal", f"{cand.proc.name} reaches the API again")

    def _record_touch(self) -> None:
        w = self.world
        names = sorted(
            name
            for items in w.api.records.values()
            for name, body in items.items()
            if (body.get("status") or {}).get("phase")
            not in ("Recovered", "RecoveryIncomplete", "Aborted")
        )
        if names:
            name = w.rng.choice(names)
            w.api.touch_record(name)
            w.trace.fault("record-touch", name)

    # -- candidates and clocks -----------------------------------------------------------------

    def _leader_kill(self) -> None:
        cand = self._leader()
        if cand is not None:
            self.world.kill_candidate(cand, "(scheduled)")

    def _leader_pause(self) -> None:
        cand = self._leader()
        if cand is not None:
            seconds = self.world.rng.choice((2.0, 8.0, 20.0, 40.0)) * self.world.rng.uniform(
                0.8, 1.2
            )
            self.world.pause_candidate(cand, seconds)

    def _clock_step(self) -> None:
        w = self.world
        step = w.rng.choice((-1, 1)) * w.rng.choice((5.0, 20.0, 120.0))
        alive = [c for c in w.candidates.values() if c.alive]
        if alive and w.rng.random() < 0.5:
            cand = w.rng.choice(alive)
            cand.wall_step += step
            w.trace.fault("clock-step", f"{cand.proc.name} wall clock {step:+g} s")
            return
        m = w.machines[w.rng.choice(sorted(w.machines))]
        m.wall_step += step
        w.trace.fault("clock-step", f"{m.name} wall clock {step:+g} s")

    def _fencing_pause(self) -> None:
        """An operator pauses fencing (`nodefence pause`) for a while, or until the quiet
        phase (whose heal is the `resume`)."""
        w = self.world
        k = w.cfg.kube
        if w.api.paused_since is not None:
            return
        w.api.set_paused(k.namespace, k.lease_name, '{"reason": "simulated", "by": "sim"}')
        w.trace.fault("fencing-pause", "nodefence pause")
        lasts = self._duration(5.0, 40.0, forever=0.2)
        if lasts is not None:
            self._later(lasts, self._fencing_resume)

    def _fencing_resume(self) -> None:
        w = self.world
        w.api.set_paused(w.cfg.kube.namespace, w.cfg.kube.lease_name, "")
        w.trace.fault("fencing-resume", "nodefence resume")

    def _vm_stuck(self) -> None:
        w = self.world
        keys = sorted(
            k
            for k, vm in w.api.vms.items()
            if vm["spec"]["runPolicy"] in RESTART_POLICIES and k not in w.vm_controller.stuck
        )
        if keys:
            key = w.rng.choice(keys)
            w.vm_controller.stuck.add(key)
            w.trace.fault("vm-stuck", key)

    # -- reactive ------------------------------------------------------------------------------

    def record_written(self, cand: Candidate, status: dict[str, Any]) -> None:
        """A leader stored a fencing record: now and then, kill or pause it right after."""
        w = self.world
        if self.quiet or self.reactive_left <= 0 or status.get("phase") not in REACTIVE_PHASES:
            return
        if w.rng.random() >= 0.25:
            return
        self.reactive_left -= 1
        delay = w.rng.uniform(0.0, 0.3)
        if w.rng.random() < 0.5:
            self._later(delay, self._react_kill, cand, str(status.get("phase")))
        else:
            self._later(delay, self._react_pause, cand)

    def _react_kill(self, cand: Candidate, phase: str) -> None:
        if cand.alive:
            self.world.kill_candidate(cand, f"(after storing {phase})")

    def _react_pause(self, cand: Candidate) -> None:
        w = self.world
        if cand.alive:
            w.pause_candidate(cand, w.rng.choice((5.0, 20.0, 40.0)))

    # -- the quiet phase -----------------------------------------------------------------------

    def heal(self) -> None:
        """Stop injecting; clear every fault but dead machines and stuck VMs."""
        w = self.world
        self.quiet = True
        w.trace.event("quiet", "faults stop; every fault but dead machines is healed")
        w.broker.down_until = 0.0
        w.broker.chaos_until = 0.0
        for ch in w.channels.values():
            if not ch.machine.lost:
                ch.faults = ChannelFaults()
        w.api.watches.heal()
        for cand in list(w.candidates.values()):
            cand.api.chaos_until = 0.0
            cand.api_cut = False
            cand.wall_step = 0.0
            if cand.proc.paused_at is not None:
                w.resume_candidate(cand)
            if not cand.alive:
                w.start_candidate(cand.identity, cand.drift)
        for name in sorted(w.api.maintenance_since):
            w.api.set_label(name, MAINTENANCE_LABEL, None)
        if w.api.paused_since is not None:
            self._fencing_resume()
        for m in w.machines.values():
            m.wall_step = 0.0
            if not m.chassis:
                m.change_power(_chassis(True), "chassis power back")
            m.agent_wanted = True
            if m.agent is None and m.booted:
                w.start_agent(m)


def _host(on: bool) -> Callable[[Machine], None]:
    def change(m: Machine) -> None:
        m.host_on = on

    return change


def _chassis(on: bool) -> Callable[[Machine], None]:
    def change(m: Machine) -> None:
        m.chassis = on

    return change


def _restore(m: Machine) -> None:
    m.chassis = True
    m.host_on = True
    m.outlets = [True] * len(m.outlets)


def _clear_channel(ch: Any) -> None:
    ch.faults = ChannelFaults()
