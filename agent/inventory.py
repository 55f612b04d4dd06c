"""The BMC inventory: node -> ordered fencing levels -> devices, loaded and validated up front.

Nothing is contacted while loading. Any problem raises `InventoryError` naming the file, the
node, the level/device and the field, so an operator can fix it without guessing; a broken
file never yields a partial inventory. Passwords come only from `password_file` or
`password_env` and are wrapped in `Secret` at once.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.brief import brief
from agent.channels import ChannelErrors, Groups, parse_groups
from backends.spec import (
    DeviceSpec,
    DeviceTimeouts,
    FenceAgentDevice,
    IpmiDevice,
    RedfishDevice,
    Secret,
)

_COMMON = {"type", "name", "address", "port", "username", "password_file", "password_env"}
_TIMEOUTS = {"timeout", "power_timeout", "power_wait", "poll_interval"}
_IPMI = _COMMON | _TIMEOUTS | {"cipher", "privilege", "lanplus"}
_REDFISH = (
    _COMMON
    | _TIMEOUTS
    | {
        "scheme",
        "auth",
        "ssl_insecure",
        "ca_file",
        "systems_uri",
        "system_id",
        "system_name",
        "system_uuid",
    }
)
_FENCE_AGENT = _COMMON | _TIMEOUTS | {"agent", "options", "ca_file"}
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
_FENCING = {"attempts", "backoff", "backoff_max", "verify_all_channels", "channel_errors"}
_NODE = {"levels", "verify_all_channels", "channel_errors"}
_CHANNEL_ERRORS = tuple(c.value for c in ChannelErrors)


class InventoryError(ValueError):
    """A problem in the inventory file; the message names file, node and field."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


@dataclass(frozen=True)
class Level:
    """One fencing level: every device must succeed (e.g. both PSUs' PDUs)."""

    devices: tuple[DeviceSpec, ...]


@dataclass(frozen=True)
class NodeInventory:
    """How to fence one node: levels tried in order.

    `channel_groups` (from the node's `verify_all_channels`) and `channel_errors` override
    the fencing-wide policy; `None` follows it (see `agent.channels`).
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
    a cross-checked device that answers with an error means (`agent.channels`).
    """

    attempts: int = 2
    backoff: float = 0.5
    backoff_max: float = 5.0
    verify_all_channels: bool = True
    channel_errors: ChannelErrors = ChannelErrors.NOT_PROVEN

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
                        found[str(_relative(path, merged[key].strip()))] = None
    return tuple(found)


def parse_inventory(doc: Any, *, path: Path, env: dict[str, str]) -> Inventory:
    """Validate an already-parsed YAML document (see `load_inventory`)."""
    if not isinstance(doc, dict):
        raise InventoryError(path, "", "the top level must be a mapping with a `nodes:` key")
    _no_unknown(path, "top level", doc, {"nodes", "defaults", "fencing", "version"})
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(path, "defaults", "must be a mapping of device fields")
    # A typo under `defaults:` is the defaults' error, not the first device's.
    _no_unknown(path, "defaults", defaults, (_IPMI | _REDFISH | _FENCE_AGENT) - {"name"})
    policy = _parse_policy(path, doc.get("fencing") or {})
    nodes_doc = doc.get("nodes")
    if not isinstance(nodes_doc, dict) or not nodes_doc:
        raise InventoryError(path, "nodes", "must be a non-empty mapping of node name -> levels")
    nodes: dict[str, NodeInventory] = {}
    for name, node_doc in nodes_doc.items():
        if not isinstance(name, str) or not name:
            raise InventoryError(path, f"node {name!r}", "node names must be non-empty strings")
        nodes[name] = _parse_node(path, name, node_doc, defaults, env)
    return Inventory(path=str(path), nodes=nodes, policy=policy)


def _parse_policy(path: Path, doc: Any) -> FencingPolicy:
    where = "fencing"
    if not isinstance(doc, dict):
        raise InventoryError(path, where, "must be a mapping")
    _no_unknown(path, where, doc, _FENCING)
    base = FencingPolicy()
    attempts = _int(path, where, doc, "attempts", base.attempts, 1, 100)
    backoff = _number(path, where, doc, "backoff", base.backoff, 0.0)
    backoff_max = _number(path, where, doc, "backoff_max", base.backoff_max, 0.0)
    verify_all = _bool(path, where, doc, "verify_all_channels", base.verify_all_channels)
    errors = _channel_errors(path, where, doc) or base.channel_errors
    return FencingPolicy(attempts, backoff, backoff_max, verify_all, errors)


def _channel_errors(path: Path, where: str, doc: dict[str, Any]) -> ChannelErrors | None:
    if doc.get("channel_errors") is None:
        return None
    return ChannelErrors(_choice(path, where, doc, "channel_errors", "", _CHANNEL_ERRORS))


def _parse_node(
    path: Path, name: str, doc: Any, defaults: dict[str, Any], env: dict[str, str]
) -> NodeInventory:
    where = f"node {name!r}"
    if not isinstance(doc, dict):
        raise InventoryError(path, where, "needs `levels:`, a non-empty list of levels")
    _no_unknown(path, where, doc, _NODE)
    levels_doc = doc.get("levels")
    if not isinstance(levels_doc, list) or not levels_doc:
        raise InventoryError(path, where, "needs `levels:`, a non-empty list of levels")
    levels: list[Level] = []
    seen: set[str] = set()
    for li, level_doc in enumerate(levels_doc, start=1):
        lwhere = f"{where}, level {li}"
        if isinstance(level_doc, dict):
            _no_unknown(path, lwhere, level_doc, {"devices"})
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
    node = NodeInventory(name, tuple(levels))
    return _with_channel_rule(path, where, node, doc)


def _applicable(defaults: dict[str, Any], kind: object) -> dict[str, Any]:
    """The `defaults:` fields a device of type `kind` has (a default `cipher` is for IPMI
    devices only, `scheme` for Redfish ones); every field for a device of no known type."""
    allowed = {"ipmi": _IPMI, "redfish": _REDFISH, "fence_agent": _FENCE_AGENT}.get(str(kind))
    if allowed is None:
        return defaults
    return {k: v for k, v in defaults.items() if k in allowed}


def _with_channel_rule(
    path: Path, where: str, node: NodeInventory, doc: dict[str, Any]
) -> NodeInventory:
    """The node with its own `verify_all_channels` groups and `channel_errors`, if set."""
    groups: Groups | None = None
    if doc.get("verify_all_channels") is not None:
        names = [d.name for d in node.devices()]
        try:
            groups = parse_groups(doc["verify_all_channels"], names)
        except ValueError as err:
            raise InventoryError(path, where, f"field 'verify_all_channels': {err}") from None
    errors = _channel_errors(path, where, doc)
    return NodeInventory(node.name, node.levels, groups, errors)


def _parse_device(
    path: Path, where: str, doc: dict[str, Any], env: dict[str, str], default_name: str
) -> DeviceSpec:
    kind = doc.get("type")
    if kind not in ("ipmi", "redfish", "fence_agent"):
        raise InventoryError(
            path, where, f"field 'type': must be ipmi, redfish or fence_agent, got {brief(kind)}"
        )
    where = f"{where} ({kind})"
    if "password" in doc:
        raise InventoryError(
            path,
            where,
            "field 'password': inline passwords are not accepted; "
            "use password_file or password_env",
        )
    allowed = {"ipmi": _IPMI, "redfish": _REDFISH, "fence_agent": _FENCE_AGENT}[kind]
    _no_unknown(path, where, doc, allowed)
    name = _str(path, where, doc, "name", default_name)
    if kind == "fence_agent":
        return _parse_fence_agent(path, where, doc, env, name)
    address = _str(path, where, doc, "address", None)
    username = _str(path, where, doc, "username", None)
    password = _password(path, where, doc, env)
    timeouts = _timeouts(path, where, doc)
    if kind == "ipmi":
        if doc.get("lanplus", True) is not True:
            raise InventoryError(
                path, where, "field 'lanplus': only IPMI 2.0 (lanplus: true) is supported"
            )
        cipher = _int(path, where, doc, "cipher", 3, 0, 255)
        if cipher not in (3, 17):
            raise InventoryError(path, where, f"field 'cipher': must be 3 or 17, got {cipher}")
        privilege = _choice(
            path, where, doc, "privilege", "administrator", ("administrator", "operator")
        )
        return IpmiDevice(
            name=name,
            address=address,
            username=username,
            password=password,
            port=_int(path, where, doc, "port", 623, 1, 65535),
            cipher=cipher,
            privilege=privilege,  # type: ignore[arg-type]
            timeouts=timeouts,
        )
    scheme = _choice(path, where, doc, "scheme", "https", ("https", "http"))
    ca_file = doc.get("ca_file")
    if ca_file is not None:
        ca_path = _relative(path, _str(path, where, doc, "ca_file", None))
        if not ca_path.is_file():
            raise InventoryError(path, where, f"field 'ca_file': no such file {ca_path}")
        ca_file = str(ca_path)
    return RedfishDevice(
        name=name,
        address=address,
        username=username,
        password=password,
        port=_int(path, where, doc, "port", 443 if scheme == "https" else 80, 1, 65535),
        scheme=scheme,  # type: ignore[arg-type]
        auth=_choice(path, where, doc, "auth", "auto", ("auto", "session", "basic")),  # type: ignore[arg-type]
        ssl_insecure=_bool(path, where, doc, "ssl_insecure", False),
        ca_file=ca_file,
        systems_uri=_opt_str(path, where, doc, "systems_uri"),
        system_id=_opt_str(path, where, doc, "system_id"),
        system_name=_opt_str(path, where, doc, "system_name"),
        system_uuid=_opt_str(path, where, doc, "system_uuid"),
        timeouts=timeouts,
    )


def _timeouts(path: Path, where: str, doc: dict[str, Any]) -> DeviceTimeouts:
    return DeviceTimeouts(
        timeout=_number(path, where, doc, "timeout", DeviceTimeouts.timeout, 0.05),
        power_timeout=_number(
            path, where, doc, "power_timeout", DeviceTimeouts.power_timeout, 0.05
        ),
        power_wait=_number(path, where, doc, "power_wait", DeviceTimeouts.power_wait, 0.0),
        poll_interval=_number(
            path, where, doc, "poll_interval", DeviceTimeouts.poll_interval, 0.01
        ),
    )


def _parse_fence_agent(
    path: Path, where: str, doc: dict[str, Any], env: dict[str, str], name: str
) -> FenceAgentDevice:
    """A `type: fence_agent` device: the agent must be installed (found now, not at a fence)."""
    agent = _find_agent(path, where, _str(path, where, doc, "agent", None))
    options: list[tuple[str, str]] = []
    raw = doc.get("options") or {}
    if not isinstance(raw, dict):
        raise InventoryError(path, where, "field 'options': must be a mapping of agent options")
    for key, value in raw.items():
        owhere = f"field 'options.{key}'"
        if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
            raise InventoryError(path, where, f"{owhere}: not an agent option name")
        why = _AGENT_RESERVED.get(key.replace("-", "_"))
        if why is not None:
            raise InventoryError(path, where, f"{owhere}: not accepted here; {why}")
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise InventoryError(path, where, f"{owhere}: must be a string, number or boolean")
        if any(c in text for c in "\n\r\0"):
            raise InventoryError(path, where, f"{owhere}: must be a single line")
        options.append((key.replace("-", "_"), text))
    has_password = doc.get("password_file") is not None or doc.get("password_env") is not None
    ca_file = doc.get("ca_file")
    if ca_file is not None:
        ca_path = _relative(path, _str(path, where, doc, "ca_file", None))
        if not ca_path.is_file():
            raise InventoryError(path, where, f"field 'ca_file': no such file {ca_path}")
        ca_file = str(ca_path)
    return FenceAgentDevice(
        name=name,
        agent=agent,
        options=tuple(options),
        address=_opt_str(path, where, doc, "address"),
        port=None if doc.get("port") is None else _int(path, where, doc, "port", 0, 1, 65535),
        username=_opt_str(path, where, doc, "username"),
        password=_password(path, where, doc, env) if has_password else None,
        ca_file=ca_file,
        timeouts=_timeouts(path, where, doc),
    )


def _find_agent(path: Path, where: str, value: str) -> str:
    """The absolute path of an installed fence agent named `value` (a name or a path)."""
    if "/" in value:
        found = value if os.path.isabs(value) and os.access(value, os.X_OK) else None
        if found is None or not os.path.isfile(found):
            raise InventoryError(
                path, where, f"field 'agent': {brief(value)} is not an executable file"
            )
        return found
    if not _AGENT_NAME.fullmatch(value):
        raise InventoryError(
            path, where, f"field 'agent': {brief(value)} is not a fence agent name (fence_...)"
        )
    search = os.pathsep.join([os.environ.get("PATH", ""), *AGENT_DIRS])
    found = shutil.which(value, path=search)
    if found is None:
        raise InventoryError(
            path,
            where,
            f"field 'agent': {value} is not installed (looked in PATH and "
            f"{', '.join(AGENT_DIRS)}); install fence-agents or give its path",
        )
    return found


def _password(path: Path, where: str, doc: dict[str, Any], env: dict[str, str]) -> Secret:
    pfile, penv = doc.get("password_file"), doc.get("password_env")
    if (pfile is None) == (penv is None):
        raise InventoryError(
            path, where, "set exactly one of the fields 'password_file' and 'password_env'"
        )
    if penv is not None:
        var = _str(path, where, doc, "password_env", None)
        value = env.get(var)
        if not value:
            raise InventoryError(
                path, where, f"field 'password_env': environment variable {var} is not set"
            )
        return Secret(value)
    file = _relative(path, _str(path, where, doc, "password_file", None))
    try:
        value = file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path, or not UTF-8
        problem = err.strerror if isinstance(err, OSError) else _not_readable(err)
        raise InventoryError(
            path, where, f"field 'password_file': cannot read {brief(str(file))}: {problem}"
        ) from None
    if not value:
        raise InventoryError(path, where, f"field 'password_file': {file} is empty")
    return Secret(value)


def _relative(path: Path, value: str) -> Path:
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~user/..." of a user that does not exist: read it as written
        p = Path(value)
    return p if p.is_absolute() else (path.parent / p)


def _not_readable(err: ValueError) -> str:
    return "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "not a valid file name"


def _no_unknown(path: Path, where: str, doc: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(str(k) for k in doc if k not in allowed)
    if extra:
        raise InventoryError(
            path,
            where,
            f"unknown field {extra[0]!r} (allowed: {', '.join(sorted(allowed))})",
        )


def _str(path: Path, where: str, doc: dict[str, Any], key: str, default: str | None) -> str:
    value = doc.get(key, default)
    if value is None:
        raise InventoryError(path, where, f"field {key!r} is required")
    if not isinstance(value, str) or not value.strip():
        raise InventoryError(path, where, f"field {key!r}: must be a non-empty string")
    return value.strip()


def _opt_str(path: Path, where: str, doc: dict[str, Any], key: str) -> str | None:
    return None if doc.get(key) is None else _str(path, where, doc, key, None)


def _choice(
    path: Path, where: str, doc: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]
) -> str:
    value = doc.get(key, default)
    if value not in allowed:
        raise InventoryError(
            path, where, f"field {key!r}: must be one of {', '.join(allowed)}, got {brief(value)}"
        )
    return str(value)


def _bool(path: Path, where: str, doc: dict[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise InventoryError(
            path, where, f"field {key!r}: must be true or false, got {brief(value)}"
        )
    return value


def _int(
    path: Path, where: str, doc: dict[str, Any], key: str, default: int, lo: int, hi: int
) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InventoryError(
            path, where, f"field {key!r}: must be an integer {lo}-{hi}, got {brief(value)}"
        )
    return value


def _number(
    path: Path, where: str, doc: dict[str, Any], key: str, default: float, lo: float
) -> float:
    value = doc.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    # Range before isfinite: a huge YAML integer would overflow the float conversion.
    if not ok or not lo <= value <= 1e9 or not math.isfinite(value):
        raise InventoryError(
            path,
            where,
            f"field {key!r}: must be a number in {lo:g}..1e9 (seconds), got {brief(value)}",
        )
    return float(value)
