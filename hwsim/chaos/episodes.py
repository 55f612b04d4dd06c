"""Episodes of a chaos schedule: the slots they hold over time (`Plan`) and the steps (with
their parameters) each kind of episode is made of. Pure; randomness comes in as an `rng`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.chaos.actions import BMC_FAULTS, END_ACTION, PHASE_KILLS, Action

RawStep = tuple[float, Action, str | None, dict[str, Any]]  # at, action, node, params

LEADER_SLOT = ""  # the slot of "whoever leads then"


def slots_of(action: Action, node: str | None) -> frozenset[str]:
    """The slots an episode holds: its node, the leader slot for a leader kill, both for a
    kill at a phase of a victim's fence (the victim and the leader it kills are both faulty)."""
    if action is Action.LEADER_KILL:
        return frozenset({LEADER_SLOT})
    if action in PHASE_KILLS:
        return frozenset({node or "", LEADER_SLOT})
    return frozenset({node}) if node else frozenset()


@dataclass
class _Held:
    start: float
    end: float
    slots: frozenset[str]
    quiet: bool
    steps: list[RawStep]
    order: int


@dataclass
class Plan:
    """Episodes placed so far, and whether another one fits (see `fits`)."""

    max_faulty: int
    held: list[_Held] = field(default_factory=list)

    def _overlapping(self, a: float, b: float) -> list[_Held]:
        return [e for e in self.held if e.slots and e.start < b and a < e.end]

    def held_at(self, t: float) -> int:
        """How many slots are held at `t`."""
        return sum(len(e.slots) for e in self.held if e.start <= t < e.end)

    def free(self, slot: str, a: float, b: float) -> bool:
        """No episode holds `slot` at any moment of [a, b)."""
        return not any(slot in e.slots for e in self._overlapping(a, b))

    def fits(self, slots: frozenset[str], a: float, b: float) -> bool:
        """`slots` are free over [a, b) and holding them keeps every moment within
        `max_faulty`."""
        others = self._overlapping(a, b)
        if any(e.slots & slots for e in others):
            return False
        moments = {a} | {e.start for e in others if a <= e.start < b}
        return all(self.held_at(m) + len(slots) <= self.max_faulty for m in moments)

    def quiet_at(self, t: float) -> bool:
        """A quiet episode (no broker restart) is open at `t`."""
        return any(e.quiet and e.start <= t < e.end for e in self.held)

    def busy_broker(self, a: float, b: float) -> bool:
        """A broker restart falls in [a, b)."""
        return any(not e.slots and a <= e.start < b for e in self.held)

    def fit_starts(self, a: float, b: float, rest: float = 0.0) -> list[float]:
        """Moments in [a, b] worth trying as a start: `a`, then `rest` after every episode
        end (a node just repaired boots before it takes the next fault)."""
        if a > b:
            return []
        return [a, *sorted({e.end + rest for e in self.held if a < e.end + rest <= b})]

    def add(
        self, start: float, end: float, slots: frozenset[str], quiet: bool, steps: list[RawStep]
    ) -> None:
        """Place an episode (the caller checked `fits`)."""
        self.held.append(_Held(start, end, slots, quiet, steps, len(self.held)))

    def steps(
        self, make: Callable[[float, Action, str | None, int, dict[str, Any]], Any]
    ) -> list[Any]:
        """Every step, episodes numbered in the order they start, sorted by (time, episode)."""
        numbered = sorted(self.held, key=lambda e: (e.start, e.order))
        out = [
            make(at, action, node, episode, params)
            for episode, e in enumerate(numbered)
            for at, action, node, params in e.steps
        ]
        return sorted(out, key=lambda st: (st.at, st.episode))


def episode_steps(
    action: Action, node: str | None, t: float, hold: float, rng: random.Random, required: bool
) -> list[RawStep]:
    """The steps of one episode from `t` to `t + hold`, parameters drawn from `rng`.

    `required`: the episode placed to guarantee its kind, which takes its most telling form
    (an agent stop followed by the cut-off; a pending kill whose victim comes back).
    """
    params: dict[str, Any] = {}
    if action is Action.BMC_FAULT:
        params = dict(rng.choice(BMC_FAULTS))
    elif action is Action.AGENT_STOP:
        # Alone: the kubelet keeps renewing and nobody may fence the node. Then cut off with
        # its BMC dead: the reproduced split brain (a disarmed watchdog is no proof).
        if required or rng.random() < 2 / 3:
            after = rng.uniform(2.0, 4.0)
            params = {"cut_off_after": round(after, 3)}
    elif action is Action.LEADER_KILL_PENDING:
        # The victim cut off with its agent stopped (kubelet silent, watchdog disarmed, BMC
        # answering), healed the moment the leader dies: the next leader must not power off
        # a node that came back.
        if required or rng.random() < 0.5:
            params = {"victim": "agent-stop+partition", "comes_back": True}
        else:
            params = {"victim": "power-loss"}
    elif action is Action.LEADER_KILL_SENT:
        # before-answer: the record says powerOffSent, nothing was sent. in-walk: killed the
        # moment the victim's BMC receives the power-off request (before it answers); the
        # power-off takes 2 s to act (`off_delay`) on a victim still on: not proven.
        if rng.random() < 0.5:
            params = {"victim": "power-loss", "when": "before-answer"}
        else:
            params = {"victim": "agent-stop+partition", "when": "in-walk", "off_delay": 2.0}
    elif action is Action.LEADER_KILL_RECOVERING:
        params = {"victim": "power-loss"}
    elif action in (Action.CHANNEL_ERROR, Action.CHANNEL_LIE):
        # One channel answers errors while the other reads Off: after a power loss (it is
        # off), or on a victim still on (cut off, agent stopped) whose other channel lies
        # (`reads_off`, `ignore_off`): only the errored one could tell.
        channel = rng.choice(["ipmi", "redfish"])
        fault = rng.choice([{"errors": True}, {"wrong_credentials": True}])
        params = {"channel": channel, "fault": fault, "victim": "power-loss"}
        if action is Action.CHANNEL_LIE:
            other = "redfish" if channel == "ipmi" else "ipmi"
            params |= {"victim": "agent-stop+partition", "liar": other}
    elif action is Action.PDU_NODE_DOWN:
        params = {"how": rng.choice(["power-loss", "cut-off"])}
    elif action is Action.RECORD_SAVE_TIMEOUT:
        params = {
            "mode": rng.choice(["hang", "drop"]),
            "write": rng.choice(["create", "power-off-sending", "proven"]),
        }
    elif action is Action.BMC_PARTITION:
        params = {"bmc": dict(rng.choice([{"unreachable": True}, {"wrong_credentials": True}]))}
    at_node = None if action is Action.LEADER_KILL else node
    return [(t, action, at_node, params), (t + hold, END_ACTION[action], at_node, {})]
