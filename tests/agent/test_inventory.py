"""The BMC inventory loader: everything validated up front, errors name file, node, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodefence.agent.config.inventory_file import InventoryError, load_inventory
from nodefence.agent.fencing.channels import ChannelErrors
from nodefence.backends.spec import IpmiDevice, RedfishDevice

GOOD = """
defaults:
  timeout: 3
fencing:
  attempts: 3
  backoff: 0.1
nodes:
  node-1:
    levels:
      - devices:
          - type: ipmi
            address: 10.0.0.11
            username: admin
            password_file: secret
            cipher: 17
      - devices:
          - type: redfish
            name: rf
            address: 10.0.0.12
            username: admin
            password_env: RF_PASS
            ca_file: ca.pem
            system_id: System.Embedded.1
  node-2:
    levels:
      - - type: ipmi
          name: pdu-a
          address: 10.0.0.21
          username: admin
          password_file: secret
        - type: ipmi
          name: pdu-b
          address: 10.0.0.22
          username: admin
          password_file: secret
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "secret").write_text("s3cret-pw\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_a_valid_inventory_loads_levels_devices_and_policy(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD), env={"RF_PASS": "from-env"})
    n1 = inv.node("node-1")
    assert len(n1.levels) == 2
    ipmi, rf = n1.levels[0].devices[0], n1.levels[1].devices[0]
    assert isinstance(ipmi, IpmiDevice) and isinstance(rf, RedfishDevice)
    assert ipmi.cipher == 17 and ipmi.port == 623 and ipmi.timeouts.timeout == 3
    assert ipmi.password.reveal() == "s3cret-pw"
    assert rf.password.reveal() == "from-env" and rf.port == 443 and not rf.ssl_insecure
    assert rf.ca_file == str(tmp_path / "ca.pem")
    assert [d.name for d in inv.node("node-2").levels[0].devices] == ["pdu-a", "pdu-b"]
    assert inv.policy.attempts == 3


def test_passwords_never_show_in_repr_of_the_loaded_inventory(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD), env={"RF_PASS": "from-env"})
    text = repr(inv)
    assert "s3cret-pw" not in text and "from-env" not in text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("cipher: 17", "cipher: 5"), "node 'node-1', level 1, device 1 (ipmi): field 'cipher'"),
        (
            ("            address: 10.0.0.11\n", ""),
            "node 'node-1', level 1, device 1 (ipmi): field 'address'",
        ),
        (("password_env: RF_PASS", "password_env: NOPE"), "environment variable NOPE is not set"),
        (
            (
                "password_file: secret\n            cipher",
                "password_file: missing\n            cipher",
            ),
            "field 'password_file': cannot read",
        ),
        (("type: redfish", "type: snmp"), "field 'type': must be ipmi, redfish or fence_agent"),
        (("ca_file: ca.pem", "ca_file: nope.pem"), "field 'ca_file': no such file"),
        (("system_id: System.Embedded.1", "sytem_id: x"), "unknown field 'sytem_id'"),
        (("attempts: 3", "attempts: 0"), "fencing: field 'attempts'"),
        (("timeout: 3", "timeout: -1"), "defaults"),
        (("timeout: 3", "timout: 3"), "defaults: unknown field 'timout'"),  # not device 1's
        (("name: pdu-b", "name: pdu-a"), "field 'name': 'pdu-a' used twice"),
    ],
)
def test_a_broken_field_is_named_with_file_node_and_device(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    text = GOOD.replace(change[0], change[1], 1)
    assert text != GOOD
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path, env={"RF_PASS": "x"})
    message = str(info.value)
    assert str(path) in message
    if expected != "defaults":
        assert expected in message
    else:
        assert "field 'timeout'" in message


def test_a_default_is_merged_into_the_devices_that_have_that_field(tmp_path: Path) -> None:
    # `cipher` is an IPMI field: the Redfish device of node-1 does not get it (no error).
    path = write(tmp_path, GOOD.replace("  timeout: 3", "  timeout: 3\n  cipher: 17", 1))
    inventory = load_inventory(path, env={"RF_PASS": "x"})
    pdu = inventory.nodes["node-2"].levels[0].devices[0]
    assert isinstance(pdu, IpmiDevice) and pdu.cipher == 17


BMC_AND_PDU = """
fencing:
  channel_errors: ignore
nodes:
  node-1:
    verify_all_channels: [[ipmi, redfish], [pdu]]
    channel_errors: not-proven
    levels:
      - - {type: ipmi, name: ipmi, address: 10.0.0.11, username: a, password_file: secret}
        - {type: redfish, name: redfish, address: 10.0.0.11, username: a, password_file: secret}
      - - {type: redfish, name: pdu, address: 10.0.1.1, username: a, password_file: secret}
  node-2:
    levels:
      - - {type: ipmi, name: ipmi, address: 10.0.0.21, username: a, password_file: secret}
"""


def test_channel_groups_and_channel_errors_load_per_node_and_fencing_wide(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BMC_AND_PDU))
    n1, n2 = inv.node("node-1"), inv.node("node-2")
    assert n1.channel_groups == (frozenset({"ipmi", "redfish"}), frozenset({"pdu"}))
    assert n1.channel_errors is ChannelErrors.NOT_PROVEN
    assert n2.channel_groups is None and n2.channel_errors is None  # follow `fencing:`
    assert inv.policy.channel_errors is ChannelErrors.IGNORE
    assert inv.policy.verify_all_channels is True


@pytest.mark.parametrize(
    ("value", "groups"),
    [("true", (frozenset({"ipmi", "redfish", "pdu"}),)), ("false", ())],
)
def test_a_node_verify_all_channels_boolean_is_one_group_or_none(
    tmp_path: Path, value: str, groups: tuple[frozenset[str], ...]
) -> None:
    text = BMC_AND_PDU.replace("[[ipmi, redfish], [pdu]]", value)
    assert load_inventory(write(tmp_path, text)).node("node-1").channel_groups == groups


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes-please", "must be true, false, or a list of groups"),
        ("3", "must be true, false, or a list of groups"),
        ("[]", "must be true, false, or a list of groups"),
        ("[ipmi, redfish, pdu]", "group 1 must be a non-empty list of device names, got 'ipmi'"),
        ("[[ipmi, redfish], [], [pdu]]", "group 2 must be a non-empty list"),
        ("[[ipmi, redfish], [pdu-x]]", "group 2: 'pdu-x' is not a device of this node"),
        ("[[ipmi, redfish], [pdu, 7]]", "group 2: 7 is not a device of this node"),
        ("[[ipmi, redfish], [pdu, ipmi]]", "group 2: device 'ipmi' is also in group 1"),
        ("[[ipmi, ipmi, redfish], [pdu]]", "group 1: device 'ipmi' is twice in it"),
        ("[[ipmi, redfish]]", "device 'pdu' is in no group"),
        ("{ipmi: redfish}", "must be true, false, or a list of groups"),
    ],
)
def test_a_broken_channel_group_is_named_with_file_node_and_field(
    tmp_path: Path, value: str, expected: str
) -> None:
    text = BMC_AND_PDU.replace("[[ipmi, redfish], [pdu]]", value)
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert message.startswith(f"{path}: node 'node-1': field 'verify_all_channels': ")
    assert expected in message
    assert "(its devices: ipmi, redfish, pdu)" in message or "not a device" not in message


@pytest.mark.parametrize("where", ["fencing", "node-1"])
def test_an_unknown_channel_errors_value_is_named(tmp_path: Path, where: str) -> None:
    old = "channel_errors: ignore" if where == "fencing" else "channel_errors: not-proven"
    path = write(tmp_path, BMC_AND_PDU.replace(old, "channel_errors: skip"))
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    named = "fencing" if where == "fencing" else "node 'node-1'"
    assert f"{path}: {named}: field 'channel_errors': must be one of not-proven, ignore" in str(
        info.value
    )


def test_an_inline_password_is_refused_and_not_echoed(tmp_path: Path) -> None:
    text = GOOD.replace(
        "password_file: secret\n            cipher", "password: hunter2\n            cipher"
    )
    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, text), env={"RF_PASS": "x"})
    assert "inline passwords are not accepted" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not valid YAML at line 2"):
        load_inventory(write(tmp_path, "nodes:\n  - : [\n"))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read the file"):
        load_inventory(tmp_path / "absent.yaml")


def test_an_unknown_node_lists_the_known_ones(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD), env={"RF_PASS": "x"})
    with pytest.raises(KeyError, match="known: node-1, node-2"):
        inv.node("node-9")


def test_the_shipped_example_inventory_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"
    env = {"NODEFENCE_BMC_PASSWORD": "x"}
    text = example.read_text().replace("/etc/nodefence/secrets/", str(tmp_path) + "/")
    for name in ("worker-1-ipmi", "worker-1-redfish", "worker-2-pdu"):
        (tmp_path / name).write_text("pw\n")
    (tmp_path / "bmc-ca.pem").write_text("x")
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    inv = load_inventory(path, env=env)
    assert set(inv.nodes) == {"worker-1", "worker-2", "worker-3"}
    assert inv.node("worker-3").channel_groups == (
        frozenset({"ipmi", "redfish"}),
        frozenset({"pdu"}),
    )
