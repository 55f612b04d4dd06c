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

from nodefence.agent.kube.client import MAINTENANCE_LABEL
from nodefence.hwsim.sim import control_faults, machine_faults
from nodefence.hwsim.sim.bmc import ChannelFaults
from nodefence.hwsim.sim.machines import Machine

if TYPE_CHECKING:
    from nodefence.hwsim.sim.candidates import Candidate
    from nodefence.hwsim.sim.world import World

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

    def later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Call `fn(*args)` in `delay` seconds, unless the quiet phase has begun by then."""
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
        ACTIONS[kind](self)
        self._at(w.loop.time() + w.rng.expovariate(1.0 / s.mean_gap), self._next)

    # -- targets -------------------------------------------------------------------------------

    def free_machine(self) -> Machine | None:
        """A running machine without an open fault, or None (none, or `max_faulty` open)."""
        w = self.world
        if len(self.open_machines) >= w.settings.max_faulty:
            return None
        free = [m for name, m in w.machines.items() if name not in self.open_machines]
        free = [m for m in free if m.powered and m.booted and not m.partitioned]
        return w.rng.choice(free) if free else None

    def troubled_machine(self) -> Machine | None:
        """A machine with an open fault, else any (never a lost one: its BMC stays silent)."""
        w = self.world
        names = [n for n in sorted(self.open_machines) if not w.machines[n].lost]
        names = names or [n for n in sorted(w.machines) if not w.machines[n].lost]
        return w.machines[w.rng.choice(names)] if names else None

    def leader(self) -> Candidate | None:
        """A live candidate, most often a leading one (None: none alive)."""
        w = self.world
        alive = [c for c in w.candidates.values() if c.alive]
        leading = [c for c in alive if c.leader is not None]
        pool = leading if leading and w.rng.random() < 0.8 else alive
        return w.rng.choice(pool) if pool else None

    def duration(self, lo: float, hi: float, forever: float = 0.0) -> float | None:
        """Seconds the fault lasts, or None: until the quiet phase (with odds `forever`)."""
        rng = self.world.rng
        return None if rng.random() < forever else rng.uniform(lo, hi)

    def open(self, m: Machine, kind: str, detail: str = "") -> None:
        """A machine fault of `kind` begins on `m` (counted and logged)."""
        self.open_machines.add(m.name)
        self.world.trace.fault(kind, f"{m.name}{' ' + detail if detail else ''}")

    def close(self, m: Machine) -> None:
        """The machine fault on `m` has ended."""
        self.open_machines.discard(m.name)

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
            self.later(delay, self._react_kill, cand, str(status.get("phase")))
        else:
            self.later(delay, self._react_pause, cand)

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
            control_faults.fencing_resume(self)
        for m in w.machines.values():
            m.wall_step = 0.0
            if not m.chassis:
                m.change_power(machine_faults.chassis_power(True), "chassis power back")
            m.agent_wanted = True
            if m.agent is None and m.booted:
                w.start_agent(m)


# Each kind of `KINDS`: the function that injects it.
ACTIONS: dict[str, Callable[[FaultScheduler], None]] = {
    "power-loss": machine_faults.power_loss,
    "chassis-loss": machine_faults.chassis_loss,
    "partition": machine_faults.partition,
    "agent-stop": machine_faults.agent_stop,
    "agent-kill": machine_faults.agent_kill,
    "reboot": machine_faults.reboot,
    "maintenance": machine_faults.maintenance,
    "bmc-fault": machine_faults.bmc_fault,
    "channels-disagree": machine_faults.channels_disagree,
    "broker-restart": control_faults.broker_restart,
    "broker-chaos": control_faults.broker_chaos,
    "leader-broker-loss": control_faults.leader_broker_loss,
    "api-chaos": control_faults.api_chaos,
    "api-cut": control_faults.api_cut,
    "watch-gap": control_faults.watch_gap,
    "record-touch": control_faults.record_touch,
    "leader-kill": control_faults.leader_kill,
    "leader-pause": control_faults.leader_pause,
    "clock-step": control_faults.clock_step,
    "vm-stuck": control_faults.vm_stuck,
    "fencing-pause": control_faults.fencing_pause,
}
