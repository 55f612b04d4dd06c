"""What the BMC checks mean (pure): is a device healthy, can a node be fenced, what changed.

A device check (`DeviceCheck`) is what `PowerBackend.check()` saw plus, for HTTPS devices, the
days until the BMC's certificate expires. A device is healthy when it answered, accepted the
credentials, read a power state and offers a hard power-off, and its certificate has not
expired. A node can be fenced when at least one of its levels could prove Off today: every
device of the level is healthy, and no channel of the same power (the node's channel groups,
`nodefence.agent.fencing.channels`) would block the proof by answering with an error. A channel that
does not answer at all is skipped by the proof (it cannot contradict it), and one whose errors the
node ignores (`channel_errors: ignore`) too; every other unhealthy cross-checked channel blocks it.
A node without any check yet is not judged.

`HealthBook` keeps the last verdict per device and node and returns the transitions an
operator must hear about: a device turning bad or recovering, a node that cannot be fenced
any more or can again. The first check of a device that is bad is a transition (from the
unknown, assumed good); a first good one is not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodefence.agent.config.inventory_file import FencingPolicy, NodeInventory
from nodefence.agent.fencing.channels import ChannelErrors, cross_checked
from nodefence.agent.fencing.topology import channel_errors, channel_groups
from nodefence.backends.base import PowerState

CERT_WARN_DAYS = 14.0  # a certificate expiring sooner is reported (the device stays healthy)


@dataclass(frozen=True)
class DeviceCheck:
    """One check of one device, as seen; `at` is wall-clock seconds."""

    node: str
    device: str
    type: str
    at: float
    reachable: bool
    authenticated: bool
    power: PowerState
    reset_supported: bool
    reason: str = ""  # the failing error's reason (nodefence.backends.errors), "" when none failed
    detail: str = ""
    cert_days: float | None = None  # days until the BMC's TLS certificate expires

    @property
    def healthy(self) -> bool:
        """Answered, logged in, read a power state, offers power-off, certificate valid."""
        expired = self.cert_days is not None and self.cert_days <= 0
        return (
            self.reachable
            and self.authenticated
            and self.power is not PowerState.UNKNOWN
            and self.reset_supported
            and not expired
        )

    @property
    def silent(self) -> bool:
        """Nothing answered at all: a channel a proof of Off may skip."""
        return self.reason == "unreachable"

    @property
    def problem(self) -> str:
        """What is wrong, in one short phrase ("" when healthy)."""
        if self.healthy:
            return ""
        if self.cert_days is not None and self.cert_days <= 0:
            return f"TLS certificate expired {-self.cert_days:.0f} d ago"
        if self.reason:
            return self.reason
        if not self.reachable:
            return "unreachable"
        if not self.authenticated:
            return "auth_failed"
        if not self.reset_supported:
            return "no hard power-off"
        return "power state unknown"

    @property
    def warning(self) -> str:
        """A healthy device's warning: a certificate that expires soon ("" when none)."""
        if self.healthy and self.cert_days is not None and self.cert_days < CERT_WARN_DAYS:
            return f"TLS certificate expires in {self.cert_days:.0f} d"
        return ""


@dataclass(frozen=True)
class Fenceability:
    """Whether a node can be fenced by what its last checks saw, and why not."""

    node: str
    fenceable: bool | None  # None: not every device was checked yet
    reason: str = ""


def fenceability(
    node: NodeInventory, policy: FencingPolicy, checks: Mapping[str, DeviceCheck]
) -> Fenceability:
    """Can `node` be fenced now, given its devices' last `checks` (by device name)?"""
    devices = node.devices()
    if any(d.name not in checks for d in devices):
        return Fenceability(node.name, None, "not every device checked yet")
    groups = channel_groups(node, policy)
    ignore_errors = channel_errors(node, policy) is ChannelErrors.IGNORE
    why: list[str] = []
    for li, level in enumerate(node.levels, start=1):
        bad = [d.name for d in level.devices if not checks[d.name].healthy]
        if bad:
            why.append(f"level {li}: {_listing(bad, checks)}")
            continue
        proven_by = [d.name for d in level.devices]
        blocking = sorted(
            name
            for name in cross_checked(groups, proven_by)
            if not checks[name].healthy and not checks[name].silent and not ignore_errors
        )
        if not blocking:
            return Fenceability(node.name, True)
        why.append(
            f"level {li} works but {_listing(blocking, checks)} (same power, answering with "
            "errors) would block the proof of Off"
        )
    return Fenceability(node.name, False, "; ".join(why))


def _listing(names: Iterable[str], checks: Mapping[str, DeviceCheck]) -> str:
    return ", ".join(f"{n} {checks[n].problem}" for n in names)


class Change(enum.StrEnum):
    """A transition worth an Event and an alert; the value is the Event reason."""

    DEVICE_BAD = "BmcCheckFailed"
    DEVICE_RECOVERED = "BmcCheckRecovered"
    NODE_UNFENCEABLE = "NodeCannotBeFenced"
    NODE_FENCEABLE = "NodeFenceableAgain"


@dataclass(frozen=True)
class Transition:
    """One change of a device's or a node's verdict, with the words to report it."""

    change: Change
    node: str
    device: str | None
    message: str

    @property
    def warning(self) -> bool:
        """Whether it is bad news (an Event of type Warning)."""
        return self.change in (Change.DEVICE_BAD, Change.NODE_UNFENCEABLE)


class HealthBook:
    """The last check of every device and the last verdict of every node (see module doc)."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, DeviceCheck]] = {}  # node -> device -> last check
        self.nodes: dict[str, Fenceability] = {}

    def record(
        self, check: DeviceCheck, node: NodeInventory, policy: FencingPolicy
    ) -> list[Transition]:
        """Take in one check; the transitions it causes (device first, then node)."""
        devices = self.checks.setdefault(check.node, {})
        before = devices.get(check.device)
        devices[check.device] = check
        out: list[Transition] = []
        was_healthy = before is None or before.healthy
        if was_healthy and not check.healthy:
            out.append(
                Transition(
                    Change.DEVICE_BAD,
                    check.node,
                    check.device,
                    f"BMC check of {check.device} ({check.type}) failed: {check.problem}: "
                    f"{check.detail}",
                )
            )
        elif not was_healthy and check.healthy:
            out.append(
                Transition(
                    Change.DEVICE_RECOVERED,
                    check.node,
                    check.device,
                    f"BMC check of {check.device} ({check.type}) passes again",
                )
            )
        out += self.judge(node, policy)
        return out

    def judge(self, node: NodeInventory, policy: FencingPolicy) -> list[Transition]:
        """Re-judge `node` from the checks kept (also after an inventory change)."""
        known = {
            name: c
            for name, c in self.checks.get(node.name, {}).items()
            if name in {d.name for d in node.devices()}
        }
        self.checks[node.name] = known
        now = fenceability(node, policy, known)
        before = self.nodes.get(node.name)
        self.nodes[node.name] = now
        if now.fenceable is False and (before is None or before.fenceable is not False):
            return [
                Transition(
                    Change.NODE_UNFENCEABLE,
                    node.name,
                    None,
                    f"node {node.name} cannot be fenced: every fencing path is broken "
                    f"({now.reason})",
                )
            ]
        if now.fenceable is True and before is not None and before.fenceable is False:
            return [
                Transition(
                    Change.NODE_FENCEABLE,
                    node.name,
                    None,
                    f"node {node.name} can be fenced again",
                )
            ]
        return []

    def forget_except(self, nodes: Iterable[str]) -> None:
        """Drop what is kept about nodes no longer in the inventory."""
        keep = set(nodes)
        for gone in set(self.checks) - keep:
            del self.checks[gone]
        for gone in set(self.nodes) - keep:
            del self.nodes[gone]

    def summary(self, node: str) -> str:
        """One cell for `nodefence status`: ok, what fails, or CANNOT BE FENCED."""
        verdict = self.nodes.get(node)
        checks = self.checks.get(node, {})
        if not checks:
            return "-"
        failing = [f"{c.device}: {c.problem}" for c in checks.values() if not c.healthy]
        warnings = [f"{c.device}: {c.warning}" for c in checks.values() if c.warning]
        if verdict is not None and verdict.fenceable is False:
            return "CANNOT BE FENCED (" + "; ".join(failing) + ")"
        if failing:
            return "degraded (" + "; ".join(failing + warnings) + ")"
        if warnings:
            return "ok (" + "; ".join(warnings) + ")"
        return "ok"
