"""The topology walk as pure logic: fake devices and a fake clock, no sockets, no sleeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from nodefence.agent.config.inventory_file import FencingPolicy, Level, NodeInventory
from nodefence.agent.fencing.power_executor import PowerFencer, StopWalk
from nodefence.agent.fencing.stop import StopKind, StopReason
from nodefence.agent.fencing.topology import Attempt, PowerRequest, attempt_plan, combined_state
from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.backends.errors import BmcAuthFailed, BmcUnreachable, FenceError
from nodefence.backends.spec import DeviceSpec, DeviceTimeouts, IpmiDevice, Secret
from tests.support.clock import FakeClock


@dataclass
class FakeDevice(PowerBackend):
    """A scripted BMC: `off_after` seconds of fake time until an off request shows."""

    clock: FakeClock
    node: str = "n"
    device: str = "d"
    state: PowerState = PowerState.ON
    ignore_off: bool = False
    off_after: float = 0.0
    fail_with: list[FenceError] = field(default_factory=list)
    read_fail: FenceError | None = None
    log: list[str] = field(default_factory=list)
    _off_at: float | None = None

    async def power_state(self) -> PowerState:
        self.log.append("status")
        if self.read_fail is not None:
            raise self.read_fail
        if self._off_at is not None and self.clock() >= self._off_at:
            self.state = PowerState.OFF
        return self.state

    async def power_off(self) -> None:
        self.log.append("off")
        if self.fail_with:
            raise self.fail_with.pop(0)
        if not self.ignore_off:
            self._off_at = self.clock() + self.off_after

    async def power_on(self) -> None:
        self.log.append("on")
        if self.fail_with:
            raise self.fail_with.pop(0)
        self._off_at = None
        self.state = PowerState.ON

    async def check(self) -> CheckResult:
        return CheckResult(True, True, self.state, True)


def spec(name: str, power_timeout: float = 5.0) -> IpmiDevice:
    return IpmiDevice(
        name,
        "127.0.0.1",
        "u",
        Secret("p"),
        timeouts=DeviceTimeouts(timeout=1, power_timeout=power_timeout, poll_interval=0.5),
    )


def setup(*levels: list[str], policy: FencingPolicy | None = None):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    devices = {name: FakeDevice(clock, device=name) for lv in levels for name in lv}
    node = NodeInventory("n", tuple(Level(tuple(spec(n) for n in lv)) for lv in levels))

    def factory(node_name: str, s: DeviceSpec) -> PowerBackend:
        return devices[s.name]

    fencer = PowerFencer(
        node,
        policy or FencingPolicy(attempts=2, backoff=1.0, backoff_max=4.0),
        factory=factory,
        clock=clock,
        sleep=clock.sleep,
    )
    return fencer, devices, clock


def test_attempt_plan_tries_each_level_with_exponential_backoff() -> None:
    node = NodeInventory("n", (Level((spec("a"),)), Level((spec("b"),))))
    plan = list(attempt_plan(node, FencingPolicy(attempts=3, backoff=1.0, backoff_max=1.5)))
    assert plan == [
        Attempt(0, 0, 0.0),
        Attempt(0, 1, 1.0),
        Attempt(0, 2, 1.5),
        Attempt(1, 0, 0.0),
        Attempt(1, 1, 1.0),
        Attempt(1, 2, 1.5),
    ]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([PowerState.OFF, PowerState.OFF], PowerState.OFF),
        ([PowerState.OFF, PowerState.ON], PowerState.ON),
        ([PowerState.OFF, PowerState.UNKNOWN], PowerState.UNKNOWN),
        ([], PowerState.UNKNOWN),
    ],
)
def test_a_node_is_off_only_when_every_device_reads_off(
    states: list[PowerState], expected: PowerState
) -> None:
    assert combined_state(states) is expected


async def test_off_is_success_only_after_off_is_read_back() -> None:
    fencer, dev, _ = setup(["ipmi"])
    dev["ipmi"].off_after = 1.2
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.off_proven and out.level == 1
    assert dev["ipmi"].log[0] == "off" and dev["ipmi"].log.count("status") >= 3
    assert [s.request for s in out.steps] == ["off", "verify-off"]


async def test_stuck_on_bmc_is_a_verify_failure_not_success() -> None:
    fencer, dev, clock = setup(["ipmi"])
    dev["ipmi"].ignore_off = True
    out = await fencer.run(PowerRequest.OFF)
    assert not out.success and not out.off_proven
    assert "not confirmed within power_timeout=5" in out.reason
    assert dev["ipmi"].log.count("off") == 2  # both attempts of the only level
    assert clock.now >= 10


async def test_transient_failure_is_retried_on_the_same_level() -> None:
    fencer, dev, clock = setup(["ipmi"])
    dev["ipmi"].fail_with = [BmcUnreachable("down", node="n", device="ipmi")]
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.level == 1 and dev["ipmi"].log.count("off") == 2
    assert clock.now >= 1.0  # backoff before the second attempt


async def test_failing_first_level_escalates_to_the_second() -> None:
    fencer, dev, _ = setup(["ipmi"], ["redfish"], policy=FencingPolicy(verify_all_channels=False))
    dev["ipmi"].fail_with = [BmcAuthFailed("no", node="n", device="ipmi")] * 2
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.level == 2 and len(out.errors) == 2
    assert dev["redfish"].state is PowerState.OFF


async def test_a_level_needs_every_device_off() -> None:
    fencer, dev, _ = setup(["pdu-a", "pdu-b"], policy=FencingPolicy(attempts=1))
    dev["pdu-b"].ignore_off = True
    out = await fencer.run(PowerRequest.OFF)
    assert not out.success
    assert dev["pdu-a"].state is PowerState.OFF and dev["pdu-b"].state is PowerState.ON


async def test_off_must_also_read_off_on_every_other_reachable_channel() -> None:
    fencer, dev, _ = setup(["ipmi"], ["redfish"], policy=FencingPolicy(attempts=1))
    # ipmi says Off early, but redfish still sees the machine On: not proven.
    out = await fencer.run(PowerRequest.OFF)
    assert dev["ipmi"].state is PowerState.OFF and dev["redfish"].state is PowerState.ON
    assert not out.success and not out.off_proven
    assert any(s.device == "redfish" and s.request == "confirm-off" for s in out.steps)


async def test_an_unreachable_other_channel_does_not_block_the_proof() -> None:
    fencer, dev, _ = setup(["ipmi"], ["redfish"], policy=FencingPolicy(attempts=1))
    dev["redfish"].read_fail = BmcUnreachable("down", node="n", device="redfish")
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.off_proven


async def test_reboot_powers_on_only_after_off_was_proven() -> None:
    fencer, dev, _ = setup(["ipmi"])
    dev["ipmi"].off_after = 0.7
    out = await fencer.run(PowerRequest.REBOOT)
    assert out.success and out.state is PowerState.ON
    log = dev["ipmi"].log
    first_off_read = max(i for i, e in enumerate(log[: log.index("on")]) if e == "status")
    assert log.index("on") > first_off_read


async def test_reboot_whose_power_on_fails_still_reports_the_node_proven_off() -> None:
    fencer, dev, _ = setup(["ipmi"], policy=FencingPolicy(attempts=1))
    out_dev = dev["ipmi"]
    original_on = out_dev.power_on

    async def broken_on() -> None:
        raise BmcUnreachable("gone", node="n", device="ipmi")

    out_dev.power_on = broken_on  # type: ignore[method-assign]
    out = await fencer.run(PowerRequest.REBOOT)
    assert not out.success and out.off_proven and "proven off" in out.reason
    out_dev.power_on = original_on  # type: ignore[method-assign]


async def test_status_reads_every_device() -> None:
    fencer, dev, _ = setup(["ipmi"], ["redfish"])
    dev["redfish"].read_fail = BmcUnreachable("down", node="n", device="redfish")
    out = await fencer.run(PowerRequest.STATUS)
    assert out.success and out.state is PowerState.ON and len(out.steps) == 2


async def test_a_guard_that_refuses_stops_before_any_power_request() -> None:
    fencer, dev, _ = setup(["ipmi"])

    async def not_leader(step: str) -> None:
        raise StopWalk(StopReason(StopKind.LEASE_LOST, f"lost the lease before {step}"))

    fencer._guard = not_leader
    out = await fencer.run(PowerRequest.OFF)
    assert not out.success and dev["ipmi"].log == []
    assert out.reason == "stopped: lost the lease before power-off"
