"""A whole simulated cluster on 127.0.0.1: mosquitto, the Kubernetes API emulator, simulated
nodes (machine + kubelet + a real `nodefence agent` process each) and, optionally, their BMCs.

Used by the end-to-end tests, `nodefence-hwsim cluster`, the scenarios and chaos runs.

By default (`secure`) the cluster runs as the shipped deployment does: mosquitto enforces the
shipped ACL (deploy/base/mosquitto.acl) with one password per node, agents log in as their node
and sign their heartbeats with a cluster key; secrets are files under `<workdir>/secrets`.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hwsim.bmcs import BmcFleet
from hwsim.broker import MosquittoBroker, free_port
from hwsim.fleet import Fleet
from hwsim.kube import KubeApiServer, NodeLifecycleController
from hwsim.kube.controllers import ControllerManager, ControllerTimers
from hwsim.kube.errors import AlreadyExists, NotFound
from hwsim.loop_thread import LoopThread
from hwsim.simnode import SimNode

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "base"
CRD_PATH = DEPLOY / "crd-fenceoperations.yaml"
ACL_PATH = DEPLOY / "mosquitto.acl"
OBSERVER = "hwsim-observer"  # the harness's own broker login (live view, tests)


@dataclass
class ClusterSettings:
    """Timings and options of a simulated cluster (short ones suit tests)."""

    nodes: int = 3
    cluster: str = "sim"
    profile: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    max_unhealthy: str = "40%"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    kubelet_lease_interval: float = 10.0
    node_monitor_grace: float = 40.0
    inventory: str | None = None
    bmcs: bool = False  # emulated IPMI + Redfish BMCs per node, and their inventory
    power_timeout: float = 5.0
    bmc_timeout: float = 1.0
    vms: int = 0  # VMs placed over the nodes, with a ColdStandby controller
    boot_delay: float = 1.0
    migration_delay: float = 1.0
    fencing: dict[str, Any] = field(default_factory=dict)  # agent config `fencing:` section
    secure: bool = True  # broker passwords + shipped ACL, signed heartbeats
    links: bool = False  # each node reaches broker and API through relays (`isolate()`)
    # agent config `watchdog:` section (enabled when set) plus `reboot_after` (hwsim only:
    # seconds from a watchdog reset to power on; absent: the machine stays off)
    watchdog: dict[str, Any] = field(default_factory=dict)
    log_level: str = "info"  # the agents' (debug: everything, e.g. for the secrets test)
    # PodGC, taint manager and attach/detach timers (upstream defaults unless compressed)
    timers: ControllerTimers = field(default_factory=ControllerTimers)


class SimCluster:
    """Start with `start()`, stop with `stop()` (also on failure); see the module doc."""

    def __init__(self, workdir: Path, settings: ClusterSettings | None = None) -> None:
        self.workdir = workdir
        self.settings = settings or ClusterSettings()
        self.fleet = Fleet.of_size(self.settings.nodes)
        self.passwords: dict[str, str] = {}
        if self.settings.secure:
            logins = [m.name for m in self.fleet] + [OBSERVER]
            self.passwords = {name: secrets.token_urlsafe(18) for name in logins}
            self.broker = MosquittoBroker(
                workdir / "mqtt", users=self.passwords, acl=ACL_PATH.read_text()
            )
        else:
            self.broker = MosquittoBroker(workdir / "mqtt")
        self.heartbeat_key = secrets.token_hex(32) if self.settings.secure else None
        self.kube = KubeApiServer()
        self.kubeconfig = workdir / "kubeconfig"
        self.lifecycle: NodeLifecycleController | None = None
        self.controllers: ControllerManager | None = None
        self.nodes: dict[str, SimNode] = {}
        self.loop: LoopThread | None = None
        self.bmcs: BmcFleet | None = None
        self.vm_controller: Any = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, agents: bool = True) -> None:
        """Start broker, API server, kubelets and (unless `agents=False`) every agent."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker.start()
            self.kube.start_in_thread()
            self.kube.write_kubeconfig(self.kubeconfig)
            store = self.kube.store
            for ns in ("default", "kube-node-lease", "nodefence"):
                try:
                    store.get("namespaces", ns)
                except NotFound:
                    store.create("namespaces", {"metadata": {"name": ns}})
            crd = yaml.safe_load(CRD_PATH.read_text())
            try:
                store.create("customresourcedefinitions", crd)
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
                    node.link("broker", "127.0.0.1", self.broker.port)
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
            if self.settings.vms:
                self._start_vms()
            if agents:
                for name in self.nodes:
                    self.start_agent(name)
        except BaseException:
            self.stop()
            raise

    def _start_bmcs(self) -> None:
        self.loop = LoopThread("hwsim-bmcs")
        self.bmcs = BmcFleet(
            self.fleet, self.workdir / "bmc", power_timeout=self.settings.power_timeout
        )
        self.loop.run(self.bmcs.start())
        inventory = self.bmcs.write_inventory(self.workdir / "bmc" / "inventory.yaml")
        text = inventory.read_text().replace(
            "timeout: 2\n", f"timeout: {self.settings.bmc_timeout}\n", 1
        )
        inventory.write_text(text)
        self.settings.inventory = str(inventory)

    def _start_vms(self) -> None:
        from hwsim.coldstandby import ColdStandbyController
        from hwsim.vms import place_vms

        self.vm_controller = ColdStandbyController(
            self.kube.store,
            lambda n: n in self.nodes and self.fleet[n].power_state() == "on",
            boot_delay=self.settings.boot_delay,
            migration_delay=self.settings.migration_delay,
        )
        place_vms(self.kube.store, self.vm_controller, self.settings.vms, list(self.nodes))
        self.vm_controller.start_in_thread()

    def stop(self) -> None:
        """Stop every process and server this cluster started (idempotent)."""
        if self.vm_controller is not None:
            self.vm_controller.stop_thread()
            self.vm_controller = None
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
        self.broker.stop()

    # -- agents -----------------------------------------------------------------------------------

    def observer_login(self) -> tuple[str, str] | None:
        """(username, password) for the harness's own broker clients, or None (anonymous)."""
        return (OBSERVER, self.passwords[OBSERVER]) if self.passwords else None

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.workdir / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return path

    def agent_config(self, node: str) -> Path:
        """Write (and return) the agent config file for `node`."""
        s = self.settings
        sim = self.nodes.get(node)
        relays = sim.relays if sim is not None else {}
        kubeconfig = self.kubeconfig
        if "api" in relays:
            kubeconfig = self.workdir / "agents" / f"{node}.kubeconfig"
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.kube.kubeconfig("default"), sort_keys=False)
            relay_url = f"http://127.0.0.1:{relays['api'].port}"
            kubeconfig.write_text(text.replace(self.kube.url, relay_url))
        doc: dict[str, Any] = {
            "cluster": s.cluster,
            "broker": {
                "host": "127.0.0.1",
                "port": relays["broker"].port if "broker" in relays else self.broker.port,
                "keepalive": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 1.0,
            },
            "detection": {
                "profile": s.profile,
                "overrides": s.overrides,
                "max_unhealthy": s.max_unhealthy,
            },
            "kubernetes": {
                "kubeconfig": str(kubeconfig),
                "namespace": "nodefence",
                "lease_duration": s.lease_duration,
                "renew_deadline": s.renew_deadline,
                "retry_period": s.retry_period,
            },
            "health": {"host": "127.0.0.1", "port": 0}
            if "health" not in relays or sim is None
            else {
                "host": "127.0.0.1",
                "port": sim.health_port,
                "advertise": f"127.0.0.1:{relays['health'].port}",
            },
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
        if s.inventory:
            doc["inventory"] = s.inventory
        if s.fencing:
            doc["fencing"] = s.fencing
        if self.passwords:
            # One broker user per node, its password in a file (the DaemonSet takes the
            # username from $NODE_NAME; here it is written out so `nodefence status -c` works
            # from any shell).
            doc["broker"] |= {
                "username": node,
                "password_file": str(self._secret_file(f"mqtt-{node}", self.passwords[node])),
            }
        if self.heartbeat_key:
            key = self._secret_file("heartbeat.key", self.heartbeat_key)
            doc["auth"] = {"heartbeat_key_file": str(key), "mode": "required"}
        if s.watchdog:
            wd = {k: v for k, v in s.watchdog.items() if k != "reboot_after"}
            doc["watchdog"] = {
                "enabled": True,
                "timeout_from": "config",  # the emulated device is a FIFO: no ioctls
                **wd,
                "device": str(self.workdir / "watchdog" / node),
            }
        path = self.workdir / "agents" / f"{node}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def start_agent(self, node: str) -> None:
        """Start (or restart) `node`'s agent process."""
        env = {"NODEFENCE_LOG_LEVEL": self.settings.log_level}
        self.nodes[node].start_agent(self.agent_config(node), env)

    # -- observations -----------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The node whose agent holds the nodefence leader Lease, or None (the holder identity
        is `<node>_<per-process id>`)."""
        try:
            lease = self.kube.store.get("leases", "nodefence-leader", "nodefence")
        except NotFound:
            return None
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return str(holder).split("_", 1)[0] if holder else None

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
        """The last lines of every agent log (for failure messages)."""
        parts = []
        for node in self.nodes.values():
            if node.log_path.exists():
                tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {node.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def summary(self) -> str:
        """A one-line JSON summary (for debugging)."""
        return json.dumps(
            {"leader": self.leader(), "power": {m.name: m.power_state() for m in self.fleet}}
        )
