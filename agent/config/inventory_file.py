"""The BMC inventory: node -> ordered fencing levels -> devices, loaded and validated up front.

Nothing is contacted while loading. Any problem raises `InventoryError` naming the file, the
node, the level/device and the field, so an operator can fix it without guessing; a broken
file never yields a partial inventory. Passwords come only from `password_file` or
`password_env` and are wrapped in `Secret` at once.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nodefence.agent.brief import brief
from nodefence.agent.config.field_reader import FieldReader
from nodefence.agent.config.inventory_options import (
    DEFAULT_CHANNEL_ERRORS,
    DEVICE_FIELDS,
    DEVICE_TYPES,
    INVENTORY_OPTIONS,
    IPMI_CIPHERS,
    Device,
    FenceAgent,
    Ipmi,
    Node,
    Policy,
    Redfish,
)
from nodefence.agent.config.option_schema import fields_of
from nodefence.agent.config.secret_files import relative_to
from nodefence.agent.fencing.channels import ChannelErrors, Groups, parse_groups
from nodefence.backends.spec import (
    DeviceSpec,
    DeviceTimeouts,
    FenceAgentDevice,
    IpmiDevice,
    RedfishDevice,
)

# Options a fence agent takes from us, not from `options:` (the password only from
# password_file/_env; a *_script option would run a program to get one).
_AGENT_RESERVED = {
    "action": "it is chosen by nodefence",
    "ip": "use the field 'address'",
    "ipaddr": "use the field 'address'",
    "ipport": "use the field 'port'",
    "username": "use the field 'username'",
    "login": "use the field 'username'",
    "password": "use password_file or password_env",
    "passwd": "use password_file or password_env",
    "password_script": "use password_file or password_env",
    "passwd_script": "use password_file or password_env",
}
_AGENT_NAME = re.compile(r"fence_[A-Za-z0-9_]+")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_-]*")
AGENT_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class InventoryError(ValueError):
    """A problem in the inventory file; the message names file, node and field."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


@dataclass(frozen=True)
class _Where:
    """A place in the inventory (`node 'w1', level 1, device 2 (ipmi)`); fields named in the
    problem (`field 'port': ...`)."""

    path: Path
    where: str

    def error(self, key: str, problem: str) -> Exception:
        return InventoryError(
            self.path, self.where, f"field {key!r}: {problem}" if key else problem
        )

    def missing(self, key: str) -> Exception:
        return InventoryError(self.path, self.where, f"field {key!r} is required")

    def unknown(self, keys: list[str], allowed: set[str]) -> Exception:
        return InventoryError(
            self.path,
            self.where,
            f"unknown field {sorted(keys)[0]!r} (allowed: {', '.join(sorted(allowed))})",
        )

    def at(self, where: str) -> _Where:
        return _Where(self.path, where)


@dataclass(frozen=True)
class Level:
    """One fencing level: every device must succeed (e.g. both PSUs' PDUs)."""

    devices: tuple[DeviceSpec, ...]


@dataclass(frozen=True)
class NodeInventory:
    """How to fence one node: levels tried in order.

    `channel_groups` (from the node's `verify_all_channels`) and `channel_errors` override
    the fencing-wide policy; `None` follows it (see `nodefence.agent.fencing.channels`).
    """

    name: str
    levels: tuple[Level, ...]
    channel_groups: Groups | None = None
    channel_errors: ChannelErrors | None = None

    def devices(self) -> list[DeviceSpec]:
        """Every device of every level, in order."""
        return [d for level in self.levels for d in level.devices]


@dataclass(frozen=True)
class FencingPolicy:
    """Retries and backoff when walking a node's levels.

    `attempts` per level; the pause before attempt k+1 is `backoff * 2**k`, capped at
    `backoff_max`. `verify_all_channels`: Off must read back on every other device of the
    node, not only on the level that powered it off (single BMCs have reported Off early); a
    node may narrow this to groups of devices that see the same power. `channel_errors`: what
    a cross-checked device that answers with an error means (`nodefence.agent.fencing.channels`).
    """

    attempts: int = Policy.attempts.default
    backoff: float = Policy.backoff.default
    backoff_max: float = Policy.backoff_max.default
    verify_all_channels: bool = Policy.verify_all_channels.default
    channel_errors: ChannelErrors = DEFAULT_CHANNEL_ERRORS

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (0-based) of a level."""
        if attempt <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Inventory:
    """All nodes of the inventory file, with the fencing policy it sets.

    `sources` are the other files it was read from (password and CA files): a change to one
    of them (a rotated Secret) is a change of the inventory.
    """

    path: str
    nodes: dict[str, NodeInventory]
    policy: FencingPolicy
    sources: tuple[str, ...] = ()

    def node(self, name: str) -> NodeInventory:
        """The node's inventory; `KeyError` with a helpful message when unknown."""
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise KeyError(
                f"node {name!r} is not in the inventory {self.path} (known: {known})"
            ) from None


def load_inventory(path: Path | str, env: dict[str, str] | None = None) -> Inventory:
    """Read, validate and return the inventory at `path`; raise `InventoryError` on any flaw."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InventoryError(path, "", f"cannot read the file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise InventoryError(path, "", "not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InventoryError(path, "", f"not valid YAML{at}") from None
    except (ValueError, RecursionError):
        # ValueError: e.g. an integer beyond Python's digit limit; RecursionError: nesting.
        raise InventoryError(path, "", "not valid YAML") from None
    inventory = parse_inventory(doc, path=path, env=env)
    return Inventory(inventory.path, inventory.nodes, inventory.policy, _files_named(doc, path))


def _files_named(doc: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The password and CA files a valid inventory document names, resolved, once each."""
    defaults = doc.get("defaults") or {}
    found: dict[str, None] = {}
    for node in (doc.get("nodes") or {}).values():
        for level in node.get("levels") or []:
            devices = level.get("devices") if isinstance(level, dict) else level
            for dev in devices or []:
                merged = {**_applicable(defaults, dev.get("type")), **dev}
                for key in ("password_file", "ca_file"):
                    if isinstance(merged.get(key), str):
                        found[str(relative_to(path, merged[key].strip()))] = None
    return tuple(found)


def _reader(path: Path, env: dict[str, str], where: str) -> FieldReader:
    return FieldReader(path, env, _Where(path, where))


def parse_inventory(doc: Any, *, path: Path, env: dict[str, str]) -> Inventory:
    """Validate an already-parsed YAML document (see `load_inventory`)."""
    if not isinstance(doc, dict):
        raise InventoryError(path, "", "the top level must be a mapping with a `nodes:` key")
    _reader(path, env, "top level").check_fields(doc, fields_of(INVENTORY_OPTIONS, ""))
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(path, "defaults", "must be a mapping of device fields")
    # A typo under `defaults:` is the defaults' error, not the first device's.
    every_field = set().union(*DEVICE_FIELDS.values()) - {"name"}
    _reader(path, env, "defaults").check_fields(defaults, every_field)
    policy = _parse_policy(_reader(path, env, "fencing"), doc.get("fencing") or {})
    nodes_doc = doc.get("nodes")
    if not isinstance(nodes_doc, dict) or not nodes_doc:
        raise InventoryError(path, "nodes", "must be a non-empty mapping of node name -> levels")
    nodes: dict[str, NodeInventory] = {}
    for name, node_doc in nodes_doc.items():
        if not isinstance(name, str) or not name:
            raise InventoryError(path, f"node {name!r}", "node names must be non-empty strings")
        nodes[name] = _parse_node(path, name, node_doc, defaults, env)
    return Inventory(path=str(path), nodes=nodes, policy=policy)


def _parse_policy(r: FieldReader, doc: Any) -> FencingPolicy:
    values = r.read_all(
        r.mapping(doc, fields_of(INVENTORY_OPTIONS, "fencing")),
        [
            Policy.attempts,
            Policy.backoff,
            Policy.backoff_max,
            Policy.verify_all_channels,
        ],
    )
    errors = _channel_errors(r, doc) or DEFAULT_CHANNEL_ERRORS
    return FencingPolicy(**values, channel_errors=errors)


def _channel_errors(r: FieldReader, doc: dict[str, Any]) -> ChannelErrors | None:
    if doc.get("channel_errors") is None:
        return None
    return ChannelErrors(r.read(doc, Policy.channel_errors))


def _parse_node(
    path: Path, name: str, doc: Any, defaults: dict[str, Any], env: dict[str, str]
) -> NodeInventory:
    where = f"node {name!r}"
    r = _reader(path, env, where)
    if not isinstance(doc, dict):
        raise InventoryError(path, where, "needs `levels:`, a non-empty list of levels")
    r.check_fields(doc, fields_of(INVENTORY_OPTIONS, "node"))
    levels_doc = doc.get("levels")
    if not isinstance(levels_doc, list) or not levels_doc:
        raise InventoryError(path, where, "needs `levels:`, a non-empty list of levels")
    levels: list[Level] = []
    seen: set[str] = set()
    for li, level_doc in enumerate(levels_doc, start=1):
        lwhere = f"{where}, level {li}"
        if isinstance(level_doc, dict):
            _reader(path, env, lwhere).check_fields(level_doc, {"devices"})
            devices_doc = level_doc.get("devices")
        else:
            devices_doc = level_doc
        if not isinstance(devices_doc, list) or not devices_doc:
            raise InventoryError(path, lwhere, "needs `devices:`, a non-empty list of devices")
        devices: list[DeviceSpec] = []
        for di, dev_doc in enumerate(devices_doc, start=1):
            dwhere = f"{lwhere}, device {di}"
            if not isinstance(dev_doc, dict):
                raise InventoryError(path, dwhere, "must be a mapping with `type:` and fields")
            merged = {**_applicable(defaults, dev_doc.get("type")), **dev_doc}
            dev = _parse_device(path, dwhere, merged, env, default_name=f"level{li}-{di}")
            if dev.name in seen:
                raise InventoryError(path, dwhere, f"field 'name': {dev.name!r} used twice")
            seen.add(dev.name)
            devices.append(dev)
        levels.append(Level(tuple(devices)))
    return _with_channel_rule(r, NodeInventory(name, tuple(levels)), doc)


def _applicable(defaults: dict[str, Any], kind: object) -> dict[str, Any]:
    """The `defaults:` fields a device of type `kind` has (a default `cipher` is for IPMI
    devices only, `scheme` for Redfish ones); every field for a device of no known type."""
    allowed = DEVICE_FIELDS.get(str(kind))
    if allowed is None:
        return defaults
    return {k: v for k, v in defaults.items() if k in allowed}


def _with_channel_rule(r: FieldReader, node: NodeInventory, doc: dict[str, Any]) -> NodeInventory:
    """The node with its own `verify_all_channels` groups and `channel_errors`, if set."""
    groups: Groups | None = None
    if doc.get("verify_all_channels") is not None:
        names = [d.name for d in node.devices()]
        try:
            groups = parse_groups(doc["verify_all_channels"], names)
        except ValueError as err:
            raise r.fail(Node.verify_all_channels.name, str(err)) from None
    return NodeInventory(node.name, node.levels, groups, _channel_errors(r, doc))


def _parse_device(
    path: Path, where: str, doc: dict[str, Any], env: dict[str, str], default_name: str
) -> DeviceSpec:
    kind = doc.get("type")
    if kind not in DEVICE_TYPES:
        raise InventoryError(
            path, where, f"field 'type': must be ipmi, redfish or fence_agent, got {brief(kind)}"
        )
    r = _reader(path, env, f"{where} ({kind})")
    r.refuse_inline(doc, Device.password)
    r.check_fields(doc, DEVICE_FIELDS[str(kind)])
    name = r.read(doc, Device.name.with_default(default_name))
    if kind == "fence_agent":
        return _parse_fence_agent(r, doc, name)
    address = r.read(doc, Device.address)
    username = r.read(doc, Device.username)
    password = r.secret(doc, Device.password, required=True)
    assert password is not None  # required=True: set, or an error was raised
    timeouts = _timeouts(r, doc)
    if kind == "ipmi":
        if doc.get("lanplus", Ipmi.lanplus.default) is not True:
            raise r.fail("lanplus", "only IPMI 2.0 (lanplus: true) is supported")
        cipher = r.read(doc, Ipmi.cipher)
        if cipher not in IPMI_CIPHERS:
            raise r.fail("cipher", f"must be 3 or 17, got {cipher}")
        return IpmiDevice(
            name=name,
            address=address,
            username=username,
            password=password,
            port=r.read(doc, Device.port),
            cipher=cipher,
            privilege=r.read(doc, Ipmi.privilege),  # type: ignore[arg-type]
            timeouts=timeouts,
        )
    scheme = r.read(doc, Redfish.scheme)
    return RedfishDevice(
        name=name,
        address=address,
        username=username,
        password=password,
        port=r.read(doc, Device.port.with_default(443 if scheme == "https" else 80)),
        scheme=scheme,  # type: ignore[arg-type]
        auth=r.read(doc, Redfish.auth),  # type: ignore[arg-type]
        ssl_insecure=r.read(doc, Redfish.ssl_insecure),
        ca_file=r.read(doc, Redfish.ca_file),
        systems_uri=r.read(doc, Redfish.systems_uri),
        system_id=r.read(doc, Redfish.system_id),
        system_name=r.read(doc, Redfish.system_name),
        system_uuid=r.read(doc, Redfish.system_uuid),
        timeouts=timeouts,
    )


def _timeouts(r: FieldReader, doc: dict[str, Any]) -> DeviceTimeouts:
    return DeviceTimeouts(
        **r.read_all(
            doc, (Device.timeout, Device.power_timeout, Device.power_wait, Device.poll_interval)
        )
    )


def _parse_fence_agent(r: FieldReader, doc: dict[str, Any], name: str) -> FenceAgentDevice:
    """A `type: fence_agent` device: the agent must be installed (found now, not at a fence)."""
    agent = _find_agent(r, r.read(doc, FenceAgent.agent))
    options: list[tuple[str, str]] = []
    raw = doc.get("options") or {}
    if not isinstance(raw, dict):
        raise r.fail("options", "must be a mapping of agent options")
    for key, value in raw.items():
        okey = f"options.{key}"
        if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
            raise r.fail(okey, "not an agent option name")
        why = _AGENT_RESERVED.get(key.replace("-", "_"))
        if why is not None:
            raise r.fail(okey, f"not accepted here; {why}")
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise r.fail(okey, "must be a string, number or boolean")
        if any(c in text for c in "\n\r\0"):
            raise r.fail(okey, "must be a single line")
        options.append((key.replace("-", "_"), text))
    return FenceAgentDevice(
        name=name,
        agent=agent,
        options=tuple(options),
        address=r.read(doc, FenceAgent.address),
        port=None if doc.get("port") is None else r.read(doc, FenceAgent.port),
        username=r.read(doc, FenceAgent.username),
        password=r.secret(doc, FenceAgent.password, required=False),
        ca_file=r.read(doc, FenceAgent.ca_file),
        timeouts=_timeouts(r, doc),
    )


def _find_agent(r: FieldReader, value: str) -> str:
    """The absolute path of an installed fence agent named `value` (a name or a path)."""
    if "/" in value:
        found = value if os.path.isabs(value) and os.access(value, os.X_OK) else None
        if found is None or not os.path.isfile(found):
            raise r.fail("agent", f"{brief(value)} is not an executable file")
        return found
    if not _AGENT_NAME.fullmatch(value):
        raise r.fail("agent", f"{brief(value)} is not a fence agent name (fence_...)")
    search = os.pathsep.join([os.environ.get("PATH", ""), *AGENT_DIRS])
    found = shutil.which(value, path=search)
    if found is None:
        raise r.fail(
            "agent",
            f"{value} is not installed (looked in PATH and {', '.join(AGENT_DIRS)});"
            " install fence-agents or give its path",
        )
    return found
