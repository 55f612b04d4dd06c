"""The files a simulated cluster's processes start from: agent and fencer configs, kubeconfigs,
secret files, written as the manifests would mount them (`ConfigFiles`, a mixin of
`nodefence.hwsim.simcluster.SimCluster`).

Each role gets the one config file of the manifests (`broker`, `detection`, `metrics` shared;
`kubernetes`, `health`, `auth`, `watchdog` or `inventory`, `fencing` per role); with `links`,
addresses are the node's own relays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nodefence.hwsim.broker import MosquittoBroker
from nodefence.hwsim.kube import KubeApiServer
from nodefence.hwsim.simcluster_settings import (
    AGENT_ACCOUNT,
    FENCER_ACCOUNT,
    FENCER_USER,
    OBSERVER,
    ClusterSettings,
)
from nodefence.hwsim.simnode import SimNode


class ConfigFiles:
    """Writes the config files of a `SimCluster` (whose fields these are)."""

    workdir: Path
    settings: ClusterSettings
    passwords: dict[str, str]
    brokers: list[MosquittoBroker]
    kube: KubeApiServer
    nodes: dict[str, SimNode]
    fencer_key: str | None
    fencer_public: str | None

    def broker_ports(self, node: str | None = None) -> list[int]:
        """The port `node`'s agent reaches each broker on (None: the brokers themselves)."""
        sim = self.nodes.get(node) if node is not None else None
        ports = []
        for i, broker in enumerate(self.brokers):
            relay = sim.relays.get(f"broker-{i}") if sim is not None else None
            ports.append(relay.port if relay is not None else broker.port)
        return ports

    def observer_login(self) -> tuple[str, str] | None:
        """(username, password) for the harness's own broker clients, or None (anonymous)."""
        return (OBSERVER, self.passwords[OBSERVER]) if self.passwords else None

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.workdir / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return path

    def _kubeconfig(self, node: str, account: str) -> Path:
        """A kubeconfig for `account`'s processes on `node` (its token names the account; with
        links, the API server through the node's own link)."""
        sim = self.nodes.get(node)
        relays = sim.relays if sim is not None else {}
        doc = self.kube.kubeconfig("default", token=account)
        text = yaml.safe_dump(doc, sort_keys=False)
        if "api" in relays:
            text = text.replace(self.kube.url, f"http://127.0.0.1:{relays['api'].port}")
        path = self.workdir / "kubeconfigs" / f"{node}-{account}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _common_config(self, node: str, user: str) -> dict[str, Any]:
        """What both roles' configs share (as the one config file of the manifests does)."""
        s = self.settings
        ports = self.broker_ports(node)
        where: dict[str, Any] = (
            {"host": "127.0.0.1", "port": ports[0]}
            if len(ports) == 1  # the single-broker form of the config
            else {"endpoints": [{"host": "127.0.0.1", "port": p} for p in ports]}
        )
        doc: dict[str, Any] = {
            "cluster": s.cluster,
            "broker": {
                **where,
                "keepalive": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 1.0,
            },
            "detection": {
                "profile": s.profile,
                "overrides": s.overrides,
                "max_unhealthy": s.max_unhealthy,
            },
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
        if self.passwords:
            # One broker user per node and one for the fencers, each password in a file (the
            # manifests take the username from $MQTT_USERNAME; here it is written out so that
            # `nodefence status -c` works from any shell).
            doc["broker"] |= {
                "username": user,
                "password_file": str(self._secret_file(f"mqtt-{user}", self.passwords[user])),
            }
        return doc

    def agent_config(self, node: str) -> Path:
        """Write (and return) the node agent's config file for `node`."""
        s = self.settings
        sim = self.nodes.get(node)
        relays = sim.relays if sim is not None else {}
        doc = self._common_config(node, node)
        doc["kubernetes"] = {
            "kubeconfig": str(self._kubeconfig(node, AGENT_ACCOUNT)),
            "namespace": "nodefence",
        }
        doc["health"] = (
            {"host": "127.0.0.1", "port": 0}
            if "health" not in relays or sim is None
            else {
                "host": "127.0.0.1",
                "port": sim.health_port,
                "advertise": f"127.0.0.1:{relays['health'].port}",
            }
        )
        if self.fencer_public:
            # The node's own key, on its disk (the DaemonSet's hostPath): made at the agent's
            # first start, kept across restarts and power cycles.
            doc["auth"] = {
                "node_key_file": str(self.workdir / "nodekeys" / node / "node.key"),
                "fencer_public_keys": [self.fencer_public],
                "mode": "required",
            }
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

    def fencer_config(self, node: str) -> Path:
        """Write (and return) the config file of the fencer on `node`."""
        s = self.settings
        doc = self._common_config(node, FENCER_USER)
        doc["kubernetes"] = {
            "kubeconfig": str(self._kubeconfig(node, FENCER_ACCOUNT)),
            "namespace": "nodefence",
            "lease_duration": s.lease_duration,
            "renew_deadline": s.renew_deadline,
            "retry_period": s.retry_period,
            "standbys": s.standbys,
        }
        doc["health"] = {"host": "127.0.0.1", "port": 0}
        if s.inventory:
            doc["inventory"] = s.inventory
        if s.fencing:
            doc["fencing"] = s.fencing
        if self.fencer_key:
            key = self._secret_file("fencer.key", self.fencer_key)
            doc["auth"] = {"fencer_key_file": str(key), "mode": "required"}
        path = self.workdir / "fencers" / f"{node}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
