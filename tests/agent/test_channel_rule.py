"""When is Off proven: the channel rule, table-driven over small topologies of fake channels.

The fakes model the physical world rather than scripted answers: a node's host power and the
outlet (PDU) feeding it. BMC channels (ipmi, redfish) are views of the host's power and die
with the outlet (the BMC has no standby power left, so it does not answer at all); a PDU
channel is a view of its outlet, whose power does not follow the host's. Inventories are
written in the operator's YAML format and go through the real loader. Fake clock, no sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodefence.agent.config.inventory_file import parse_inventory
from nodefence.agent.fencing.power_executor import PowerFencer
from nodefence.agent.fencing.topology import PowerOutcome, PowerRequest
from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.backends.errors import (
    BmcAuthFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
    FenceError,
)
from nodefence.backends.spec import DeviceSpec
from tests.support.clock import FakeClock


@dataclass
class World:
    """One node's machine: host power, and the outlets (PDUs) that feed it."""

    host_on: bool = True
    outlets_on: dict[str, bool] = field(default_factory=dict)

    @property
    def fed(self) -> bool:
        """The machine has power from at least one outlet (or has no PDU at all)."""
        return not self.outlets_on or any(self.outlets_on.values())


@dataclass
class FakeChannel(PowerBackend):
    """One channel to the node's power: a BMC view of the host, or a PDU outlet."""

    world: World
    node: str = "n"
    device: str = "d"
    outlet: str | None = None  # set for a PDU channel: the outlet it switches
    off_errors: list[FenceError] = field(default_factory=list)  # next power-off requests fail
    read_errors: list[FenceError] = field(default_factory=list)  # next reads fail
    always_fails: FenceError | None = None  # every read fails like this
    reads: int = 0

    def _answer_or_raise(self) -> None:
        if self.outlet is None and not self.world.fed:
            raise BmcUnreachable(
                "no answer (BMC without power)", node=self.node, device=self.device
            )

    async def power_state(self) -> PowerState:
        self.reads += 1
        self._answer_or_raise()
        if self.read_errors:
            raise self.read_errors.pop(0)
        if self.always_fails is not None:
            raise self.always_fails
        if self.outlet is not None:
            return PowerState.ON if self.world.outlets_on[self.outlet] else PowerState.OFF
        return PowerState.ON if self.world.host_on and self.world.fed else PowerState.OFF

    async def power_off(self) -> None:
        self._answer_or_raise()
        if self.off_errors:
            raise self.off_errors.pop(0)
        if self.outlet is not None:
            self.world.outlets_on[self.outlet] = False
            if not self.world.fed:
                self.world.host_on = False
        else:
            self.world.host_on = False

    async def power_on(self) -> None:
        self._answer_or_raise()
        if self.outlet is not None:
            self.world.outlets_on[self.outlet] = True
        else:
            self.world.host_on = True

    async def check(self) -> CheckResult:
        return CheckResult(True, True, await self.power_state(), True)


ENV = {"PW": "pw"}


def inventory(levels: list[list[str]], node: dict[str, Any], fencing: dict[str, Any]) -> Any:
    """An inventory document for node "n": device names in levels (pdu* are PDU outlets)."""
    return {
        "defaults": {
            "username": "fence",
            "password_env": "PW",
            "address": "127.0.0.1",
            "power_timeout": 5,
            "poll_interval": 0.5,
        },
        "fencing": {"attempts": 1, **fencing},
        "nodes": {
            "n": {
                "levels": [
                    {"devices": [{"type": "redfish", "name": name} for name in level]}
                    for level in levels
                ],
                **node,
            }
        },
    }


Arrange = Callable[[dict[str, FakeChannel], World], None]


def rig(
    levels: list[list[str]], node: dict[str, Any] | None = None, **fencing: Any
) -> tuple[PowerFencer, dict[str, FakeChannel], World]:
    doc = inventory(levels, node or {}, fencing)
    inv = parse_inventory(doc, path=Path("inventory.yaml"), env=ENV)
    world = World(outlets_on={n: True for lv in levels for n in lv if n.startswith("pdu")})
    clock = FakeClock()
    channels = {
        n: FakeChannel(world, device=n, outlet=n if n.startswith("pdu") else None)
        for lv in levels
        for n in lv
    }

    def factory(node_name: str, spec: DeviceSpec) -> PowerBackend:
        return channels[spec.name]

    fencer = PowerFencer(inv.node("n"), inv.policy, factory=factory, clock=clock, sleep=clock.sleep)
    return fencer, channels, world


def results(out: PowerOutcome, device: str, request: str = "confirm-off") -> list[str]:
    return [s.result for s in out.steps if s.device == device and s.request == request]


# --- errored vs unreachable channels --------------------------------------------------------

ERRORS = [
    BmcAuthFailed("login refused", node="n", device="redfish"),
    BmcProtocolError("HTTP 500", node="n", device="redfish"),
    BmcTimeout("answered, then stalled", node="n", device="redfish"),
    BmcUnsupported("HTTP 404", node="n", device="redfish"),
    BmcTlsError("certificate not trusted", node="n", device="redfish"),
]


@pytest.mark.parametrize("error", ERRORS, ids=[e.reason for e in ERRORS])
async def test_an_errored_channel_beside_an_off_read_is_not_proof_of_off(
    error: FenceError,
) -> None:
    # ipmi powers the host off and reads Off; redfish (same BMC, other protocol) answers with
    # an error every time: it answered, so it cannot be skipped, and it never read Off.
    fencer, ch, world = rig([["ipmi"], ["redfish"]])
    ch["redfish"].always_fails = error
    out = await fencer.run(PowerRequest.OFF)
    assert not world.host_on  # the host is off, but nothing proved it twice
    assert not out.success and not out.off_proven
    assert "node=n device=redfish" in out.reason
    assert error.message in out.reason  # what it answered
    assert "channel_errors" in out.reason  # where to change it
    assert ch["redfish"].reads > 2  # retried like a channel that reads On


async def test_an_unreachable_channel_beside_an_off_read_is_skipped_and_says_so() -> None:
    fencer, ch, _ = rig([["ipmi"], ["redfish"]])
    ch["redfish"].always_fails = BmcUnreachable("no answer", node="n", device="redfish")
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.off_proven and out.level == 1
    (step,) = [s for s in out.steps if s.device == "redfish"]
    assert step.result == "unreachable" and "skipped" in step.detail
    assert ch["redfish"].reads == 1


async def test_an_errored_channel_that_reads_off_within_its_power_timeout_is_proof() -> None:
    fencer, ch, _ = rig([["ipmi"], ["redfish"]])
    ch["redfish"].read_errors = [BmcTimeout("stalled", node="n", device="redfish")] * 3
    out = await fencer.run(PowerRequest.OFF)
    assert out.success and out.off_proven
    assert results(out, "redfish") == ["timeout"]
    assert results(out, "redfish", "verify-off") == ["off"]


@pytest.mark.parametrize(
    ("node", "fencing", "proven"),
    [
        ({}, {}, False),  # default: not-proven
        ({}, {"channel_errors": "not-proven"}, False),
        ({}, {"channel_errors": "ignore"}, True),
        ({"channel_errors": "ignore"}, {}, True),
        ({"channel_errors": "not-proven"}, {"channel_errors": "ignore"}, False),
        ({"channel_errors": "ignore"}, {"channel_errors": "not-proven"}, True),
    ],
)
async def test_channel_errors_ignore_skips_an_errored_channel_per_node_or_fencing_wide(
    node: dict[str, Any], fencing: dict[str, Any], proven: bool
) -> None:
    fencer, ch, _ = rig([["ipmi"], ["redfish"]], node, **fencing)
    ch["redfish"].always_fails = BmcAuthFailed("login refused", node="n", device="redfish")
    out = await fencer.run(PowerRequest.OFF)
    assert out.off_proven is proven
    if proven:
        (step,) = [s for s in out.steps if s.device == "redfish"]
        assert step.result == "auth_failed" and "channel_errors: ignore" in step.detail


async def test_ignore_does_not_skip_a_channel_that_reads_on() -> None:
    fencer, ch, world = rig([["ipmi"], ["redfish"]], channel_errors="ignore")
    lying_ipmi(ch["ipmi"])
    out = await fencer.run(PowerRequest.OFF)
    assert world.host_on and not out.off_proven
    assert results(out, "redfish") == ["on"]


def lying_ipmi(channel: FakeChannel) -> None:
    """The channel acknowledges the power-off and reads Off at once; the host stays On."""

    async def ignore() -> None:
        return None

    async def off() -> PowerState:
        return PowerState.OFF

    channel.power_off = ignore  # type: ignore[method-assign]
    channel.power_state = off  # type: ignore[method-assign]


# --- channel groups: the BMC + PDU and two-PDU shapes ---------------------------------------

BMC_THEN_PDU = [["ipmi", "redfish"], ["pdu"]]
BMC_GROUPS = {"verify_all_channels": [["ipmi", "redfish"], ["pdu"]]}
ALL_ONE_GROUP = {"verify_all_channels": True}
NO_CROSS_CHECK = {"verify_all_channels": False}


@pytest.mark.parametrize(
    ("levels", "node", "fencing", "faults", "proven_by"),
    [
        # Level 1 (the BMC) turns the host off; the outlet stays On, as it should.
        pytest.param(BMC_THEN_PDU, BMC_GROUPS, {}, "", 1, id="bmc-off-groups"),
        pytest.param(
            BMC_THEN_PDU, BMC_GROUPS, ALL_ONE_GROUP, "", 1, id="bmc-off-node-groups-over-true"
        ),
        # One group of every device (true, the default): the outlet contradicts forever.
        pytest.param(BMC_THEN_PDU, {}, {}, "", None, id="bmc-off-default"),
        pytest.param(BMC_THEN_PDU, ALL_ONE_GROUP, NO_CROSS_CHECK, "", None, id="bmc-off-node-true"),
        # No cross-check at all.
        pytest.param(BMC_THEN_PDU, NO_CROSS_CHECK, {}, "", 1, id="bmc-off-node-false"),
        pytest.param(BMC_THEN_PDU, {}, NO_CROSS_CHECK, "", 1, id="bmc-off-fencing-false"),
        # Level 1 fails; the PDU cuts the outlet; the BMC channels then do not answer at all.
        pytest.param(BMC_THEN_PDU, BMC_GROUPS, {}, "bmc-refuses", 2, id="pdu-cuts-groups"),
        pytest.param(BMC_THEN_PDU, {}, {}, "bmc-refuses", 2, id="pdu-cuts-default"),
        # Two PDUs feed two PSUs: one level switches both outlets, both must read Off.
        pytest.param([["pdu-a", "pdu-b"]], {}, {}, "", 1, id="two-pdus"),
        pytest.param([["pdu-a", "pdu-b"]], {}, {}, "pdu-b-errors", None, id="two-pdus-error"),
        # A BMC first, then both PDUs: the BMC refuses, both outlets are cut, the BMC is gone.
        pytest.param(
            [["ipmi"], ["pdu-a", "pdu-b"]],
            {"verify_all_channels": [["ipmi"], ["pdu-a"], ["pdu-b"]]},
            {},
            "bmc-refuses",
            2,
            id="bmc-then-two-pdus",
        ),
        pytest.param(
            [["ipmi"], ["pdu-a", "pdu-b"]],
            {"verify_all_channels": [["ipmi"], ["pdu-a"], ["pdu-b"]]},
            {},
            "bmc-refuses+pdu-b-errors",
            None,
            id="bmc-then-two-pdus-error",
        ),
    ],
)
async def test_off_is_proven_through_the_channels_that_share_its_power(
    levels: list[list[str]],
    node: dict[str, Any],
    fencing: dict[str, Any],
    faults: str,
    proven_by: int | None,
) -> None:
    fencer, ch, world = rig(levels, node, **fencing)
    for fault in filter(None, faults.split("+")):
        if fault == "bmc-refuses":
            for name in ("ipmi", "redfish"):
                if name in ch:
                    ch[name].off_errors = [BmcAuthFailed("refused", node="n", device=name)]
        elif fault == "pdu-b-errors":
            ch["pdu-b"].always_fails = BmcProtocolError("HTTP 500", node="n", device="pdu-b")
    out = await fencer.run(PowerRequest.OFF)
    assert out.off_proven is (proven_by is not None), out.errors
    assert out.success is (proven_by is not None)
    if proven_by is not None:
        assert out.level == proven_by and not world.host_on
    if levels is BMC_THEN_PDU and faults == "":
        assert world.outlets_on["pdu"], "level 1 alone must never switch the outlet"


async def test_a_device_outside_the_group_is_reported_as_not_cross_checked() -> None:
    fencer, ch, world = rig(BMC_THEN_PDU, BMC_GROUPS)
    out = await fencer.run(PowerRequest.OFF)
    assert out.off_proven and world.outlets_on["pdu"]
    assert ch["pdu"].reads == 0
    (step,) = [s for s in out.steps if s.device == "pdu"]
    assert step.request == "confirm-off" and step.result == "skipped"
    assert "not in a channel group" in step.detail


async def test_a_group_member_on_another_level_must_read_off() -> None:
    # ipmi and redfish of one BMC on two levels: redfish still reads On (ipmi lied).
    fencer, ch, world = rig(
        [["ipmi"], ["redfish"], ["pdu"]],
        {"verify_all_channels": [["ipmi", "redfish"], ["pdu"]]},
    )
    lying_ipmi(ch["ipmi"])
    out = await fencer.run(PowerRequest.OFF)
    assert world.host_on and not out.off_proven
    assert results(out, "redfish") == ["on"] and results(out, "pdu") == ["skipped"]
