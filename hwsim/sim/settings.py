"""What one run simulates, drawn from its seed: the cluster's shape and the agents' config.

Every choice here (node count, BMC topologies, VMs and their runPolicies, candidates, clock
drifts, heartbeat signing, watchdog, after_proof) comes from the seed's random stream, so a
seed names one cluster as well as one schedule of faults. Timings are production's defaults
where they shape decisions (detection profile `default`, Lease 15/10/2 s) and shorter where they
only stretch a run (fence retries, recovery timeout, power_timeout, watchdog).
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodefence.agent.config.agent_file import (
    AgentConfig,
    AuthConfig,
    FencingConfig,
    KubeConfig,
    WatchdogConfig,
)
from nodefence.agent.config.inventory_file import FencingPolicy, Inventory, Level, NodeInventory
from nodefence.agent.heartbeat.node_keys import private_key, public_of
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, RedfishDevice, Secret
from nodefence.hwsim.sim.vms import RUN_POLICIES

CLUSTER = "sim"
NAMESPACE = "nodefence"


# The keys are made once per process: they are the same in every run, and every process
# started in a run asks for them again.


@functools.cache
def fencer_key() -> X25519PrivateKey:
    """The candidates' fencer key in signed runs (test-only, the same in every run)."""
    return private_key(hashlib.sha256(b"nodefence simulation fencer key").digest())


@functools.cache
def node_private_key(node: str) -> X25519PrivateKey:
    """`node`'s own key in signed runs: fixed per name, so a seed stays one exact run (the
    key is on the machine's disk: a restarted agent signs with the same one, and the candidates
    start with every node's key pinned, as fencers that have run for a while)."""
    return private_key(hashlib.sha256(f"nodefence simulation node key {node}".encode()).digest())


@functools.cache
def node_public_key(node: str) -> bytes:
    """The public key of `node_private_key(node)` (what the fencers pin)."""
    return public_of(node_private_key(node))


TOPOLOGIES = ("ipmi", "ipmi+redfish", "redfish", "pdu-pair")


@dataclass(frozen=True)
class NodeShape:
    """One worker node: its name, BMC topology and VMs (namespace/name, runPolicy)."""

    name: str
    topology: str
    vms: tuple[tuple[str, str], ...]
    drift: float


@dataclass(frozen=True)
class SimSettings:
    """One run's cluster, config and timeline."""

    seed: int
    nodes: tuple[NodeShape, ...]
    candidates: tuple[tuple[str, float], ...]  # identity, clock drift
    signed: bool
    watchdog: bool
    after_proof: str
    fault_phase: float = 45.0  # seconds of faults, after `warmup`
    warmup: float = 8.0
    quiet_bound: float = 120.0  # liveness bound once the faults stop
    mean_gap: float = 3.5  # mean seconds between faults
    max_faulty: int = 1  # machine faults open at once (2 now and then: a storm)
    boot_delay: float = 12.0
    vm_start_delay: float = 3.0
    power_timeout: float = 6.0
    recovery_timeout: float = 30.0
    tick: float = 0.5  # the leader's judging pace (production: 0.1 s; see the docs)
    # The leader's status view is for people, and nobody reads it here: published every 5 s
    # (production: every second), it is still built, encoded and sent, at a fifth of the cost.
    view_period: float = 5.0

    def inventory(self) -> Inventory:
        """The BMC inventory the leader fences with."""
        nodes = {n.name: NodeInventory(n.name, _levels(n, self.power_timeout)) for n in self.nodes}
        policy = FencingPolicy(attempts=2, backoff=0.5, backoff_max=2.0, verify_all_channels=True)
        return Inventory(path="<simulation>", nodes=nodes, policy=policy)

    def agent_config(self) -> AgentConfig:
        """Every agent's config (the same on every node, as a DaemonSet gives it)."""
        return AgentConfig(
            path="<simulation>",
            cluster=CLUSTER,
            profile="default",
            max_unhealthy="40%",
            kube=KubeConfig(namespace=NAMESPACE, lease_name="nodefence-leader"),
            inventory="<simulation>",
            fencing=FencingConfig(
                max_parallel=2,
                after_proof="reboot" if self.after_proof == "reboot" else "off",
                retry_base=2.0,
                retry_max=10.0,
                recovery_timeout=self.recovery_timeout,
                self_fence=self.watchdog,
                self_fence_margin=2.0,
            ),
            auth=AuthConfig(
                mode="required",
                fencer_public_keys=(public_of(fencer_key()),),
                node_key_file="<simulation>",
                fencer_key_file="<simulation>",
            )
            if self.signed
            else AuthConfig(),
            watchdog=WatchdogConfig(
                enabled=self.watchdog,
                device="/dev/watchdog",
                timeout=10.0,
                cut_off_after=6.0,
                feed_interval=1.0,
                api_check_interval=3.0,
            ),
        )


def _levels(node: NodeShape, power_timeout: float) -> tuple[Level, ...]:
    t = DeviceTimeouts(timeout=2.0, power_timeout=power_timeout, power_wait=0.0, poll_interval=0.5)
    pw = Secret("sim")
    ipmi = IpmiDevice(
        name="ipmi", address=f"bmc-{node.name}", username="admin", password=pw, timeouts=t
    )
    redfish = RedfishDevice(
        name="redfish", address=f"bmc-{node.name}", username="admin", password=pw, timeouts=t
    )
    pdus = tuple(
        RedfishDevice(
            name=f"pdu-{side}",
            address=f"pdu-{side}",
            username="admin",
            password=pw,
            systems_uri=f"/redfish/v1/PowerEquipment/RackPDUs/{side}/Outlets/{node.name}",
            timeouts=t,
        )
        for side in ("a", "b")
    )
    if node.topology == "ipmi":
        return (Level((ipmi,)),)
    if node.topology == "redfish":
        return (Level((redfish,)),)
    if node.topology == "ipmi+redfish":
        return (Level((ipmi,)), Level((redfish,)))
    return (Level(pdus),)


def settings_for(seed: int, *, fault_phase: float = 45.0) -> SimSettings:
    """The cluster and config seed `seed` simulates."""
    rng = random.Random(f"settings-{seed}")
    count = rng.choice((4, 5, 5, 6))
    nodes = []
    for i in range(1, count + 1):
        vms = tuple(
            (
                f"ns{rng.randrange(2)}/vm-{i}-{j}",
                rng.choice(RUN_POLICIES[:2] * 3 + RUN_POLICIES[2:]),
            )
            for j in range(rng.randrange(1, 3))
        )
        nodes.append(NodeShape(f"node-{i}", rng.choice(TOPOLOGIES), vms, rng.uniform(-0.01, 0.01)))
    candidates = tuple(
        (f"cp-{i}", rng.uniform(-0.01, 0.01)) for i in range(1, rng.choice((2, 2, 3)) + 1)
    )
    return SimSettings(
        seed=seed,
        nodes=tuple(nodes),
        candidates=candidates,
        signed=rng.random() < 0.5,
        watchdog=rng.random() < 0.5,
        after_proof="reboot" if rng.random() < 0.2 else "off",
        fault_phase=fault_phase,
        max_faulty=2 if rng.random() < 0.15 else 1,
    )
