"""A simulated cluster's settings (`ClusterSettings`) and the names it shares with the manifests.

The broker logins and ServiceAccounts are those of deploy/base (mosquitto.acl, rbac.yaml); the
harness's own observer login is appended to the shipped ACL here, never shipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodefence.hwsim.kube.controllers import ControllerTimers

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "base"
CRD_PATHS = (DEPLOY / "crd-fenceoperations.yaml", DEPLOY / "crd-nodekeys.yaml")
ACL_PATH = DEPLOY / "mosquitto.acl"
OBSERVER = "hwsim-observer"  # the harness's own broker login (live view, tests)
DECKHOUSE_GROUP = "virtualization.deckhouse.io"
# The harness's observer reads everything (appended to the shipped ACL, never shipped).
OBSERVER_ACL = f"\nuser {OBSERVER}\ntopic read nodefence/#\n"
FENCER_USER = "nodefence-fencer"  # the fencers' broker user (deploy/base/mosquitto.acl)
AGENT_ACCOUNT = "nodefence-agent"  # the ServiceAccounts of deploy/base/rbac.yaml, as tokens
FENCER_ACCOUNT = "nodefence-fencer"


@dataclass
class ClusterSettings:
    """Timings and options of a simulated cluster (short ones suit tests)."""

    nodes: int = 3
    cluster: str = "sim"
    profile: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    max_unhealthy: str = "40%"
    lease_duration: float = 5.0  # the agent's defaults (chosen for a fast takeover)
    renew_deadline: float = 3.0
    retry_period: float = 1.0
    kubelet_lease_interval: float = 10.0
    node_monitor_grace: float = 40.0
    inventory: str | None = None
    bmcs: bool = False  # emulated IPMI + Redfish BMCs per node, and their inventory
    pdus: tuple[str, ...] = ()  # nodes also fed by an emulated PDU outlet (with `bmcs`)
    power_timeout: float = 5.0
    bmc_timeout: float = 1.0
    vms: int = 0  # VMs placed over the nodes, with a ColdStandby controller
    # whose VMs: deckhouse (Deckhouse Virtualization), kubevirt (upstream KubeVirt: its CRDs
    # instead of Deckhouse's) or both (`vms` VMs of each, both controllers)
    virt: str = "deckhouse"
    kubevirt_eviction: str | None = None  # the KubeVirt resource's evictionStrategy (None: unset)
    boot_delay: float = 1.0
    migration_delay: float = 1.0
    fencing: dict[str, Any] = field(default_factory=dict)  # agent config `fencing:` section
    secure: bool = True  # broker passwords + shipped ACL, signed heartbeats
    links: bool = False  # each node reaches broker and API through relays (`isolate()`)
    # agent config `watchdog:` section (enabled when set) plus `reboot_after` (hwsim only:
    # seconds from a watchdog reset to power on; absent: the machine stays off)
    watchdog: dict[str, Any] = field(default_factory=dict)
    log_level: str = "info"  # the agents' (debug: everything, e.g. for the secrets test)
    brokers: int = 2  # mosquitto brokers, broker i on the i-th node (1: the old single broker)
    standbys: int = 2  # agent config kubernetes.standbys (warm standby candidates)
    fencers: int = 3  # fencer processes (leader candidates), on the first nodes by name
    # PodGC, taint manager and attach/detach timers (upstream defaults unless compressed)
    timers: ControllerTimers = field(default_factory=ControllerTimers)
