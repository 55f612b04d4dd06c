"""The fault schedule of a chaos run: a pure function of (seed, duration, nodes, settings).

Same inputs, same schedule: a failing run is replayed by its seed. Faults come as episodes
that hold one or two *slots* (a node, or "" for whoever leads) from a start action to an end
action, some with steps in between; at most `max_faulty` slots are held at once, each by one
episode, and every episode ends before the run's duration so the cluster is whole again for the
final check. Broker restarts are instantaneous and cluster-wide; they hold no slot but are
spaced by `broker_gap` and kept out of `quiet` episodes (those that wait for one exact moment).

`settings.required` start actions are placed first, once each, spread over the run (on their
own random stream), wherever they fit; the random faults then fill the rest. With no required
actions (the default settings) the schedule is the one this module always made for a seed.

A share (`leader_victims`) of the random power losses carries `params={"victim": "leader"}`:
the runner cuts the machine of whoever leads at that moment instead (when it is free), so the
leader's own machine (and any broker living on it) is a victim too. That choice comes from its
own random stream, so it changes no other step of any seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.chaos.actions import (
    BMC_FAULTS,
    CLASSIC_KINDS,
    END_ACTION,
    PHASE_KILLS,
    QUIET,
    START_KIND,
    Action,
    FaultKind,
    Step,
)
from nodefence.hwsim.chaos.episodes import Plan, episode_steps, slots_of

__all__ = [
    "BMC_FAULTS",
    "CLASSIC_KINDS",
    "END_ACTION",
    "ISSUE_12_ACTIONS",
    "PHASE_KILLS",
    "START_KIND",
    "Action",
    "ChaosSettings",
    "FaultKind",
    "Step",
    "make_schedule",
    "open_episodes_at",
    "watchdog_settings",
]


def _classic_weights() -> dict[str, float]:
    return {
        Action.POWER_LOSS.value: 3.0,
        Action.PARTITION.value: 2.0,
        Action.BMC_FAULT.value: 1.5,
        Action.BROKER_RESTART.value: 0.7,
        Action.LEADER_KILL.value: 1.0,
        Action.MAINTENANCE_ENTER.value: 1.0,
    }


def _holds() -> dict[str, tuple[float, float]]:
    # A phase kill or a save timeout waits for a fence of its victim (detection ~4 s, maybe a
    # new leader's first window), then for the next leader to finish it: they last longest.
    return {
        Action.POWER_LOSS.value: (14.0, 24.0),
        Action.PARTITION.value: (14.0, 24.0),
        Action.BMC_FAULT.value: (5.0, 15.0),
        Action.LEADER_KILL.value: (4.0, 10.0),
        Action.MAINTENANCE_ENTER.value: (14.0, 22.0),
        # Cut off 2-4 s after the stop, a stopped agent's node is declared dead only once its
        # kubelet Lease is stale (20 s in the default profile), then the walk and the
        # watchdog deadline (~6 s): ~30 s.
        Action.AGENT_STOP.value: (40.0, 44.0),
        Action.LEADER_KILL_PENDING.value: (20.0, 24.0),
        Action.LEADER_KILL_SENT.value: (20.0, 24.0),
        Action.LEADER_KILL_RECOVERING.value: (20.0, 24.0),
        Action.CHANNEL_ERROR.value: (12.0, 18.0),
        # A victim that stays on and is cut off: `not-fenced` gives it 25 s to be fenced.
        Action.CHANNEL_LIE.value: (26.0, 30.0),
        Action.PDU_NODE_DOWN.value: (16.0, 24.0),
        Action.RECORD_SAVE_TIMEOUT.value: (20.0, 24.0),
        Action.BMC_PARTITION.value: (12.0, 18.0),
    }


@dataclass(frozen=True)
class ChaosSettings:
    """How dense and how long the faults are; defaults suit the short (CI) cluster timings.

    `holds` gives, per starting action, the (min, max) seconds an episode lasts; a power
    loss or partition must last long enough for a fence (detection ~4 s, a new leader's first
    window, the power walk) or it mostly tests the abort path instead. `required` start
    actions appear at least once when the run is long enough (see the module doc);
    `pdu_nodes` are the nodes fed by a PDU outlet (`pdu-node-down` picks among them).
    """

    max_faulty: int = 2
    warmup: float = 5.0  # quiet seconds first: the leader hears everyone for a full window
    mean_gap: float = 4.0  # mean seconds between two fault starts
    tail: float = 3.0  # every episode ends this long before the run does
    broker_gap: float = 25.0
    leader_victims: float = 0.3  # share of random power losses aimed at the leader's machine
    weights: dict[str, float] = field(default_factory=_classic_weights)
    holds: dict[str, tuple[float, float]] = field(default_factory=_holds)
    required: tuple[str, ...] = ()
    pdu_nodes: tuple[str, ...] = ()


# Start actions of the faults that expose the fencing path's defects (issue 12); the schedule
# of `chaos --watchdog` places each at least once and draws them at random too.
ISSUE_12_ACTIONS: tuple[Action, ...] = (
    Action.AGENT_STOP,
    Action.LEADER_KILL_PENDING,
    Action.LEADER_KILL_SENT,
    Action.LEADER_KILL_RECOVERING,
    Action.CHANNEL_ERROR,
    Action.CHANNEL_LIE,
    Action.PDU_NODE_DOWN,
    Action.RECORD_SAVE_TIMEOUT,
    Action.BMC_PARTITION,
)


def watchdog_settings(pdu_nodes: Sequence[str] = (), **changes: Any) -> ChaosSettings:
    """The settings of `chaos --watchdog`: the classic faults plus every issue-12 fault, each
    of those required once (`pdu-node-down` only with a PDU node)."""
    required = tuple(
        a.value for a in ISSUE_12_ACTIONS if pdu_nodes or a is not Action.PDU_NODE_DOWN
    )
    weights = _classic_weights() | {a: 0.6 for a in required}
    return ChaosSettings(weights=weights, required=required, pdu_nodes=tuple(pdu_nodes), **changes)


def make_schedule(
    seed: int, duration: float, nodes: Sequence[str], settings: ChaosSettings | None = None
) -> list[Step]:
    """Every step of a run, sorted by time; deterministic for the same arguments.

    Contract: at no instant are more than `settings.max_faulty` slots held, nor one slot by
    two episodes; every end step comes before `duration - settings.tail`; every required
    start action is there when its episode fits (it does for 180 s and the defaults).
    """
    s = settings or ChaosSettings()
    names = sorted(nodes)
    end = duration - s.tail
    required = random.Random(f"nodefence-chaos-required:{seed}")
    for attempt in range(PLACEMENTS):  # spread first, then packed with fresh draws
        plan = Plan(s.max_faulty)
        if _place_required(plan, required, s, names, end, spread=attempt == 0):
            break
    rng = random.Random(f"nodefence-chaos:{seed}")
    kinds = sorted(s.weights)
    weights = [s.weights[k] for k in kinds]
    last_broker = -s.broker_gap
    t = s.warmup
    while t < end:
        action = Action(rng.choices(kinds, weights)[0])
        if action is Action.BROKER_RESTART:
            if t - last_broker >= s.broker_gap and not plan.quiet_at(t):
                plan.add(t, t, frozenset(), False, [(t, action, None, {})])
                last_broker = t
        elif plan.held_at(t) < s.max_faulty:
            lo, hi = s.holds[action.value]
            hold = rng.uniform(lo, hi)
            candidates = _victims(action, names, s)
            free = [n for n in candidates if plan.free(n, t, t + hold)]
            node: str | None = None
            if action is Action.LEADER_KILL:
                ok = plan.free("", t, t + hold)
            else:
                ok = bool(free)
                node = rng.choice(free) if free else None
            slots = slots_of(action, node)
            if ok and t + hold <= end and plan.fits(slots, t, t + hold):
                steps = episode_steps(action, node, t, hold, rng, required=False)
                if action is Action.POWER_LOSS and _aims_at_leader(seed, t, s):
                    at, act, victim, params = steps[0]
                    steps[0] = (at, act, victim, {**params, "victim": "leader"})
                plan.add(t, t + hold, slots, action in QUIET, steps)
        t += rng.uniform(0.5, 1.5) * s.mean_gap
    return plan.steps(Step)


REST = 4.0  # seconds between two required episodes on one slot
PLACEMENTS = 20  # tries at placing every required episode before keeping the last try


def _place_required(
    plan: Plan, rng: random.Random, s: ChaosSettings, names: list[str], end: float, spread: bool
) -> bool:
    """Each required start action once; True when every one found a place.

    Those holding two slots fit only where nothing else runs: they go first, in a random
    order, one after the other from the warmup on. The others follow in a random order, each
    aimed at an evenly spread moment of the run (`spread`), or all from the warmup on, the
    longest first (packed, when spreading left one out). Each is placed at the first moment
    from its aim (else from the warmup) where it fits, `REST` after an episode that ended.
    """
    wide = [a for a in s.required if len(slots_of(Action(a), "x")) > 1]
    narrow = [a for a in s.required if a not in wide]
    rng.shuffle(wide)
    rng.shuffle(narrow)
    if not spread:
        narrow.sort(key=lambda a: -s.holds[a][1])
    placed = [_place_one(plan, rng, s, Action(name), names, s.warmup, end) for name in wide]
    for i, name in enumerate(narrow):
        aim = s.warmup + (end - s.warmup) * i / len(narrow) + rng.uniform(0.0, 2.0)
        placed.append(_place_one(plan, rng, s, Action(name), names, aim if spread else 0, end))
    return all(placed)


def _place_one(
    plan: Plan,
    rng: random.Random,
    s: ChaosSettings,
    action: Action,
    names: list[str],
    aim: float,
    end: float,
) -> bool:
    lo, hi = s.holds[action.value]
    hold = rng.uniform(lo, hi)
    candidates = _victims(action, names, s)
    rng.shuffle(candidates)
    starts = plan.fit_starts(max(aim, s.warmup), end - hold, REST)
    starts += plan.fit_starts(s.warmup, end - hold, REST)
    for t in starts:
        for node in candidates:
            slots = slots_of(action, node)
            if plan.fits(slots, t, t + hold):
                steps = episode_steps(action, node, t, hold, rng, required=True)
                plan.add(t, t + hold, slots, action in QUIET, steps)
                return True
    return False


def _victims(action: Action, names: list[str], s: ChaosSettings) -> list[str]:
    """The nodes an episode may hit: the PDU nodes for `pdu-node-down`; for the faults that
    wait for a moment of a complete fence, any node but a PDU node (whose fence may not
    complete: issue 12, item 7); any node otherwise."""
    if action is Action.PDU_NODE_DOWN:
        return [n for n in names if n in s.pdu_nodes]
    if action in QUIET - {Action.AGENT_STOP}:
        return [n for n in names if n not in s.pdu_nodes]
    return list(names)


def open_episodes_at(steps: Sequence[Step], t: float) -> list[Step]:
    """The start steps of the episodes open at `t` (for tests and the report)."""
    starts = {st.episode: st for st in steps if st.action in END_ACTION}
    ends = {st.episode: st.at for st in steps if st.action in END_ACTION.values()}
    return [st for ep, st in starts.items() if st.at <= t < ends.get(ep, float("inf"))]


def _aims_at_leader(seed: int, at: float, s: ChaosSettings) -> bool:
    """Whether the power loss starting at `at` aims at the leader's machine (own stream)."""
    return random.Random(f"nodefence-chaos-victim:{seed}:{at:.6f}").random() < s.leader_victims
