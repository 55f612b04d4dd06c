"""A fleet of emulated BMCs (IPMI + Redfish per node) and the inventory that matches it.

`BmcFleet` starts, for each machine, an IPMI BMC on its own UDP port and a Redfish BMC on its
own HTTPS port (certificate signed by a CA generated for the run), all on 127.0.0.1, and
writes a nodefence inventory (level 1: IPMI, level 2: Redfish verified with the CA) with the
password files beside it. The inventory is written only once every emulator listens.

Machines named in `pdus` are also fed by a PDU outlet (`nodefence.hwsim.pdu`) served over Redfish on
a port of its own, the next level of that node's inventory (device `pdu`). Their inventory entry
says which devices read the same power (`verify_all_channels: [[ipmi, redfish], [pdu]]`) when
`channel_groups` is set.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodefence.hwsim.fleet import Fleet
from nodefence.hwsim.ipmi import IpmiBmc
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.pdu import feed_from_outlet
from nodefence.hwsim.redfish import RedfishBmc
from nodefence.hwsim.tls import TlsFiles, make_tls


@dataclass
class BmcFleet:
    """Emulated BMCs for every machine of `fleet`; `start()` binds, `stop()` releases."""

    fleet: Fleet
    workdir: Path
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    redfish: bool = True
    ipmi: bool = True
    ipmi_bmcs: dict[str, IpmiBmc] = field(default_factory=dict)
    redfish_bmcs: dict[str, RedfishBmc] = field(default_factory=dict)
    tls: TlsFiles | None = None
    power_timeout: float = 10.0
    pdus: tuple[str, ...] = ()  # machines fed by an emulated PDU outlet (see the module doc)
    outlets: dict[str, SimMachine] = field(default_factory=dict)  # machine -> its outlet
    pdu_bmcs: dict[str, RedfishBmc] = field(default_factory=dict)

    async def start(self) -> None:
        """Start every emulator; on any failure stop those already started and re-raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        unknown = sorted(set(self.pdus) - set(self.fleet.names()))
        if unknown:
            raise ValueError(f"pdus: no machine named {', '.join(unknown)} in the fleet")
        if self.redfish or self.pdus:
            self.tls = make_tls(self.workdir / "tls")
        try:
            for machine in self.fleet:
                if self.ipmi:
                    ipmi = IpmiBmc(machine, self.username, self.password)
                    await ipmi.start()
                    self.ipmi_bmcs[machine.name] = ipmi
                if self.redfish:
                    rf = RedfishBmc([machine], self.username, self.password, tls=self.tls)
                    await rf.start()
                    self.redfish_bmcs[machine.name] = rf
                if machine.name in self.pdus:
                    outlet = feed_from_outlet(machine)
                    self.outlets[machine.name] = outlet
                    pdu = RedfishBmc(
                        [outlet], self.username, self.password, tls=self.tls, channel="pdu"
                    )
                    await pdu.start()
                    self.pdu_bmcs[machine.name] = pdu
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every emulator (idempotent)."""
        for ipmi in self.ipmi_bmcs.values():
            await ipmi.stop()
        for rf in [*self.redfish_bmcs.values(), *self.pdu_bmcs.values()]:
            await rf.stop()
        self.ipmi_bmcs.clear()
        self.redfish_bmcs.clear()
        self.pdu_bmcs.clear()

    def set_password(self, node: str, password: str) -> None:
        """Change the password of `node`'s BMC (both its IPMI and Redfish interfaces) while it
        runs; the inventory keeps the old one until someone updates the password file."""
        if node in self.ipmi_bmcs:
            self.ipmi_bmcs[node].set_password(password)
        if node in self.redfish_bmcs:
            self.redfish_bmcs[node].service.set_password(password)

    def outlet(self, machine: str) -> SimMachine | None:
        """The PDU outlet feeding `machine`, or None."""
        return self.outlets.get(machine)

    def _redfish_device(
        self, name: str, bmc: RedfishBmc, system_id: str, password_file: str
    ) -> dict[str, Any]:
        assert self.tls is not None
        return {
            "type": "redfish",
            "name": name,
            "address": "127.0.0.1",
            "port": bmc.port,
            "username": self.username,
            "password_file": password_file,
            "ca_file": os.path.relpath(self.tls.ca_cert, self.workdir),
            "system_id": system_id,
        }

    def inventory(self, password_file: str, channel_groups: bool = True) -> dict[str, Any]:
        """The inventory document for the running emulators (paths relative to the file).

        `channel_groups`: write `verify_all_channels` groups for the nodes with a PDU (an agent
        that does not know them refuses the field)."""
        nodes: dict[str, Any] = {}
        for machine in self.fleet:
            levels: list[dict[str, Any]] = []
            if machine.name in self.ipmi_bmcs:
                levels.append(
                    {
                        "devices": [
                            {
                                "type": "ipmi",
                                "name": "ipmi",
                                "address": "127.0.0.1",
                                "port": self.ipmi_bmcs[machine.name].port,
                                "username": self.username,
                                "password_file": password_file,
                                "cipher": 17,
                            }
                        ]
                    }
                )
            bmc = self.redfish_bmcs.get(machine.name)
            if bmc is not None:
                device = self._redfish_device("redfish", bmc, machine.name, password_file)
                levels.append({"devices": [device]})
            node: dict[str, Any] = {"levels": levels}
            pdu, outlet = self.pdu_bmcs.get(machine.name), self.outlets.get(machine.name)
            if pdu is not None and outlet is not None:
                device = self._redfish_device("pdu", pdu, outlet.name, password_file)
                levels.append({"devices": [device]})
                if channel_groups:
                    bmc_channels = [str(lv["devices"][0]["name"]) for lv in levels[:-1]]
                    node["verify_all_channels"] = [bmc_channels, ["pdu"]]
            nodes[machine.name] = node
        return {
            "version": 1,
            "defaults": {
                "timeout": 2,
                "power_timeout": self.power_timeout,
                "poll_interval": 0.05,
            },
            "fencing": {"attempts": 2, "backoff": 0.2, "backoff_max": 2},
            "nodes": nodes,
        }

    def write_inventory(
        self, path: Path, channel_groups: bool = True, *, fence_agents: bool = False
    ) -> Path:
        """Write the password file and the inventory beside it, atomically; returns `path`.

        With `fence_agents` every device is reached through ClusterLabs' fence agents
        instead (`fence_ipmilan`, `fence_redfish`; see `as_fence_agents`).
        """
        path = path.resolve()
        if path.parent != self.workdir.resolve():
            raise ValueError("the inventory must be written into the fleet's workdir")
        secret = self.workdir / "bmc-password"
        tmp = secret.with_suffix(".tmp")
        tmp.write_text(self.password + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(secret)
        doc = self.inventory(secret.name, channel_groups)
        if fence_agents:
            doc = as_fence_agents(doc)
        header = (
            "# nodefence BMC inventory written by `nodefence-hwsim bmcs` for emulated BMCs.\n"
            "# Level 1: IPMI (RMCP+, cipher 17); level 2: Redfish over HTTPS (generated CA).\n"
        )
        if self.pdus:
            header += "# Level 3 of " + ", ".join(self.pdus) + ": its PDU outlet over Redfish.\n"
        tmp_inv = path.with_suffix(".tmp")
        tmp_inv.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        tmp_inv.replace(path)
        return path


def as_fence_agents(doc: dict[str, Any]) -> dict[str, Any]:
    """The same inventory with each device behind the fence agent for its protocol: IPMI
    through `fence_ipmilan` (lanplus, same cipher suite), Redfish through `fence_redfish`
    (its system by `systems_uri`, the run's CA through `ca_file`)."""
    nodes: dict[str, Any] = {}
    for name, node in doc["nodes"].items():
        levels = []
        for level in node["levels"]:
            devices = []
            for dev in level["devices"]:
                agent = {
                    "type": "fence_agent",
                    "name": f"{dev['name']}-agent",
                    "address": dev["address"],
                    "port": dev["port"],
                    "username": dev["username"],
                    "password_file": dev["password_file"],
                }
                if dev["type"] == "ipmi":
                    agent |= {
                        "agent": "fence_ipmilan",
                        "options": {"lanplus": 1, "cipher": dev.get("cipher", 3)},
                    }
                else:
                    agent |= {
                        "agent": "fence_redfish",
                        "ca_file": dev["ca_file"],
                        "options": {"systems_uri": f"/redfish/v1/Systems/{dev['system_id']}"},
                    }
                devices.append(agent)
            levels.append({"devices": devices})
        nodes[name] = {"levels": levels}
    # An agent run starts a Python interpreter (and fence_ipmilan an ipmitool): a request
    # takes ~0.3-1 s where our own backends take milliseconds.
    defaults = {**doc["defaults"], "timeout": max(5, doc["defaults"].get("timeout", 5))}
    return {**doc, "defaults": defaults, "nodes": nodes}
