"""Every field of the BMC inventory (`inventory.yaml`), declared once: key, type, default, help.

`nodefence.agent.config.inventory_file` reads the file with these, `FencingPolicy` takes its
defaults from them, and the tables of the guide's "BMC inventory reference" are rendered from them
(`scripts/option-tables`). A key's first part is its table: `fencing`, `node`, `device` (every
device), `ipmi`, `redfish`, `fence_agent`; top-level fields have none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nodefence.agent.config.option_schema import (
    REQUIRED,
    Kind,
    Option,
    boolean,
    choice,
    custom,
    file,
    integer,
    number,
    opt_string,
    options_in,
    required,
    secret,
    section,
    string,
)
from nodefence.agent.fencing.channels import ChannelErrors
from nodefence.backends.spec import DeviceTimeouts

DEVICE_TYPES = ("ipmi", "redfish", "fence_agent")


class InventoryTop:
    """The top level of the file."""

    version = custom("version", None, "`1`.")
    defaults = custom(
        "defaults",
        {},
        "Any device field, merged into every device (the device's own value wins).",
    )
    fencing = section("fencing", "How levels are retried.")
    nodes = custom(
        "nodes",
        REQUIRED,
        "Node name \u2192 `levels:`, a non-empty list, and optionally the node's own"
        " `verify_all_channels` and `channel_errors` (below). A node absent here is never"
        " fenced: the leader raises `AlertNoInventory` instead.",
    )


class Policy:
    """`fencing:` (the defaults of `nodefence.agent.config.inventory_file.FencingPolicy`)."""

    attempts = integer(
        "fencing.attempts",
        2,
        1,
        100,
        "Tries per level before escalating to the next level (1\u2013100). More tries ride out"
        " a flaky BMC; each failed try costs up to the device's `timeout` + `power_timeout`.",
    )
    backoff = number(
        "fencing.backoff",
        0.5,
        0.0,
        "Seconds before the second try of a level; doubles for each further try.",
        unit="seconds",
    )
    backoff_max = number("fencing.backoff_max", 5.0, 0.0, "Cap of that pause.", unit="seconds")
    verify_all_channels = boolean(
        "fencing.verify_all_channels",
        True,
        "Off must also read back on every other device of the node, not only on the level that"
        " switched it (some BMCs report Off early): all devices of a node are one channel group."
        " `false`: no cross-check. A node whose devices do not all see the same power (a BMC and"
        " a PDU outlet) lists its own groups; see [When is Off proven](#when-is-off-proven).",
    )
    channel_errors = choice(
        "fencing.channel_errors",
        ChannelErrors.NOT_PROVEN.value,
        (c.value for c in ChannelErrors),
        "What a cross-checked device that answers with an error means. `not-proven`: it"
        " answered, so it must read Off within its `power_timeout`, or the fence is not proven."
        " `ignore`: it is skipped like a device that does not answer at all. **Risk of"
        " `ignore`:** one channel's word is then enough; if that channel reports Off early (the"
        " reason for the cross-check) while the other answers errors, the Node is deleted with"
        " the machine still on and its VMs can run twice. Use it only for a node whose second"
        " channel is known broken, and only until it is fixed.",
    )


class Node:
    """One entry of `nodes:`."""

    levels = custom(
        "node.levels",
        REQUIRED,
        "The fencing levels, a non-empty list, tried in order (below).",
    )
    verify_all_channels = custom(
        "node.verify_all_channels",
        None,
        "`true` (one group of every device), `false` (no cross-check), or a list of channel"
        " groups, each a non-empty list of device names of this node, e.g. `[[ipmi, redfish],"
        " [pdu-a], [pdu-b]]`: devices in one group are views of the same power. Every device is"
        " in exactly one group; a device alone in its group is not cross-checked. Unknown names,"
        " a device in two groups, empty groups and missing devices are errors.",
        doc_default="`fencing.verify_all_channels`",
    )
    channel_errors = replace(
        Policy.channel_errors,
        key="node.channel_errors",
        help="`not-proven` or `ignore`, for this node.",
        doc_default="`fencing.channel_errors`",
    )


def _timeout(name: str, lo: float, help: str) -> Option[float]:
    default: float = getattr(DeviceTimeouts, name)
    return number(f"device.{name}", default, lo, help, unit="seconds")


class Device:
    """Fields of every device."""

    type = custom("device.type", REQUIRED, "`ipmi`, `redfish` or `fence_agent` (below).")
    name = replace(
        string("device.name", "", "Shown in output, Events and records."),
        doc_default="`level<N>-<M>`",
    )
    address = required("device.address", "Host name or IP (IPv6 allowed) of the BMC or PDU.")
    port = replace(
        integer("device.port", 623, 1, 65535, "The BMC's port."),
        doc_default="`623` (ipmi), `443` (https), `80` (http)",
    )
    username = required("device.username", "The BMC account.")
    password = secret(
        "device.password",
        "A file with the password (trailing newline ignored; relative paths are relative to the"
        " inventory file, e.g. another key of the same Secret), or the name of an environment"
        " variable holding it (you would add it to the DaemonSet). Exactly one of the two.",
    )
    timeout = _timeout("timeout", 0.05, "Seconds for one request (login, read, action).")
    power_timeout = _timeout(
        "power_timeout", 0.05, "Seconds from the power-off request until Off must be read back."
    )
    power_wait = _timeout(
        "power_wait",
        0.0,
        "Pause after a power request before the first read-back (for BMCs that report stale"
        " state right after an action).",
    )
    poll_interval = _timeout("poll_interval", 0.01, "Pause between read-backs.")


class Ipmi:
    """IPMI devices only."""

    cipher = integer(
        "ipmi.cipher",
        3,
        0,
        255,
        "Cipher suite: `3` (HMAC-SHA1, AES) or `17` (HMAC-SHA256, AES). Use 17 where the BMC"
        " supports it.",
    )
    privilege = choice(
        "ipmi.privilege",
        "administrator",
        ("administrator", "operator"),
        "`operator` or `administrator`; `operator` suffices for power control on most BMCs.",
    )
    lanplus = custom(
        "ipmi.lanplus", True, "Only IPMI 2.0 (RMCP+) is supported; `false` is rejected."
    )


IPMI_CIPHERS = (3, 17)
DEFAULT_CHANNEL_ERRORS = ChannelErrors(Policy.channel_errors.default)


class Redfish:
    """Redfish devices only."""

    scheme = choice("redfish.scheme", "https", ("https", "http"), "`https` or `http`.")
    auth = choice(
        "redfish.auth",
        "auto",
        ("auto", "session", "basic"),
        "`session`, `basic`, or `auto` (session, Basic as fallback).",
    )
    ca_file = file(
        "redfish.ca_file",
        "PEM bundle to verify the BMC's certificate (relative to the inventory file).",
        doc_default="system CAs",
    )
    ssl_insecure = boolean(
        "redfish.ssl_insecure",
        False,
        "Skip certificate verification. Only if you really cannot verify the BMC: anyone in the"
        " path could then take the credentials.",
    )
    systems_uri = opt_string(
        "redfish.systems_uri",
        "Explicit ComputerSystem path, e.g. `/redfish/v1/Systems/outlet-7` (PDU outlets).",
    )
    system_id = opt_string("redfish.system_id", "Find the ComputerSystem by Id...")
    system_name = opt_string("redfish.system_name", "...by Name...")
    system_uuid = opt_string(
        "redfish.system_uuid",
        "...or by UUID. The first of `systems_uri`, `system_id`, `system_name`, `system_uuid`"
        " set wins; with none, the service must have exactly one system.",
    )


class FenceAgent:
    """`type: fence_agent` devices only (these replace the fields of every device of the same
    name)."""

    agent = required(
        "fence_agent.agent",
        "The agent's name (found in `PATH`, `/usr/sbin`, `/sbin`, `/usr/local/sbin` when the"
        " inventory is loaded: a missing agent is an inventory error) or its absolute path.",
    )
    address = opt_string("fence_agent.address", "Passed as the agent's `ip`, when set.")
    port: Option[int | None] = Option(
        "fence_agent.port",
        Kind.INTEGER,
        None,
        "Passed as the agent's `ipport`, when set.",
        1,
        65535,
    )
    username = opt_string(
        "fence_agent.username",
        "Passed as the agent's `username`, when set (cloud agents need none).",
    )
    password = secret(
        "fence_agent.password", "Passed as the agent's `password`, on stdin. Optional."
    )
    options = custom(
        "fence_agent.options",
        {},
        "Any other agent option, with the agent's own names (`lanplus`, `cipher`, `plug`,"
        " `ssl_insecure`, `systems_uri`, `method`, ...); `true`/`false` become `1`/`0`."
        " `action`, `ip`, `ipport`, `username`, `login`, `password`, `passwd` and the"
        " `*_script` options are refused (nodefence sets them, or they would run a program to"
        " get a password). An option the agent does not know is an error at the first call,"
        " naming it (agents only warn and go on).",
    )
    ca_file = file(
        "fence_agent.ca_file",
        "Exported to the agent as `REQUESTS_CA_BUNDLE` and `SSL_CERT_FILE`: agents built on"
        " Python's requests or ssl (`fence_redfish`) verify the BMC with it.",
    )


INVENTORY_OPTIONS: tuple[Option[Any], ...] = tuple(
    o
    for group in (InventoryTop, Policy, Node, Device, Ipmi, Redfish, FenceAgent)
    for o in options_in(group)
)
_DEVICE_FIELDS = {f for o in options_in(Device) for f in o.fields}
DEVICE_FIELDS: dict[str, set[str]] = {
    kind: _DEVICE_FIELDS | {f for o in options_in(group) for f in o.fields}
    for kind, group in (("ipmi", Ipmi), ("redfish", Redfish), ("fence_agent", FenceAgent))
}
