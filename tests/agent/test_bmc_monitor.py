"""The leader's BMC checks (nodefence.agent.leader.bmc_monitor_loop) against hwsim's BMCs over real
sockets, and their schedule (spread over the interval, bounded concurrency) with timed stand-in
devices."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

from prometheus_client import REGISTRY

from nodefence.agent.config.inventory_file import (
    FencingPolicy,
    Inventory,
    Level,
    NodeInventory,
    load_inventory,
)
from nodefence.agent.leader.bmc_health import Change, Transition
from nodefence.agent.leader.bmc_monitor_loop import BmcMonitor
from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.backends.spec import DeviceSpec, DeviceTimeouts, RedfishDevice, Secret
from nodefence.hwsim.machine import SimMachine
from nodefence.hwsim.redfish import RedfishBmc
from nodefence.hwsim.tls import make_tls
from tests.conftest import RunningFleet


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class Reports:
    def __init__(self) -> None:
        self.changes: list[Transition] = []

    async def __call__(self, change: Transition) -> None:
        self.changes.append(change)

    def take(self) -> list[tuple[Change, str, str | None]]:
        out = [(c.change, c.node, c.device) for c in self.changes]
        self.changes.clear()
        return out


def monitor_of(bmc_fleet: RunningFleet, parallel: int) -> tuple[BmcMonitor, Reports]:
    """A monitor of the fleet's inventory checking `parallel` BMCs at once (rounds run by the
    test), and what it reports."""
    inventory = load_inventory(bmc_fleet.inventory)
    reports = Reports()
    return BmcMonitor(lambda: inventory, interval=60, parallel=parallel, report=reports), reports


async def test_a_changed_password_turns_the_node_unfenceable_and_fixing_it_clears_it(
    bmc_fleet: RunningFleet,
) -> None:
    monitor, reports = monitor_of(bmc_fleet, parallel=4)
    await monitor.check_round()
    assert reports.take() == []
    assert all(v.fenceable for v in monitor.book.nodes.values()), monitor.book.nodes
    assert metric("nodefence_bmc_check_ok", node="node-2", device="ipmi", type="ipmi") == 1
    assert metric("nodefence_node_fenceable", node="node-2") == 1
    days = metric("nodefence_bmc_certificate_expiry_days", node="node-2", device="redfish")
    assert days is not None and days > 300

    bmc_fleet.fleet["node-2"].set_faults(wrong_credentials=True)  # the BMC's password changed
    await monitor.check_round()
    assert sorted(reports.take()) == sorted(
        [
            (Change.DEVICE_BAD, "node-2", "ipmi"),
            (Change.DEVICE_BAD, "node-2", "redfish"),
            (Change.NODE_UNFENCEABLE, "node-2", None),
        ]
    )
    assert metric("nodefence_node_fenceable", node="node-2") == 0
    assert metric("nodefence_bmc_check_ok", node="node-2", device="redfish", type="redfish") == 0
    assert monitor.book.summary("node-2").startswith("CANNOT BE FENCED")
    view = monitor.node_view("node-2")
    assert view is not None and view["fenceable"] is False
    await monitor.check_round()
    assert reports.take() == []  # reported once, not every round

    bmc_fleet.fleet["node-2"].set_faults(wrong_credentials=False)
    await monitor.check_round()
    assert sorted(reports.take()) == sorted(
        [
            (Change.DEVICE_RECOVERED, "node-2", "ipmi"),
            (Change.DEVICE_RECOVERED, "node-2", "redfish"),
            (Change.NODE_FENCEABLE, "node-2", None),
        ]
    )
    assert monitor.book.summary("node-2") == "ok"


async def test_a_silent_ipmi_channel_does_not_make_a_node_unfenceable_when_redfish_works(
    bmc_fleet: RunningFleet,
) -> None:
    monitor, reports = monitor_of(bmc_fleet, parallel=6)
    bmc_fleet.fleet["node-3"].set_faults(unreachable=True)
    await monitor.check_round()
    # Both interfaces of node-3's BMC are silent: nothing left to fence it with.
    assert (Change.NODE_UNFENCEABLE, "node-3", None) in reports.take()
    await bmc_fleet.bmcs.ipmi_bmcs["node-1"].stop()  # only node-1's IPMI is gone
    await monitor.check_round()
    assert reports.take() == [(Change.DEVICE_BAD, "node-1", "ipmi")]
    assert monitor.book.nodes["node-1"].fenceable is True


async def test_a_certificate_that_expires_soon_is_seen_before_it_breaks_fencing(
    tmp_path: Path,
) -> None:
    tls = make_tls(tmp_path, server_valid_for=datetime.timedelta(days=5))
    async with RedfishBmc([SimMachine("n1", "u1")], "admin", "pw", tls=tls) as bmc:
        dev = RedfishDevice(
            "redfish", "127.0.0.1", "admin", Secret("pw"), port=bmc.port, ca_file=str(tls.ca_cert)
        )
        inventory = Inventory("inv", {"n1": NodeInventory("n1", (Level((dev,)),))}, FencingPolicy())
        monitor = BmcMonitor(lambda: inventory, interval=60, parallel=1, report=Reports())
        check = await monitor.check_device("n1", dev)
    assert check.healthy and check.cert_days is not None and 4.9 < check.cert_days < 5.1
    assert check.warning == "TLS certificate expires in 5 d"


class TimedDevice(PowerBackend):
    """A device whose check takes `seconds`; records when each check ran."""

    running = 0
    most = 0
    starts: list[tuple[str, float]] = []

    def __init__(self, node: str, spec: DeviceSpec, seconds: float) -> None:
        self.node, self.device, self.seconds = node, spec.name, seconds

    async def check(self) -> CheckResult:
        cls = TimedDevice
        cls.starts.append((f"{self.node}/{self.device}", time.monotonic()))
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            cls.running -= 1
        return CheckResult(True, True, PowerState.ON, True)

    async def power_state(self) -> PowerState:
        raise AssertionError("a check reads no power state here")

    async def power_off(self) -> None:
        raise AssertionError("a check never powers off")

    async def power_on(self) -> None:
        raise AssertionError("a check never powers on")


def inventory_of(count: int) -> Inventory:
    devices = [
        RedfishDevice(
            f"d{i}", "127.0.0.1", "u", Secret("p"), scheme="http", timeouts=DeviceTimeouts()
        )
        for i in range(count)
    ]
    nodes = {f"n{i}": NodeInventory(f"n{i}", (Level((d,)),)) for i, d in enumerate(devices)}
    return Inventory("inv", nodes, FencingPolicy())


async def test_checks_are_spread_over_the_interval_and_at_most_parallel_run_at_once() -> None:
    TimedDevice.starts, TimedDevice.most = [], 0
    inventory = inventory_of(5)
    monitor = BmcMonitor(
        lambda: inventory,
        interval=1.0,
        parallel=2,
        report=Reports(),
        busy=lambda node: node == "n3",  # its fence walk uses its BMC: not checked now
        factory=lambda node, spec: TimedDevice(node, spec, 0.5),
    )
    started = time.monotonic()
    await monitor.check_round(spread=True)
    starts = dict(TimedDevice.starts)
    assert "n3/d3" not in starts
    assert TimedDevice.most == 2
    for i in (0, 1, 2, 4):
        # Each check starts no earlier than its slot (i * interval / devices).
        assert starts[f"n{i}/d{i}"] - started >= i * 0.2 - 0.02, (i, starts)
    assert starts["n1/d1"] - started < 0.35  # not held back by n0's check: a free slot


class BrokenDevice(TimedDevice):
    async def check(self) -> CheckResult:
        raise RuntimeError("a bug in a backend")


async def test_a_failing_check_never_ends_the_round_or_the_leader_side() -> None:
    from nodefence.backends.errors import BmcUnsupported

    def factory(node: str, spec: DeviceSpec) -> PowerBackend:
        if node == "n0":
            raise BmcUnsupported("cannot even build it", node=node, device=spec.name)
        if node == "n1":
            return BrokenDevice(node, spec, 0)
        return TimedDevice(node, spec, 0)

    inventory = inventory_of(3)
    reports = Reports()
    monitor = BmcMonitor(
        lambda: inventory, interval=1.0, parallel=3, report=reports, factory=factory
    )
    await monitor.check_round()
    assert monitor.book.checks["n0"]["d0"].problem == "unsupported"
    assert not monitor.book.checks.get("n1")  # logged, not recorded
    assert monitor.book.checks["n2"]["d2"].healthy
    assert (Change.NODE_UNFENCEABLE, "n0", None) in reports.take()
