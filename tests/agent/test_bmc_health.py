"""What BMC checks mean (nodefence.agent.leader.bmc_health, pure): device health, whether a node can
be fenced (with the proof rule of its channel groups), and the transitions that are reported."""

from __future__ import annotations

import pytest

from nodefence.agent.config.inventory_file import FencingPolicy, Level, NodeInventory
from nodefence.agent.fencing.channels import ChannelErrors
from nodefence.agent.leader.bmc_health import Change, DeviceCheck, HealthBook, fenceability
from nodefence.backends.base import PowerState
from nodefence.backends.spec import DeviceTimeouts, IpmiDevice, RedfishDevice, Secret

IPMI = IpmiDevice("ipmi", "10.0.0.1", "admin", Secret("x"), timeouts=DeviceTimeouts())
REDFISH = RedfishDevice("redfish", "10.0.0.2", "admin", Secret("x"))
PDU = IpmiDevice("pdu", "10.0.0.3", "admin", Secret("x"))


def node(*levels: tuple[object, ...], **rule: object) -> NodeInventory:
    return NodeInventory("n1", tuple(Level(tuple(lv)) for lv in levels), **rule)  # type: ignore[arg-type]


OK = dict(reachable=True, authenticated=True, power=PowerState.ON, reset_supported=True)
STATES: dict[str, dict[str, object]] = {
    "ok": OK,
    "unreachable": dict(OK, reachable=False, authenticated=False, reason="unreachable"),
    "auth_failed": dict(OK, authenticated=False, power=PowerState.UNKNOWN, reason="auth_failed"),
    "tls": dict(OK, authenticated=False, power=PowerState.UNKNOWN, reason="tls"),
    "no_reset": dict(OK, reset_supported=False, reason="unsupported"),
    "power_unknown": dict(OK, power=PowerState.UNKNOWN, reason="protocol"),
    "cert_expired": dict(OK, cert_days=-3.0),
    "cert_soon": dict(OK, cert_days=5.0),
}


def check(device: str, state: str, at: float = 0.0) -> DeviceCheck:
    return DeviceCheck("n1", device, "ipmi", at, **STATES[state])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "healthy", "problem"),
    [
        ("ok", True, ""),
        ("unreachable", False, "unreachable"),
        ("auth_failed", False, "auth_failed"),
        ("tls", False, "tls"),
        ("no_reset", False, "unsupported"),
        ("power_unknown", False, "protocol"),
        ("cert_expired", False, "TLS certificate expired 3 d ago"),
        ("cert_soon", True, ""),
    ],
)
def test_a_device_is_healthy_only_when_every_part_of_its_check_passed(
    state: str, healthy: bool, problem: str
) -> None:
    c = check("ipmi", state)
    assert (c.healthy, c.problem) == (healthy, problem)


def test_a_certificate_that_expires_soon_is_a_warning_on_a_healthy_device() -> None:
    assert check("ipmi", "cert_soon").warning == "TLS certificate expires in 5 d"
    assert check("ipmi", "ok").warning == ""


TWO_LEVELS = node((IPMI,), (REDFISH,))


@pytest.mark.parametrize(
    ("inventory", "states", "fenceable", "why"),
    [
        (TWO_LEVELS, {"ipmi": "ok", "redfish": "ok"}, True, ""),
        (TWO_LEVELS, {"ipmi": "unreachable", "redfish": "ok"}, True, ""),  # skipped in a proof
        # Redfish works, but IPMI (same power) answers with an error: the proof of Off
        # would wait for it to read Off and fail.
        (TWO_LEVELS, {"ipmi": "auth_failed", "redfish": "ok"}, False, "would block the proof"),
        (TWO_LEVELS, {"ipmi": "ok", "redfish": "tls"}, False, "redfish tls"),
        (
            node((IPMI,), (REDFISH,), channel_errors=ChannelErrors.IGNORE),
            {"ipmi": "auth_failed", "redfish": "ok"},
            True,
            "",
        ),
        (
            node((IPMI,), (REDFISH,), channel_groups=(frozenset({"ipmi"}), frozenset({"redfish"}))),
            {"ipmi": "auth_failed", "redfish": "ok"},
            True,
            "",
        ),
        (TWO_LEVELS, {"ipmi": "auth_failed", "redfish": "auth_failed"}, False, "level 1: ipmi"),
        (node((IPMI, PDU)), {"ipmi": "ok", "pdu": "no_reset"}, False, "pdu unsupported"),
        (TWO_LEVELS, {"ipmi": "ok"}, None, "not every device checked"),
    ],
)
def test_a_node_can_be_fenced_when_one_level_could_prove_off_today(
    inventory: NodeInventory,
    states: dict[str, str],
    fenceable: bool | None,
    why: str,
) -> None:
    checks = {name: check(name, state) for name, state in states.items()}
    verdict = fenceability(inventory, FencingPolicy(), checks)
    assert verdict.fenceable is fenceable, verdict.reason
    assert why in verdict.reason


def test_transitions_are_reported_once_when_a_device_turns_bad_and_when_it_recovers() -> None:
    book, policy = HealthBook(), FencingPolicy()
    assert book.record(check("ipmi", "ok"), TWO_LEVELS, policy) == []  # node not judged yet
    assert book.record(check("redfish", "ok"), TWO_LEVELS, policy) == []  # first good: nothing
    changes = book.record(check("redfish", "auth_failed"), TWO_LEVELS, policy)
    assert [c.change for c in changes] == [Change.DEVICE_BAD, Change.NODE_UNFENCEABLE]
    assert all(c.warning for c in changes)
    assert "cannot be fenced" in changes[1].message and "redfish auth_failed" in changes[1].message
    assert book.record(check("redfish", "auth_failed"), TWO_LEVELS, policy) == []  # still bad
    assert book.summary("n1").startswith("CANNOT BE FENCED (redfish: auth_failed")
    changes = book.record(check("redfish", "ok"), TWO_LEVELS, policy)
    assert [c.change for c in changes] == [Change.DEVICE_RECOVERED, Change.NODE_FENCEABLE]
    assert not any(c.warning for c in changes)
    assert book.summary("n1") == "ok"


def test_a_device_bad_at_its_first_check_is_reported() -> None:
    book = HealthBook()
    changes = book.record(check("ipmi", "unreachable"), node((IPMI,)), FencingPolicy())
    assert [c.change for c in changes] == [Change.DEVICE_BAD, Change.NODE_UNFENCEABLE]


def test_a_node_removed_from_the_inventory_is_forgotten() -> None:
    book = HealthBook()
    book.record(check("ipmi", "auth_failed"), node((IPMI,)), FencingPolicy())
    book.forget_except(["other"])
    assert book.checks == {} and book.nodes == {}
    assert book.summary("n1") == "-"
