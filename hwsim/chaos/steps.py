"""How a chaos run performs each scheduled step on a running `SimCluster`.

`StepRunner.perform(step)` does one step and reports what it did through `say` (a line of the
timeline, counted as a fault when `count`); `janitor()` powers orphaned machines back on.
The faults that wait for one moment of a fence (a leader kill at a phase, a record save that
lands but is never answered) are traps on the API server's writes (`nodefence.hwsim.chaos.traps`),
sprung from the server's thread.

Machines get their power back through `nodefence.hwsim.chaos.power.ChaosPower`, its base.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodefence.hwsim.chaos.actions import END_ACTION, START_KIND, Action, FaultKind, Step
from nodefence.hwsim.chaos.maintenance import PlannedWork
from nodefence.hwsim.chaos.power import ChaosPower, Say
from nodefence.hwsim.chaos.springs import TrapSprings, victim_machines
from nodefence.hwsim.chaos.traps import RecordTraps, Trap
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.pdu import restore
from nodefence.hwsim.simcluster import SimCluster

HEALTHY_BMC: dict[str, Any] = {
    "unreachable": False,
    "slow": 0.0,
    "wrong_credentials": False,
    "ignore_off": False,
    "off_delay": 0.0,
    "fail_first": 0,
    "errors": False,
}
# The moment of a fence each trap waits for.
MOMENT = {
    Action.LEADER_KILL_PENDING: "create",
    Action.LEADER_KILL_SENT: "power-off-sending",
    Action.LEADER_KILL_RECOVERING: "recovering",
}
NO_NODE = frozenset({Action.BROKER_RESTART, Action.LEADER_KILL, Action.AGENT_RESTART})
READY_WAIT = 10.0  # seconds an issue-12 fault waits for its node to be ready


@dataclass
class StepRunner(ChaosPower):
    """Performs steps on `cluster`; `busy` holds the nodes whose power an episode owns."""

    cluster: SimCluster
    say: Say
    now: Callable[[], float]
    stop: threading.Event
    steps: list[Step]
    t0: float
    janitor_after: float = 3.0
    janitor_patience: float = 60.0  # ... longer while a fence of the machine is unfinished
    client_timeout: float = (
        5.0  # the agents' API client deadline (nodefence.agent.kube.client.ClusterApi)
    )
    busy: dict[str, int] = field(default_factory=dict)
    killed: dict[int, str] = field(default_factory=dict)  # episode -> node whose fencer died
    kills: list[dict[str, Any]] = field(default_factory=list)  # phase kills, as they hit
    missed: list[dict[str, Any]] = field(default_factory=list)  # traps that never sprang
    threads: list[threading.Thread] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _off_since: dict[str, float] = field(default_factory=dict)
    moved: dict[int, str] = field(default_factory=dict)  # episode -> the leader's machine hit
    victims: Counter[str] = field(default_factory=Counter)  # leader's / a broker's machine lost

    def __post_init__(self) -> None:
        springs = TrapSprings(
            self.cluster, self.say, self.now, self.threads, self.kills, self.killed
        )
        springs.client_timeout = self.client_timeout
        self.traps = RecordTraps(springs.spring)
        self.cluster.kube.write_hook = self.traps.hook
        self._handlers: dict[Action, Callable[[Step, Any], None]] = {
            Action.POWER_LOSS: self._power_loss,
            Action.REPAIR: self._repair,
            Action.PARTITION: self._partition,
            Action.HEAL: self._repair,
            Action.BMC_FAULT: self._bmc_fault,
            Action.BMC_CLEAR: self._bmc_clear,
            Action.BROKER_RESTART: self._broker_restart,
            Action.LEADER_KILL: self._leader_kill,
            Action.AGENT_RESTART: self._agent_restart,
            Action.MAINTENANCE_ENTER: self._maintenance_enter,
            Action.MAINTENANCE_EXIT: self._maintenance_exit,
            Action.AGENT_STOP: self._when_ready(self._agent_stop),
            Action.AGENT_START: self._agent_start,
            Action.LEADER_KILL_PENDING: self._when_ready(self._leader_kill_at),
            Action.LEADER_KILL_SENT: self._when_ready(self._leader_kill_at),
            Action.LEADER_KILL_RECOVERING: self._when_ready(self._leader_kill_at),
            Action.KILL_DISARM: self._kill_disarm,
            Action.CHANNEL_ERROR: self._when_ready(self._channel_error),
            Action.CHANNEL_LIE: self._when_ready(self._channel_error),
            Action.CHANNEL_CLEAR: self._channel_clear,
            Action.PDU_NODE_DOWN: self._when_ready(self._pdu_node_down),
            Action.PDU_NODE_RESTORE: self._pdu_node_restore,
            Action.RECORD_SAVE_TIMEOUT: self._when_ready(self._record_save_timeout),
            Action.SAVE_DISARM: self._save_disarm,
            Action.BMC_PARTITION: self._when_ready(self._bmc_partition),
            Action.BMC_PARTITION_END: self._bmc_partition_end,
        }
        self._open: set[int] = set()  # episodes whose start was performed, not their end

    # ---- steps ----------------------------------------------------------------------------

    def perform(self, step: Step) -> None:
        """Do one step (a step that names no node, where it needs one, is said and skipped)."""
        if step.node is None and step.action not in NO_NODE:
            self.say("skipped", None, f"{step.action.value}: no node")
            return
        if step.action in END_ACTION:
            self._open.add(step.episode)
        else:
            self._open.discard(step.episode)
        self._handlers[step.action](step, self._aimed(step))

    def _aimed(self, step: Step) -> str | None:
        """The node a step acts on: a power loss aimed at the leader hits the leader's machine
        when no episode holds it (and its repair powers that machine on again)."""
        if step.params.get("victim") == "leader" and step.action is Action.POWER_LOSS:
            leader = self.cluster.leader()
            if leader is not None and leader not in self.busy:
                self.moved[step.episode] = leader
        return self.moved.get(step.episode, step.node)

    def _power_loss(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        roles = []
        if self.cluster.leader() == node:
            self.victims["leader_machine"] += 1
            roles.append("the Lease")
        held = [f"broker {i}" for i, h in enumerate(self.cluster.broker_hosts) if h == node]
        if held:
            self.victims["broker_machine"] += 1
        roles += held
        self._machine(node).cut_power()
        hosts = f" (it holds {' and '.join(roles)})" if roles else ""
        self.say("power-loss", node, f"machine off{hosts}; its BMC still answers", count=True)

    def _partition(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        self.cluster.nodes[node].isolate()
        self.say("partition", node, "network cut: agent runs on alone, kubelet silent", count=True)

    def _repair(self, step: Step, node: str) -> None:
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)

    def _bmc_fault(self, step: Step, node: str) -> None:
        self._machine(node).set_faults(**step.params)
        self.say("bmc-fault", node, _fields(step.params), count=True)

    def _bmc_clear(self, step: Step, node: str) -> None:
        self._machine(node).set_faults(**HEALTHY_BMC)
        self.say("bmc-clear", node, "BMC healthy again")

    def _broker_restart(self, step: Step, node: None) -> None:
        self.cluster.restart_brokers()
        ports = ", ".join(str(b.port) for b in self.cluster.brokers)
        self.say("broker-restart", None, f"every mosquitto back (ports {ports})", count=True)

    def _leader_kill(self, step: Step, node: None) -> None:
        leader = self.cluster.leader()
        if leader is None or not self.cluster.nodes[leader].fencer_running():
            self.say("skipped", leader, "leader-kill: no running leader fencer")
            return
        self.killed[step.episode] = leader
        self.cluster.nodes[leader].kill_fencer()
        self.say("leader-kill", leader, "SIGKILL of the Lease holder's fencer", count=True)

    def _agent_restart(self, step: Step, node: str | None) -> None:
        """The killed leader's fencer starts again (its pod restarted)."""
        victim = self.killed.pop(step.episode, None)
        sim = self.cluster.nodes[victim] if victim else None
        if sim is None or sim.fencer_running() or sim.partitioned:
            return
        if self._machine(sim.name).power_state() == "on":
            self.cluster.start_fencer(sim.name)
            self.say("agent-restart", sim.name, "fencer started again")

    def _maintenance_enter(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        until = self.t0 + max(s.at for s in self.steps if s.episode == step.episode)
        work = PlannedWork(self.cluster, self.say, self.stop, self.procs, self._outlet(node))

        def run() -> None:
            try:
                work.run(node, until)
            finally:
                if self.busy.get(node) == step.episode:
                    del self.busy[node]

        thread = threading.Thread(target=run, name=f"maintenance-{node}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _maintenance_exit(self, step: Step, node: str) -> None:
        pass  # the maintenance thread ends its own episode (power on, then exit)

    # ---- issue-12 faults ------------------------------------------------------------------

    def _when_ready(self, apply: Callable[[Step, str], None]) -> Callable[[Step, str], None]:
        """An issue-12 fault, applied in a thread once its node is ready (see `_ready`), for
        at most `READY_WAIT` seconds: one left off by an earlier fault is powered on first (once
        no fence of it is unfinished), one still being fenced is waited for. A fault must hit
        a node in the state it is written for (an agent to stop, a fence to begin)."""

        def start(step: Step, node: str) -> None:
            self.busy[node] = step.episode
            worker = threading.Thread(
                target=self._apply_when_ready, args=(apply, step, node), daemon=True
            )
            self.threads.append(worker)
            worker.start()

        return start

    def _apply_when_ready(self, apply: Callable[[Step, str], None], step: Step, node: str) -> None:
        machine = self._machine(node)
        deadline = time.monotonic() + READY_WAIT
        while step.episode in self._open and not self.stop.is_set():
            fencing = self._fencing(node)
            if machine.power_state() == "off" and not fencing:
                restore(machine, self._outlet(node))
                self.say(FaultKind.REPAIR.value, node, f"powered on for {step.action.value}")
            if (not fencing and self._ready(node)) or time.monotonic() >= deadline:
                break
            self.stop.wait(0.2)
        if step.episode not in self._open or self.stop.is_set():
            return
        if not self._ready(node):
            self.say("not-ready", node, f"{step.action.value} applied to a node not ready")
        apply(step, node)

    def _ready(self, node: str) -> bool:
        """On, connected, its agent running, its Node Ready, no fence of it unfinished."""
        sim = self.cluster.nodes[node]
        return (
            sim.machine.power_state() == "on"
            and not sim.partitioned
            and sim.agent_running()
            and self.cluster.node_ready(node)
            and not self._fencing(node)
        )

    def _agent_stop(self, step: Step, node: str) -> None:
        """(In its thread) SIGTERM, then `cut_off_after` later the cut-off with the BMC dead."""
        sim = self.cluster.nodes[node]
        then = step.params.get("cut_off_after")
        plan = f"; cut off with its BMC dead in {then:g} s" if then else ""
        self.say("agent-stop", node, f"SIGTERM: watchdog disarmed, kubelet on{plan}", count=True)
        sim.kill_agent(signal.SIGTERM)
        if not then or self.stop.wait(float(then)) or step.episode not in self._open:
            return
        if sim.machine.power_state() != "on" or sim.agent_running():
            self.say("skipped", node, "cut-off: the node is off or its agent runs again")
            return
        sim.isolate()
        sim.machine.set_faults(unreachable=True)
        self._double(node, "agent stopped, now cut off with its BMC unreachable")

    def _agent_start(self, step: Step, node: str) -> None:
        self._machine(node).set_faults(**HEALTHY_BMC)
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)
        sim = self.cluster.nodes[node]
        if self._machine(node).power_state() == "on" and not sim.agent_running():
            self.cluster.start_agent(node)
            self.say("agent-start", node, "BMC healthy, agent started again")

    def _leader_kill_at(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        kind = START_KIND[step.action]
        # Armed first: the victim's record may be written while its fault is still applied.
        self.traps.arm(Trap(step.episode, node, kind.value, MOMENT[step.action], step.params))
        said = _fields(step.params)
        self.say("kill-armed", node, f"{kind.value} ({said}): the leader dies at that save")
        if step.params.get("off_delay"):
            self._machine(node).set_faults(off_delay=float(step.params["off_delay"]))
        if step.params.get("victim") == "agent-stop+partition":
            # Cut first, then the clean stop at once (before the agent stops feeding on its
            # own): silent from the cut on, declared dead in seconds, still powered.
            self._stop_cut_off(node, "the kill's victim (its BMC answers)")
        else:
            self._machine(node).cut_power()
            self.say("power-loss", node, "the kill's victim: machine off, its BMC answers")

    def _kill_disarm(self, step: Step, node: str) -> None:
        self._disarm(step, node)
        for m in self._victim_machines(node):
            m.off_request_hook = None
        self._machine(node).set_faults(**HEALTHY_BMC)
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)
        self._agent_start(step, node)
        killed = self.killed.pop(step.episode, None)
        sim = self.cluster.nodes[killed] if killed else None
        if sim is not None and not sim.fencer_running() and sim.machine.power_state() == "on":
            self.cluster.start_fencer(sim.name)
            self.say("agent-restart", sim.name, "fencer started again")

    def _channel_error(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        machine, p = self._machine(node), step.params
        channel, fault, liar = p["channel"], p["fault"], p.get("liar")
        machine.set_channel_faults(channel, **fault)
        if liar:
            machine.set_channel_faults(liar, reads_off=True, ignore_off=True)
            detail = f"{channel} answers {_fields(fault)}; {liar} reads Off and ignores power-off"
            self.say("channel-error", node, detail + " (the machine runs on)", count=True)
            self._stop_cut_off(node, f"{channel} {_fields(fault)}, {liar} lying Off")
        else:
            machine.cut_power()
            detail = f"{channel} answers {_fields(fault)}, the other channel reads Off"
            self.say("channel-error", node, detail, count=True)
            self._double(node, f"power loss + {channel} {_fields(fault)}")

    def _stop_cut_off(self, node: str, why: str) -> None:
        """Cut `node` off, then stop its agent cleanly at once: silent from the cut on (dead
        within seconds), its watchdog disarmed, so it stays on."""
        self.cluster.nodes[node].isolate()
        self._stop_agent(node)
        self._double(node, f"cut off, agent stopped: {why}")

    def _stop_agent(self, node: str) -> None:
        """SIGTERM `node`'s agent (a clean stop), waiting for it in a thread: a cut-off agent
        takes seconds to give up on the broker, and the schedule must not wait."""
        sim = self.cluster.nodes[node]
        thread = threading.Thread(
            target=sim.kill_agent, args=(signal.SIGTERM,), name=f"stop-{node}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def _channel_clear(self, step: Step, node: str) -> None:
        self._machine(node).clear_channel_faults()
        self.say("channel-clear", node, "every channel healthy again")
        self._agent_start(step, node)

    def _pdu_node_down(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        if step.params.get("how") == "cut-off":
            self.cluster.nodes[node].isolate()
            self._machine(node).set_faults(unreachable=True)
            detail = "cut off, its BMC unreachable: only its PDU outlet can fence it"
            self.say("pdu-node-down", node, detail, count=True)
            self._double(node, "partition + BMC unreachable on the BMC+PDU node")
        else:
            self._machine(node).cut_power()
            detail = "machine off, its BMC answers, its PDU outlet still reads On"
            self.say("pdu-node-down", node, detail, count=True)

    def _pdu_node_restore(self, step: Step, node: str) -> None:
        self._machine(node).set_faults(**HEALTHY_BMC)
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)

    def _record_save_timeout(self, step: Step, node: str) -> None:
        kind = FaultKind.RECORD_SAVE_TIMEOUT.value
        # Armed first: the victim's record may be written while its fault is still applied.
        self.traps.arm(Trap(step.episode, node, kind, step.params["write"], step.params))
        self._machine(node).cut_power()
        detail = f"power loss; its record's {step.params['write']} write will land, then "
        detail += "no answer" if step.params["mode"] == "hang" else "a dropped connection"
        self.say("save-armed", node, detail)

    def _save_disarm(self, step: Step, node: str) -> None:
        self._disarm(step, node)
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)

    def _bmc_partition(self, step: Step, node: str) -> None:
        self.busy[node] = step.episode
        self._machine(node).set_faults(**step.params["bmc"])
        self.cluster.nodes[node].isolate()
        detail = f"partition + BMC {_fields(step.params['bmc'])}"
        self.say("double-fault", node, detail, count=True)

    def _bmc_partition_end(self, step: Step, node: str) -> None:
        self._machine(node).set_faults(**HEALTHY_BMC)
        self.busy.pop(node, None)
        self.power_on_or_heal(node, step.action)

    def _double(self, node: str, detail: str) -> None:
        self.say(FaultKind.DOUBLE_FAULT.value, node, detail, count=True)

    # ---- traps ----------------------------------------------------------------------------

    def _disarm(self, step: Step, node: str) -> None:
        trap = self.traps.disarm(step.episode)
        if trap is not None and not trap.sprung:
            self.missed.append({"t": round(self.now(), 3), "kind": trap.kind, "node": node})
            self.say("missed", node, f"{trap.kind}: no {trap.moment} write of its records")

    def _victim_machines(self, node: str) -> list[SimMachine]:
        return victim_machines(self.cluster, node)


def _fields(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
