"""A whole simulated cluster on 127.0.0.1: mosquitto brokers, the Kubernetes API emulator,
simulated nodes (machine + kubelet + a real `nodefence agent` process each) and, optionally,
their BMCs.

Each broker lives on a simulated node (broker i on the i-th node by name, as a broker pod
would on a real one): the machine's power loss kills its broker (SIGKILL) and its power-on
starts it again, empty, on the same port. With `links`, other nodes reach a broker through
their own link and the broker's node's inbound link (`broker-<i>-in`), so isolating that node
cuts its broker off from everyone but its own agent.

Used by the end-to-end tests, `nodefence-hwsim cluster`, the scenarios and chaos runs.

It runs the two roles of the manifests: a node agent on every node, and fencers (the leader
candidates) on the first `fencers` nodes by name, as the fencer Deployment's pods would run on
control-plane nodes (they die with their machine, like its broker). By default (`secure`) it
runs as the shipped deployment does: mosquitto enforces the shipped ACL
(deploy/base/mosquitto.acl) with one password per node and one for the fencers; node agents log
in as their node and sign with their own key (kept under `<workdir>/nodekeys/<node>`, made at
first start), the fencers hold the fencer key and pin every node's key as NodeKey objects; every
process talks to the API server with a token naming its ServiceAccount (`nodefence-agent`,
`nodefence-fencer`), recorded with each request. Secrets are files under `<workdir>/secrets`.

Its settings are `nodefence.hwsim.simcluster_settings.ClusterSettings`; the files its processes
start from are written by `nodefence.hwsim.simcluster_configs`, its VM controllers run by
`nodefence.hwsim.simcluster_vms`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodefence.agent.heartbeat.node_keys import encode_key, public_of
from nodefence.agent.kube.client import STANDBYS_ANNOTATION
from nodefence.hwsim.bmcs import BmcFleet
from nodefence.hwsim.broker import MosquittoBroker, free_port
from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.kube import KubeApiServer, NodeLifecycleController
from nodefence.hwsim.kube.controllers import ControllerManager
from nodefence.hwsim.kube.errors import AlreadyExists, NotFound
from nodefence.hwsim.loop_thread import LoopThread
from nodefence.hwsim.simcluster_configs import ConfigFiles
from nodefence.hwsim.simcluster_settings import (
    ACL_PATH,
    CRD_PATHS,
    FENCER_USER,
    OBSERVER,
    OBSERVER_ACL,
    ClusterSettings,
)
from nodefence.hwsim.simcluster_vms import VmControllers
from nodefence.hwsim.simnode import REPO, SimNode

log = logging.getLogger("hwsim.cluster")


def node_of_identity(identity: str, nodes: list[str]) -> str | None:
    """The node an agent identity (Lease holder, record `status.leader`) names: the node name
    itself, or the node name followed by a separator and a per-process id; None when none
    of `nodes` matches."""
    for name in sorted(nodes, key=len, reverse=True):
        if identity == name or (identity.startswith(name) and not identity[len(name)].isalnum()):
            return name
    return None


def agent_accepts_channel_groups() -> bool:
    """Whether this checkout's agent takes per-node `verify_all_channels` groups in its
    inventory (an agent that does not refuses the whole file, so the PDU nodes' entries are
    then written without them, and cannot prove Off while their outlet reads On)."""
    from nodefence.agent.config.inventory_file import InventoryError, parse_inventory

    device = {"type": "ipmi", "name": "bmc", "address": "127.0.0.1", "username": "u"}
    node = {"levels": [[{**device, "password_env": "P"}]], "verify_all_channels": [["bmc"]]}
    try:
        parse_inventory({"nodes": {"n": node}}, path=Path("probe"), env={"P": "p"})
    except InventoryError:
        return False
    return True


class SimCluster(ConfigFiles, VmControllers):
    """Start with `start()`, stop with `stop()` (also on failure); see the module doc."""

    def __init__(self, workdir: Path, settings: ClusterSettings | None = None) -> None:
        self.workdir = workdir
        self.settings = settings or ClusterSettings()
        self.fleet = Fleet.of_size(self.settings.nodes)
        self.passwords: dict[str, str] = {}
        if self.settings.secure:
            logins = [m.name for m in self.fleet] + [FENCER_USER, OBSERVER]
            self.passwords = {name: secrets.token_urlsafe(18) for name in logins}
        count = max(1, min(self.settings.brokers, len(self.fleet)))
        names = sorted(m.name for m in self.fleet)
        # Broker i lives on the i-th node; every broker has the same ACL and password file.
        self.broker_hosts: list[str] = names[:count]
        # The fencers' pods, on the first nodes (with required anti-affinity: one per node).
        self.fencer_hosts: list[str] = names[: max(1, min(self.settings.fencers, len(names)))]
        self.brokers: list[MosquittoBroker] = [
            MosquittoBroker(
                workdir / ("mqtt" if i == 0 else f"mqtt-{i}"),
                users=self.passwords or None,
                acl=ACL_PATH.read_text() + OBSERVER_ACL if self.passwords else None,
            )
            for i in range(count)
        ]
        # The fencer key (base64, as the Secret holds it) and its public half (the config's).
        self.fencer_key: str | None = None
        self.fencer_public: str | None = None
        if self.settings.secure:
            own = X25519PrivateKey.generate()
            self.fencer_key = encode_key(own.private_bytes_raw())
            self.fencer_public = encode_key(public_of(own))
        self.kube = KubeApiServer()
        self.kubeconfig = workdir / "kubeconfig"
        self.lifecycle: NodeLifecycleController | None = None
        self.controllers: ControllerManager | None = None
        self.nodes: dict[str, SimNode] = {}
        self.loop: LoopThread | None = None
        self.bmcs: BmcFleet | None = None
        self.vm_controller: Any = None  # Deckhouse's; KubeVirt's when it is the only one
        self.kubevirt_controller: Any = None
        self.channel_groups = False  # the inventory says which devices read the same power

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, agents: bool = True) -> None:
        """Start broker, API server, kubelets and (unless `agents=False`) every agent."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for i, broker in enumerate(self.brokers):
                broker.start()
                self.fleet[self.broker_hosts[i]].on_power_change(self._broker_power(broker))
            self.kube.start_in_thread()
            self.kube.write_kubeconfig(self.kubeconfig)
            store = self.kube.store
            for ns in ("default", "kube-node-lease", "nodefence"):
                try:
                    store.get("namespaces", ns)
                except NotFound:
                    store.create("namespaces", {"metadata": {"name": ns}})
            for crd_path in CRD_PATHS:
                try:
                    store.create("customresourcedefinitions", yaml.safe_load(crd_path.read_text()))
                except AlreadyExists:
                    pass
            if self.settings.bmcs:
                self._start_bmcs()
            self.lifecycle = NodeLifecycleController(
                store, node_monitor_grace=self.settings.node_monitor_grace
            )
            self.lifecycle.start_in_thread()
            self.controllers = ControllerManager(store, self.settings.timers)
            self.controllers.start_in_thread()
            for machine in self.fleet:
                node = SimNode(
                    machine,
                    store,
                    self.workdir,
                    lease_interval=self.settings.kubelet_lease_interval,
                )
                self.nodes[machine.name] = node
                if self.settings.links:
                    for i, broker in enumerate(self.brokers):
                        if self.broker_hosts[i] == machine.name:
                            node.link(f"broker-{i}-in", "127.0.0.1", broker.port)
                    node.link("api", "127.0.0.1", self.kube.port)
                    # Peers reach the agent's health endpoint through the link as well.
                    node.health_port = free_port()
                    node.link("health", "127.0.0.1", node.health_port)
                if self.settings.watchdog:
                    node.add_watchdog(
                        self.workdir / "watchdog" / machine.name,
                        float(self.settings.watchdog.get("timeout", 60.0)),
                        self.settings.watchdog.get("reboot_after"),
                    )
                node.start()
            if self.settings.links:
                self._link_brokers()
            if self.settings.virt != "deckhouse":
                self._serve_kubevirt()
            if self.settings.vms:
                self._start_vms()
            if agents:
                for name in self.nodes:
                    self.start_agent(name)
                for name in self.fencer_hosts:
                    self.start_fencer(name)
        except BaseException:
            self.stop()
            raise

    @property
    def broker(self) -> MosquittoBroker:
        """The first broker (the only one with `brokers: 1`)."""
        return self.brokers[0]

    def _broker_power(self, broker: MosquittoBroker) -> Any:
        def changed(machine: Any, state: str) -> None:
            try:
                if state == "off":
                    broker.kill()  # its machine lost power: the broker dies with it
                elif not broker.running:
                    broker.start()
            except (OSError, RuntimeError) as err:  # whoever switched the power goes on
                log.error("broker on %s: %s", machine.name, err)

        return changed

    def _link_brokers(self) -> None:
        """Every other node reaches broker i through its own link, then the host's inbound."""
        for name, node in self.nodes.items():
            for i, host in enumerate(self.broker_hosts):
                if host != name:
                    inbound = self.nodes[host].relays[f"broker-{i}-in"].port
                    node.link(f"broker-{i}", "127.0.0.1", inbound)

    def host_of(self, broker: int) -> str:
        """The node broker `broker` lives on."""
        return self.broker_hosts[broker]

    def restart_brokers(self) -> None:
        """Stop every broker, then start them again (a cluster-wide broker outage)."""
        for broker in self.brokers:
            broker.stop()
        for i, broker in enumerate(self.brokers):
            if self.fleet[self.broker_hosts[i]].power_state() == "on":
                broker.start()

    def _start_bmcs(self) -> None:
        self.loop = LoopThread("hwsim-bmcs")
        self.bmcs = BmcFleet(
            self.fleet,
            self.workdir / "bmc",
            power_timeout=self.settings.power_timeout,
            pdus=tuple(self.settings.pdus),
        )
        self.loop.run(self.bmcs.start())
        self.channel_groups = bool(self.settings.pdus) and agent_accepts_channel_groups()
        inventory = self.bmcs.write_inventory(
            self.workdir / "bmc" / "inventory.yaml", channel_groups=self.channel_groups
        )
        text = inventory.read_text().replace(
            "timeout: 2\n", f"timeout: {self.settings.bmc_timeout}\n", 1
        )
        inventory.write_text(text)
        self.settings.inventory = str(inventory)

    def nodefence(self, *args: str) -> subprocess.Popen[str]:
        """`nodefence ARGS --kubeconfig <this cluster's>` started as an operator runs it: stdin
        closed, stdout and stderr merged into `stdout` (text). The caller waits for it."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodefence.agent.cli.main",
                *args,
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            text=True,
        )

    def stop(self) -> None:
        """Stop every process and server this cluster started (idempotent)."""
        for controller in self.vm_controllers:
            controller.stop_thread()
        self.vm_controller = self.kubevirt_controller = None
        for node in self.nodes.values():
            node.stop()
        if self.bmcs is not None and self.loop is not None:
            self.loop.run(self.bmcs.stop())
            self.bmcs = None
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        if self.lifecycle is not None:
            self.lifecycle.stop_thread()
            self.lifecycle = None
        if self.controllers is not None:
            self.controllers.stop_thread()
            self.controllers = None
        self.kube.stop_thread()
        for broker in self.brokers:
            broker.stop()

    def start_agent(self, node: str) -> None:
        """Start (or restart) `node`'s agent process."""
        env = {"NODEFENCE_LOG_LEVEL": self.settings.log_level}
        self.nodes[node].start_agent(self.agent_config(node), env)

    def start_fencer(self, node: str) -> None:
        """Start (or restart) the fencer process on `node` (one of `fencer_hosts`)."""
        env = {"NODEFENCE_LOG_LEVEL": self.settings.log_level}
        self.nodes[node].start_fencer(self.fencer_config(node), env)

    # -- observations -----------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The node whose fencer holds the nodefence leader Lease, or None (the holder
        identity is `<node>_<per-process id>`, see `node_of`)."""
        try:
            lease = self.kube.store.get("leases", "nodefence-leader", "nodefence")
        except NotFound:
            return None
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return self.node_of(str(holder)) if holder else None

    def node_of(self, identity: str) -> str | None:
        """The node of this cluster an agent identity names (see `node_of_identity`)."""
        return node_of_identity(identity, self.fleet.names())

    def node_ready(self, node: str) -> bool:
        """The Node exists and its Ready condition is True."""
        try:
            obj = self.kube.store.get("nodes", node)
        except NotFound:
            return False
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def standbys(self) -> list[str]:
        """The nodes the leader names warm standbys on its Lease."""
        try:
            lease = self.kube.store.get("leases", "nodefence-leader", "nodefence")
        except NotFound:
            return []
        named = ((lease.get("metadata") or {}).get("annotations") or {}).get(STANDBYS_ANNOTATION)
        return [n for n in str(named or "").split(",") if n]

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Core Events about nodes and the leader Lease (optionally of one reason), oldest
        first."""
        items = [
            e
            for ns in ("default", "nodefence")
            for e in self.kube.store.list("events", ns)["items"]
        ]
        found = [e for e in items if reason is None or e.get("reason") == reason]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def wait_for(self, what: str, predicate: Any, timeout: float, interval: float = 0.05) -> Any:
        """Poll `predicate()` until truthy (returned) or raise `TimeoutError` naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s\n{self.log_tail()}")
            time.sleep(interval)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every agent and fencer log (for failure messages)."""
        parts = []
        for node in self.nodes.values():
            for path, what in ((node.log_path, node.name), (node.fencer_log_path, "fencer")):
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- {what} on {node.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def summary(self) -> str:
        """A one-line JSON summary (for debugging)."""
        return json.dumps(
            {"leader": self.leader(), "power": {m.name: m.power_state() for m in self.fleet}}
        )
