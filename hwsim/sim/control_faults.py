"""The faults of the control plane, drawn by `nodefence.hwsim.sim.faults.FaultScheduler`.

The broker (restart, lossy delivery), the leader's broker connection, the API server (errors,
timeouts, slowness, broken watches, silent watches and compaction, a leader cut off from it, a
record touched by someone else), the leader candidates (killed, paused), clocks (a wall clock
stepped), an operator's pause of fencing, and a VM that never starts again. Each takes the
scheduler `f` and draws from the run's random stream in the order it always has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodefence.agent.fencing.operation import RESTART_POLICIES
from nodefence.hwsim.sim.api import ApiChaos
from nodefence.hwsim.sim.broker import DeliveryChaos

if TYPE_CHECKING:
    from nodefence.hwsim.sim.candidates import Candidate
    from nodefence.hwsim.sim.faults import FaultScheduler


# -- broker and API ----------------------------------------------------------------------------


def broker_restart(f: FaultScheduler) -> None:
    w = f.world
    seconds = w.rng.uniform(1, 10)
    w.trace.fault("broker-restart", f"down {seconds:.1f} s")
    w.broker.go_down(seconds)


def broker_chaos(f: FaultScheduler) -> None:
    w = f.world
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


def leader_broker_loss(f: FaultScheduler) -> None:
    cand = f.leader()
    if cand is None or cand.broker.client is None:
        return
    f.world.trace.fault("leader-broker-loss", cand.proc.name)
    f.world.broker.drop(cand.broker.client, "connection lost")


def api_chaos(f: FaultScheduler) -> None:
    w = f.world
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


def watch_gap(f: FaultScheduler) -> None:
    """The leader's watches go silent (a congested API server, a stalled connection);
    then what they held arrives late, or they break; the history may be compacted
    meanwhile, so resuming them needs a new list (410)."""
    cand = f.leader()
    if cand is None:
        return
    w = f.world
    rng = w.rng
    seconds = rng.uniform(2, 40)
    then_break = rng.random() < 0.5
    w.api.watches.gap(cand.proc, seconds, then_break)
    detail = f"{cand.proc.name} {seconds:.1f} s, then {'break' if then_break else 'late'}"
    if rng.random() < 0.5:
        w.api.watches.compact()
        detail += ", history compacted"
    w.trace.fault("watch-gap", detail)


def api_cut(f: FaultScheduler) -> None:
    cand = f.leader()
    if cand is None:
        return
    cand.api_cut = True
    f.world.trace.fault("api-cut", cand.proc.name)
    f.later(f.world.rng.uniform(3, 30), api_back, f, cand)


def api_back(f: FaultScheduler, cand: Candidate) -> None:
    cand.api_cut = False
    f.world.trace.event("heal", f"{cand.proc.name} reaches the API again")


def record_touch(f: FaultScheduler) -> None:
    w = f.world
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


def leader_kill(f: FaultScheduler) -> None:
    cand = f.leader()
    if cand is not None:
        f.world.kill_candidate(cand, "(scheduled)")


def leader_pause(f: FaultScheduler) -> None:
    cand = f.leader()
    if cand is not None:
        seconds = f.world.rng.choice((2.0, 8.0, 20.0, 40.0)) * f.world.rng.uniform(0.8, 1.2)
        f.world.pause_candidate(cand, seconds)


def clock_step(f: FaultScheduler) -> None:
    w = f.world
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


def fencing_pause(f: FaultScheduler) -> None:
    """An operator pauses fencing (`nodefence pause`) for a while, or until the quiet
    phase (whose heal is the `resume`)."""
    w = f.world
    k = w.cfg.kube
    if w.api.paused_since is not None:
        return
    w.api.set_paused(k.namespace, k.lease_name, '{"reason": "simulated", "by": "sim"}')
    w.trace.fault("fencing-pause", "nodefence pause")
    lasts = f.duration(5.0, 40.0, forever=0.2)
    if lasts is not None:
        f.later(lasts, fencing_resume, f)


def fencing_resume(f: FaultScheduler) -> None:
    w = f.world
    w.api.set_paused(w.cfg.kube.namespace, w.cfg.kube.lease_name, "")
    w.trace.fault("fencing-resume", "nodefence resume")


def vm_stuck(f: FaultScheduler) -> None:
    w = f.world
    keys = sorted(
        k
        for k, vm in w.api.vms.items()
        if vm["spec"]["runPolicy"] in RESTART_POLICIES and k not in w.vm_controller.stuck
    )
    if keys:
        key = w.rng.choice(keys)
        w.vm_controller.stuck.add(key)
        w.trace.fault("vm-stuck", key)
