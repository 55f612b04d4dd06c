"""Leader candidates: processes running production's wiring
(`nodefence.agent.leader.candidate_runner.leader_candidate`).

Each candidate is a simulated process with its own clocks (a small drift; its wall clock can
be stepped), its own API client, broker connection and BMC backends, all simulated. Killing it
is SIGKILL: nothing more goes out and the Lease is not released. Pausing it freezes every one
of its callbacks (a stop-the-world pause): requests already sent still land; when it resumes it
carries on with what it knew. A crashed candidate (an exception out of the real code) and a
killed one are started again like a restarted pod: a fresh process with the same identity.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nodefence.agent.config.inventory_file import Inventory
from nodefence.agent.heartbeat.node_keys import Keyring
from nodefence.agent.leader.candidate_runner import LeaderCandidate, leader_candidate
from nodefence.agent.leader.side_loop import LeaderSide
from nodefence.backends.base import PowerBackend
from nodefence.backends.spec import DeviceSpec
from nodefence.hwsim.sim.api import SimClusterApi
from nodefence.hwsim.sim.bmc import SimPowerBackend
from nodefence.hwsim.sim.broker import SimLeaderBroker
from nodefence.hwsim.sim.settings import fencer_key, node_public_key
from nodefence.hwsim.sim.vloop import ProcState, SimProcess, spawn

if TYPE_CHECKING:
    from nodefence.hwsim.sim.world import World


# (fencer public key, node, node public key) -> MAC key: the keys are the same in every run.
_AGREED: dict[tuple[bytes, str, bytes], bytes] = {}


class SimKeyring(Keyring):
    """The real keyring, but each key agreement is made once per process, not once per
    candidate of every run (its result depends only on the keys, which every run shares)."""

    def _derive(self, i: int, node: str, public: bytes) -> bytes:
        key = (self.fencer_publics[i], node, public)
        mac = _AGREED.get(key)
        if mac is None:
            mac = _AGREED[key] = super()._derive(i, node, public)
        return mac


class StaticInventory:
    """The inventory source of the simulation
    (`nodefence.agent.leader.candidate_runner.InventorySource`)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._nodes = frozenset(inventory.nodes)
        self.rejected = ""  # never changes

    def current(self) -> Inventory | None:
        """The inventory."""
        return self.inventory

    def nodes(self) -> frozenset[str]:
        """Names of the nodes it can fence."""
        return self._nodes


async def _certificate_days(host: str, port: int, *, timeout: float) -> float:
    """The simulated BMCs' certificates: valid for a year."""
    return 365.0


class Candidate:
    """One leader candidate process (see the module doc)."""

    def __init__(self, world: World, identity: str, drift: float, generation: int) -> None:
        self.world = world
        self.identity = identity
        self.drift = drift
        self.proc = SimProcess(f"{identity}#{generation}")
        self.wall_step = 0.0  # seconds the wall clock was stepped by
        self.api_cut = False  # this process cannot reach the API server
        self.broker_cut = False
        self.last_lease_write: float | None = None  # virtual time of its last accepted write
        self.acquired_at: float | None = None  # when it last took the Lease from another
        self.pauses: list[tuple[float, float]] = []  # (from, to) virtual times
        self.term_start: float | None = None  # the Lease acquisition its LeaderSide rests on
        self.side_start: float | None = None  # when its current LeaderSide appeared
        self.seen_leader: LeaderSide | None = None
        self.ids = 0
        self.api = SimClusterApi(world.api, world.rng, reachable=lambda: not self.api_cut)
        self.broker = SimLeaderBroker(
            world.broker,
            self.proc,
            f"nodefence-leader-{identity}",
            world.invariants.delivered,
            reachable=lambda: not self.broker_cut,
        )
        self.stop = asyncio.Event()
        # Signed runs: the fencer key and every node's key pinned (each process its own copy).
        self.keyring = (
            SimKeyring(
                [fencer_key()],
                pins={m: node_public_key(m) for m in world.machines},
            )
            if world.settings.signed
            else None
        )
        self.lc: LeaderCandidate = leader_candidate(
            world.cfg,
            world.profile,
            self.api,
            identity,
            inventory=world.inventory_source,
            clock=self.clock,
            wall=self.wall,
            new_id=self.new_id,
            broker=self.broker,
            backend_factory=self.backend,
            tick=world.settings.tick,
            view_period=world.settings.view_period,
            # as production's `<node>_<per-process id>`, but the same in every replay
            identity=f"{identity}_{generation:08x}",
            cert_days=_certificate_days,  # no real TLS handshake from inside the simulation
            keyring=self.keyring,
        )
        self.task: asyncio.Task[None] | None = None

    # -- clocks and ids ------------------------------------------------------------------------

    def clock(self) -> float:
        """This process's monotonic clock."""
        return self.world.loop.time() * (1.0 + self.drift)

    def wall(self) -> float:
        """This process's wall clock (Unix seconds; steps when the scheduler steps it)."""
        return self.world.wall_epoch + self.world.loop.time() * (1.0 + self.drift) + self.wall_step

    def new_id(self) -> str:
        """Operation and probe ids, unique per run and derived from the seed."""
        self.ids += 1
        return (
            f"{self.proc.name.replace('#', 'g')}{self.ids:x}{self.world.rng.randrange(16**4):04x}"
        )

    def backend(self, node: str, spec: DeviceSpec) -> PowerBackend:
        """The backend factory the executor and its `PowerFencer` use."""
        w = self.world
        channel = w.channels[(node, spec.name)]

        def on_request(n: str, device: str, verb: str) -> None:
            w.invariants.power_request(self, n, device, verb)

        backend: PowerBackend = SimPowerBackend(w.loop, w.rng, channel, spec, on_request)
        return w.backend_wrapper(backend) if w.backend_wrapper is not None else backend

    # -- life ------------------------------------------------------------------------------------

    @property
    def holder(self) -> str:
        """The name it writes into the Lease (the elector's identity)."""
        return self.lc.elector.identity

    @property
    def alive(self) -> bool:
        """Not killed (running or paused)."""
        return self.proc.state is not ProcState.KILLED

    @property
    def leader(self) -> LeaderSide | None:
        """Its leader side while it leads."""
        return self.lc.leader

    def start(self) -> None:
        """Run the candidacy."""
        self.task = spawn(self.world.loop, self.proc, self.lc.run(self.stop), self.proc.name)
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self.world.candidate_crashed(self, err)

    def running_since(self, since: float, now: float) -> float:
        """Seconds this process ran (was not paused) between `since` and `now`."""
        paused = sum(max(0.0, min(b, now) - max(a, since)) for a, b in self.pauses)
        if self.proc.paused_at is not None:
            paused += max(0.0, now - max(self.proc.paused_at, since))
        return now - since - paused

    def paused_between(self, since: float, now: float) -> bool:
        """Whether it was paused at some moment in (`since`, `now`]."""
        if self.proc.paused_at is not None:
            return True
        return any(b > since and a <= now for a, b in self.pauses)
