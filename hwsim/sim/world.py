"""One simulated cluster: the loop, the edges, the machines, the agents and the candidates.

`World` builds everything a seed describes (`nodefence.hwsim.sim.settings`) and owns the primitives
the fault scheduler uses (power, network, processes). Every random choice is drawn from one
`random.Random(seed)` in event order, so a seed is one exact run.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from nodefence.agent.detection.profiles import DEFAULT
from nodefence.backends.base import PowerBackend
from nodefence.hwsim.sim.agents import NodeAgent
from nodefence.hwsim.sim.apiserver import ApiServer
from nodefence.hwsim.sim.bmc import Channel, ChannelKind
from nodefence.hwsim.sim.broker import SimBroker
from nodefence.hwsim.sim.candidates import Candidate, StaticInventory
from nodefence.hwsim.sim.faults import FaultScheduler
from nodefence.hwsim.sim.invariants import Invariants
from nodefence.hwsim.sim.machines import Machine
from nodefence.hwsim.sim.settings import SimSettings
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import VirtualLoop
from nodefence.hwsim.sim.vms import VmController

KEEPALIVE_LOSS = 15.0  # the broker drops a silent client after 1.5 x keepalive (10 s)
RESTART_DELAY = (3.0, 10.0)  # a killed or crashed process is started again (a pod restart)


class World:
    """Everything of one run (see the module doc)."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.loop = VirtualLoop()
        self.rng = random.Random(settings.seed)
        self.trace = Trace(self.loop.time)
        self.wall_epoch = 1_900_000_000.0
        self.cfg = settings.agent_config()
        self.profile = DEFAULT
        self.broker = SimBroker(self.loop, self.rng, self.trace)
        self.api = ApiServer(self.loop, self.trace, self.rng)
        self.invariants = Invariants(self)
        self.api.listener = self.invariants
        self.inventory = settings.inventory()
        self.inventory_source = StaticInventory(self.inventory)
        self.vm_controller = VmController(self)
        self.machines: dict[str, Machine] = {}
        self.channels: dict[tuple[str, str], Channel] = {}
        for i, shape in enumerate(settings.nodes, start=1):
            m = Machine(self, shape.name, f"10.0.0.{i}", shape.drift)
            if shape.topology == "pdu-pair":
                m.outlets = [True, True]
            self.machines[shape.name] = m
            for level in self.inventory.nodes[shape.name].levels:
                for k, dev in enumerate(level.devices):
                    pdu = dev.name.startswith("pdu-")
                    kind = ChannelKind.PDU if pdu else ChannelKind.BMC
                    self.channels[(shape.name, dev.name)] = Channel(m, dev.name, kind, k)
        self.candidates: dict[str, Candidate] = {}
        self._generations: dict[str, int] = {}
        self.crashes = 0
        self.faults = FaultScheduler(self)
        # Test-only: wraps every BMC backend the candidates build (the harness's own tests
        # inject a bug with it, e.g. a backend that claims Off without reading back).
        self.backend_wrapper: Callable[[PowerBackend], PowerBackend] | None = None

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Boot every machine (already up at time 0), place the VMs, start the candidates."""
        for m in self.machines.values():
            m.booted = True
            m.boots = 1
            m.kubelet_tick()
        for shape in self.settings.nodes:
            for key, policy in shape.vms:
                namespace, name = key.split("/")
                self.vm_controller.create(namespace, name, policy, self.machines[shape.name])
        for m in self.machines.values():
            self.start_agent(m)
        for identity, drift in self.settings.candidates:
            self.start_candidate(identity, drift)

    def start_agent(self, machine: Machine) -> None:
        """A new agent process on `machine`."""
        key = f"agent/{machine.name}"
        gen = self._generations[key] = self._generations.get(key, 0) + 1
        machine.agent = NodeAgent(self, machine, gen)
        machine.agent.start()

    def start_candidate(self, identity: str, drift: float) -> Candidate:
        """A new leader candidate process with `identity`."""
        gen = self._generations[identity] = self._generations.get(identity, 0) + 1
        cand = Candidate(self, identity, drift, gen)
        self.candidates[identity] = cand
        self.invariants.track(cand)
        cand.start()
        return cand

    def restart_candidate(self, identity: str, delay: float) -> None:
        """Start `identity` again after `delay` (a restarted pod)."""
        drift = self.candidates[identity].drift

        def again() -> None:
            if not self.candidates[identity].alive:
                self.start_candidate(identity, drift)

        self.loop.call_later(delay, again, context=self.loop.harness)

    def candidate_crashed(self, cand: Candidate, err: BaseException) -> None:
        """An exception left the real code: the process died (a crash, restarted later)."""
        self.crashes += 1
        self.trace.event("crash", f"{cand.proc.name}: {type(err).__name__}: {err}")
        self.invariants.crashed(cand, err)
        self.loop.kill(cand.proc)
        self._drop_leader_connection(cand)
        self.restart_candidate(cand.identity, self.rng.uniform(*RESTART_DELAY))

    # -- processes -----------------------------------------------------------------------------

    def kill_candidate(self, cand: Candidate, why: str) -> None:
        """SIGKILL: no Lease release, nothing more goes out; restarted later."""
        self.loop.kill(cand.proc)
        self._drop_leader_connection(cand)
        self.trace.fault(
            "leader-kill" if cand.leader else "candidate-kill", f"{cand.proc.name} {why}"
        )
        self.restart_candidate(cand.identity, self.rng.uniform(*RESTART_DELAY))

    def _drop_leader_connection(self, cand: Candidate) -> None:
        client = cand.broker.client
        if client is not None:
            self.broker.drop(client, "process exited")

    def pause_candidate(self, cand: Candidate, seconds: float) -> None:
        """Freeze the process for `seconds` (its broker connection times out meanwhile)."""
        if cand.proc.paused_at is not None or not cand.alive:
            return
        self.loop.pause(cand.proc)
        start = self.loop.time()
        self.trace.fault(
            "leader-pause" if cand.leader else "candidate-pause",
            f"{cand.proc.name} {seconds:.1f} s",
        )

        def keepalive_lost() -> None:
            client = cand.broker.client
            if cand.proc.paused_at is not None and client is not None:
                self.broker.drop(client, "keepalive timeout")

        if seconds > KEEPALIVE_LOSS:
            self.loop.call_later(KEEPALIVE_LOSS, keepalive_lost, context=self.loop.harness)
        self.loop.call_later(seconds, self.resume_candidate, cand, start, context=self.loop.harness)

    def resume_candidate(self, cand: Candidate, start: float | None = None) -> None:
        """Let a paused process run again."""
        if cand.proc.paused_at is None or not cand.alive:
            return
        begun = cand.proc.paused_at
        self.loop.resume(cand.proc)
        cand.pauses.append((begun, self.loop.time()))
        self.trace.event("resume", cand.proc.name)

    # -- machines ------------------------------------------------------------------------------

    def partition(self, m: Machine, on: bool) -> None:
        """Cut (or heal) the machine's network."""
        if m.partitioned == on:
            return
        m.partitioned = on
        m.cut_since = self.loop.time() if on else None
        self.trace.event("net", f"{m.name} {'partitioned' if on else 'reconnected'}")
        agent = m.agent
        if on and agent is not None:

            def keepalive_lost() -> None:
                client = agent.client
                if m.partitioned and client is not None:
                    self.broker.drop(client, "keepalive timeout")

            self.loop.call_later(KEEPALIVE_LOSS, keepalive_lost, context=self.loop.harness)

    def probe_reachable(self, peer: Machine, suspect: str, kinds: set[str]) -> bool:
        """Whether `peer` reaches any of `suspect`'s probed endpoints now."""
        m = self.machines.get(suspect)
        if m is None or peer.partitioned or m.partitioned or not m.powered or not m.booted:
            return False
        if "kubelet" in kinds:
            return True  # the kubelet port answers while the machine runs
        return "agent" in kinds and m.agent is not None and m.agent.running
