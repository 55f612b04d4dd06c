"""The fault schedule of a chaos run: a pure function of (seed, duration, nodes, settings).

Same inputs, same schedule: a failing run is replayed by its seed. Faults come as episodes
that hold one node (or, for a leader kill, one slot) from a start action to an end action;
at most `max_faulty` episodes are open at once, one per node, and every episode ends before
the run's duration so the cluster is whole again for the final check. Broker restarts are
instantaneous and cluster-wide; they hold no slot but are spaced by `broker_gap`.

A share (`leader_victims`) of power losses carries `params={"victim": "leader"}`: the runner
cuts the machine of whoever leads at that moment instead (when it is free), so the leader's
own machine (and any broker living on it) is a victim too. That choice comes from its own
random stream, so adding it changed no other step of any seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    """What a chaos run does to the cluster (the counts in the report use these names)."""

    POWER_LOSS = "power-loss"  # machine off at once; its BMC still answers
    PARTITION = "partition"  # network cut: agent runs on alone, kubelet silent, still powered
    BMC_FAULT = "bmc-fault"  # the node's BMC unreachable, slow, refusing logins, ...
    BROKER_RESTART = "broker-restart"  # mosquitto stopped and started on the same port
    LEADER_KILL = "leader-kill"  # SIGKILL of the agent holding the leader Lease
    MAINTENANCE = "maintenance"  # `nodefence maintenance enter`, power cut, power on, exit
    REPAIR = "repair"  # a machine powered back on (end of a power loss, or an orphan)


class Action(StrEnum):
    """One step the runner performs; an episode is a start action and an end action."""

    POWER_LOSS = "power-loss"
    REPAIR = "repair"
    PARTITION = "partition"
    HEAL = "heal"  # heal the partition, or power the machine on when it was fenced meanwhile
    BMC_FAULT = "bmc-fault"
    BMC_CLEAR = "bmc-clear"
    BROKER_RESTART = "broker-restart"
    LEADER_KILL = "leader-kill"
    AGENT_RESTART = "agent-restart"
    MAINTENANCE_ENTER = "maintenance-enter"
    MAINTENANCE_EXIT = "maintenance-exit"


# The kind each action counts as when the runner performs it (end actions count as repairs
# only when they really power a machine on; the runner decides that).
START_KIND: dict[Action, FaultKind] = {
    Action.POWER_LOSS: FaultKind.POWER_LOSS,
    Action.PARTITION: FaultKind.PARTITION,
    Action.BMC_FAULT: FaultKind.BMC_FAULT,
    Action.BROKER_RESTART: FaultKind.BROKER_RESTART,
    Action.LEADER_KILL: FaultKind.LEADER_KILL,
    Action.MAINTENANCE_ENTER: FaultKind.MAINTENANCE,
}
END_ACTION: dict[Action, Action] = {
    Action.POWER_LOSS: Action.REPAIR,
    Action.PARTITION: Action.HEAL,
    Action.BMC_FAULT: Action.BMC_CLEAR,
    Action.LEADER_KILL: Action.AGENT_RESTART,
    Action.MAINTENANCE_ENTER: Action.MAINTENANCE_EXIT,
}

# BMC faults as hwsim.machine.Faults fields (each one alone, as a BMC tends to fail).
BMC_FAULTS: tuple[dict[str, Any], ...] = (
    {"unreachable": True},
    {"slow": 0.5},
    {"wrong_credentials": True},
    {"fail_first": 2},
    {"off_delay": 1.0},
)


@dataclass(frozen=True)
class ChaosSettings:
    """How dense and how long the faults are; defaults suit the short (CI) cluster timings.

    `holds` gives, per starting action, the (min, max) seconds an episode lasts; a power
    loss or partition must last long enough for a fence (detection ~4 s, a new leader's first
    window, the power walk) or it mostly tests the abort path instead.
    """

    max_faulty: int = 2
    warmup: float = 5.0  # quiet seconds first: the leader hears everyone for a full window
    mean_gap: float = 4.0  # mean seconds between two fault starts
    tail: float = 3.0  # every episode ends this long before the run does
    broker_gap: float = 25.0
    leader_victims: float = 0.3  # share of power losses aimed at the leader's machine
    weights: dict[str, float] = field(
        default_factory=lambda: {
            Action.POWER_LOSS.value: 3.0,
            Action.PARTITION.value: 2.0,
            Action.BMC_FAULT.value: 1.5,
            Action.BROKER_RESTART.value: 0.7,
            Action.LEADER_KILL.value: 1.0,
            Action.MAINTENANCE_ENTER.value: 1.0,
        }
    )
    holds: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            Action.POWER_LOSS.value: (14.0, 24.0),
            Action.PARTITION.value: (14.0, 24.0),
            Action.BMC_FAULT.value: (5.0, 15.0),
            Action.LEADER_KILL.value: (4.0, 10.0),
            Action.MAINTENANCE_ENTER.value: (14.0, 22.0),
        }
    )


@dataclass(frozen=True)
class Step:
    """One scheduled action: at `at` seconds after the chaos began, on `node` (None: the
    whole cluster, or whoever leads then); `episode` pairs a start with its end."""

    at: float
    action: Action
    node: str | None
    episode: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        doc = asdict(self)
        doc["action"] = self.action.value
        doc["at"] = round(self.at, 3)
        return doc


def make_schedule(
    seed: int, duration: float, nodes: Sequence[str], settings: ChaosSettings | None = None
) -> list[Step]:
    """Every step of a run, sorted by time; deterministic for the same arguments.

    Contract: at no instant are more than `settings.max_faulty` episodes open, nor two on one
    node; every end step comes before `duration - settings.tail`.
    """
    s = settings or ChaosSettings()
    rng = random.Random(f"nodefence-chaos:{seed}")
    names = sorted(nodes)
    kinds = sorted(s.weights)
    weights = [s.weights[k] for k in kinds]
    steps: list[Step] = []
    open_until: dict[str, float] = {}  # node (or "" for the leader slot) -> episode end
    last_broker = -s.broker_gap
    episode = 0
    t = s.warmup
    end = duration - s.tail
    while t < end:
        action = Action(rng.choices(kinds, weights)[0])
        open_until = {k: v for k, v in open_until.items() if v > t}
        if action is Action.BROKER_RESTART:
            if t - last_broker >= s.broker_gap:
                steps.append(Step(t, action, None, episode))
                episode += 1
                last_broker = t
        elif len(open_until) < s.max_faulty:
            lo, hi = s.holds[action.value]
            hold = rng.uniform(lo, hi)
            free = [n for n in names if n not in open_until]
            slot: str | None = None
            if action is Action.LEADER_KILL:
                slot = "" if "" not in open_until else None
            elif free:
                slot = rng.choice(free)
            if slot is not None and t + hold <= end:
                params: dict[str, Any] = {}
                if action is Action.BMC_FAULT:
                    params = dict(rng.choice(BMC_FAULTS))
                if action is Action.POWER_LOSS and _aims_at_leader(seed, episode, s):
                    params = {"victim": "leader"}
                node = slot or None
                steps.append(Step(t, action, node, episode, params))
                steps.append(Step(t + hold, END_ACTION[action], node, episode))
                open_until[slot] = t + hold
                episode += 1
        t += rng.uniform(0.5, 1.5) * s.mean_gap
    return sorted(steps, key=lambda st: (st.at, st.episode))


def _aims_at_leader(seed: int, episode: int, s: ChaosSettings) -> bool:
    """Whether power loss `episode` is aimed at the leader's machine (own random stream)."""
    return random.Random(f"nodefence-chaos-victim:{seed}:{episode}").random() < s.leader_victims


def open_episodes_at(steps: Sequence[Step], t: float) -> list[Step]:
    """The start steps of the episodes open at `t` (for tests and the report)."""
    starts = {st.episode: st for st in steps if st.action in END_ACTION}
    ends = {st.episode: st.at for st in steps if st.action in END_ACTION.values()}
    return [st for ep, st in starts.items() if st.at <= t < ends.get(ep, float("inf"))]
