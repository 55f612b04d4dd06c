"""Run one seed: build its world, play its faults, check the invariants, tear it down.

Timeline: `warmup` seconds without faults, `fault_phase` seconds of faults, then the quiet
phase (`FaultScheduler.heal`). In the quiet phase the run ends as soon as it is *settled* (every
dead node with a reachable BMC fenced, every operation finished, no VM waiting to start), or
at `quiet_bound`, where the liveness invariants are judged:
- `not-fenced`: a node that was dead (powered off or partitioned) when the faults stopped is
  still not fenced: no FenceOperation of it says offProven and nodeDeleted. Not
  demanded when more nodes were dead than `max_unhealthy` allows (the storm guard rightly
  holds; counted over the machines when the faults stop, or by the leader itself, whose Node
  count shrinks as it deletes fenced Nodes) or when the node was in maintenance, nor while
  fencing is paused (the quiet phase ends a pause; a paused cluster fences nobody by design).
- `stuck-operation`: a FenceOperation is still unfinished `quiet_bound` seconds after the
  faults stopped (except on a *lost* machine: cut off with no BMC answering; only a watchdog
  proof can end those; and, while the storm guard rightly holds every decision, an operation
  that has sent no power-off yet: it waits for a verdict the guard does not allow).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from nodefence.agent.detection.policy import AlertKind, MaxUnhealthy
from nodefence.agent.fencing.operation import FINAL, Phase
from nodefence.agent.observe import metrics
from nodefence.hwsim.sim.invariants import Violation
from nodefence.hwsim.sim.settings import NAMESPACE, SimSettings, settings_for
from nodefence.hwsim.sim.trace import capture_agent_logs
from nodefence.hwsim.sim.vloop import Livelock
from nodefence.hwsim.sim.world import World

FINAL_PHASES = frozenset(p.value for p in FINAL)
EVENTS_SHOWN = 40  # last events printed with a violation
LOST_GRACE = 40.0  # quiet seconds a run waits for a watchdog proof of a lost machine


@dataclass
class RunResult:
    """What one seed did."""

    seed: int
    steps: int
    sim_seconds: float
    faults: collections.Counter[str]
    violations: list[Violation]
    events: list[str]
    log_tail: list[str]
    settled: bool
    storm: bool
    power_offs: int
    records: int
    fenced: int
    crashes: int
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


Mutation = Callable[[World], None]


class _NoMetric:
    """Stands in for a Prometheus metric during a run: metrics are output, never input, of
    the decisions, and updating real ones costs more than the rest of a judging round."""

    def labels(self, *_: object) -> _NoMetric:
        return self

    def inc(self, *_: object) -> None:
        return None

    def set(self, *_: object) -> None:
        return None

    def observe(self, *_: object) -> None:
        return None


@contextlib.contextmanager
def _metrics_off() -> Iterator[None]:
    names = [n for n, v in vars(metrics).items() if isinstance(v, MetricWrapperBase)]
    saved = {n: getattr(metrics, n) for n in names}
    for n in names:
        setattr(metrics, n, _NoMetric())
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(metrics, n, v)


def run_seed(
    seed: int,
    *,
    fault_phase: float | None = None,
    mutate: Mutation | None = None,
) -> RunResult:
    """Simulate seed `seed` (see the module doc); `mutate` may alter the world before it
    starts (tests inject bugs with it)."""
    started = time.perf_counter()
    settings = (
        settings_for(seed) if fault_phase is None else settings_for(seed, fault_phase=fault_phase)
    )
    world = World(settings)
    if mutate is not None:
        mutate(world)
    capture_agent_logs(world.trace)
    # No garbage collection during a run: a collection finalizes whatever unreachable
    # coroutines and async generators it finds, and their finalizers schedule callbacks, so
    # when it ran (after how many allocations, in this process) would change the run's steps.
    # Once the world is garbage, the run's objects are collected at once: they are all in the
    # youngest generations, so this walks what the run made, not the whole process.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _metrics_off():
            result = _play(world, settings)
    finally:
        capture_agent_logs(None)
        _tear_down(world)
        del world
        gc.collect(1)
        if collecting:
            gc.enable()
    result.wall_seconds = time.perf_counter() - started
    return result


def _play(world: World, s: SimSettings) -> RunResult:
    loop = world.loop
    quiet_at = s.warmup + s.fault_phase
    state: dict[str, Any] = {"settled": False, "storm": False, "expected": set()}

    def quiet() -> None:
        world.faults.heal()
        dead = {
            name
            for name, m in world.machines.items()
            if not m.powered or m.partitioned or not m.chassis
        }
        limit = MaxUnhealthy.parse(world.cfg.max_unhealthy).limit(len(world.machines))
        state["storm"] = len(dead) > limit
        # Only a node whose BMC answers can be demanded fenced (a lost one may stay unfenced).
        reachable = {n for n in dead if not world.machines[n].lost}
        state["expected"] = set() if state["storm"] else reachable
        loop.call_later(1.0, check, context=loop.harness)

    def check() -> None:
        now = loop.time()
        if _leader_holds_a_storm(world):
            # The leader's own count (Nodes deleted since shrink its denominator) says storm:
            # it rightly fences nobody; nothing can be demanded of it.
            state["storm"], state["expected"] = True, set()
        # A lost machine's operation can only end by a watchdog proof: give it time to come.
        waiting = world.cfg.fencing.self_fence and now < quiet_at + LOST_GRACE
        lost = any(m.lost for m in world.machines.values())
        if not (waiting and lost) and _settled(world, state["expected"], state["storm"]):
            state["settled"] = True
            loop.stop()
            return
        if now >= quiet_at + s.quiet_bound:
            _judge_liveness(world, state["expected"], state["storm"])
            loop.stop()
            return
        loop.call_later(1.0, check, context=loop.harness)

    world.start()
    world.faults.start()
    loop.call_at(quiet_at, quiet, context=loop.harness)
    try:
        loop.run_forever()
    except Livelock as err:
        world.invariants.violate("livelock", "", str(err))
    inv = world.invariants
    records = world.api.records.get(NAMESPACE, {})
    return RunResult(
        seed=s.seed,
        steps=loop.steps,
        sim_seconds=loop.time(),
        faults=world.trace.faults,
        violations=list(inv.violations),
        events=world.trace.lines(),
        log_tail=list(world.trace.log_tail),
        settled=state["settled"],
        storm=state["storm"],
        power_offs=inv.power_offs,
        records=len(records),
        fenced=sum(1 for r in records.values() if (r.get("status") or {}).get("nodeDeleted")),
        crashes=world.crashes,
    )


def _leader_holds_a_storm(world: World) -> bool:
    """Whether a leading candidate's last decision was frozen by the storm guard."""
    for cand in world.candidates.values():
        leader = cand.lc.leader if cand.alive else None
        decision = leader.last_decision if leader is not None else None
        if decision is not None and any(a.kind is AlertKind.STORM for a in decision.alerts):
            return True
    return False


def _fenced(world: World, node: str) -> bool:
    """A record of `node` says offProven and nodeDeleted (its VMs are `stuck-operation`'s)."""
    for body in world.api.records.get(NAMESPACE, {}).values():
        st = body.get("status") or {}
        if (
            (body.get("spec") or {}).get("nodeName") == node
            and st.get("offProven")
            and st.get("nodeDeleted")
        ):
            return True
    return False


def _unfinished(world: World, storm: bool) -> list[str]:
    """Unfinished operations, but those of lost machines (no BMC answers: they may wait) and,
    in a storm, those that sent no power-off yet (the storm guard holds their verdict)."""
    out = []
    for name, body in world.api.records.get(NAMESPACE, {}).items():
        node = world.machines.get(str((body.get("spec") or {}).get("nodeName", "")))
        if node is not None and node.lost:
            continue
        if storm and not (body.get("status") or {}).get("powerOffSent"):
            continue
        if (body.get("status") or {}).get("phase", Phase.PENDING.value) not in FINAL_PHASES:
            out.append(name)
    return sorted(out)


def _settled(world: World, expected: set[str], storm: bool) -> bool:
    if _unfinished(world, storm):
        return False
    if any(not _fenced(world, n) for n in expected):
        return False
    waiting = ("Starting",)
    return not any(
        (vm.get("status") or {}).get("phase") in waiting for vm in world.api.vms.values()
    )


def _judge_liveness(world: World, expected: set[str], storm: bool) -> None:
    inv = world.invariants
    bound = world.settings.quiet_bound
    if world.api.paused_since is not None:
        expected = set()  # paused: nobody is fenced, by design
    for node in sorted(expected):
        if not _fenced(world, node):
            inv.violate(
                "not-fenced",
                node,
                f"dead when the faults stopped, BMC reachable, not fenced {bound:g} s later",
            )
    for name in _unfinished(world, storm):
        body = world.api.records[NAMESPACE][name]
        st = body.get("status") or {}
        inv.violate(
            "stuck-operation",
            str((body.get("spec") or {}).get("nodeName", "")),
            f"{name} still {st.get('phase')} {bound:g} s after the faults stopped"
            f" ({st.get('reason', '')})",
        )


def _tear_down(world: World) -> None:
    """Close every coroutine the run left suspended, so nothing runs or complains later."""
    loop = world.loop
    tasks = list(asyncio.all_tasks(loop))
    loop.close()
    for task in tasks:
        coro = task.get_coro()
        with contextlib.suppress(BaseException):
            coro.close()
