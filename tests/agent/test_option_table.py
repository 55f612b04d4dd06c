"""Golden checks: the examples and the guide's option tables agree with the declarations.

Every option is declared once (agent/config/agent_options.py, agent/config/inventory_options.py).
The guide's tables are rendered from them (scripts/option-tables); the example files must use only
declared keys, with values the declared type, bounds and choices accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodefence.agent.config.agent_file import (
    AgentConfig,
    BrokerConfig,
    FencingConfig,
    KubeConfig,
    WatchdogConfig,
)
from nodefence.agent.config.agent_options import AGENT_OPTIONS, Fencing
from nodefence.agent.config.auth import AuthConfig
from nodefence.agent.config.field_reader import FieldReader, Place
from nodefence.agent.config.inventory_file import FencingPolicy
from nodefence.agent.config.inventory_options import DEVICE_FIELDS, INVENTORY_OPTIONS, Device
from nodefence.agent.config.option_schema import Kind, Option
from nodefence.agent.config.option_tables_file import GUIDE, TABLES, field_cell, tables_in, update
from nodefence.agent.fencing.machine import Timing
from nodefence.backends.spec import DeviceTimeouts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PLAIN = (Kind.STRING, Kind.OPT_STRING, Kind.INTEGER, Kind.NUMBER, Kind.BOOLEAN, Kind.CHOICE)


class _Raise:
    """A place whose errors name the example and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, key: str, problem: str) -> Exception:
        return AssertionError(f"{self.where}.{key}: {problem}")

    def missing(self, key: str) -> Exception:
        return AssertionError(f"{self.where}.{key}: missing")

    def unknown(self, keys: list[str], allowed: set[str]) -> Exception:
        return AssertionError(f"{self.where}: unknown {keys}")

    def at(self, where: str) -> Place:
        return _Raise(f"{self.where}.{where}")


def _valid(opt: Option[Any], value: Any, where: str) -> None:
    """Raise AssertionError unless the declaration accepts `value` for `opt`."""
    if opt.kind in PLAIN:
        FieldReader(Path("example.yaml"), {}, _Raise(where)).read({opt.name: value}, opt)


def _by_field(options: tuple[Option[Any], ...]) -> dict[str, Option[Any]]:
    """Every YAML key (dotted from the table's top) -> its option (a secret's two keys)."""
    return {(f"{o.section}." if o.section else "") + f: o for o in options for f in o.fields}


AGENT_KEYS = _by_field(AGENT_OPTIONS)
INVENTORY_KEYS = _by_field(INVENTORY_OPTIONS)


def _agent_fields(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        name = f"{prefix}{key}"
        yield name, value
        opt = AGENT_KEYS.get(name)
        if opt is not None and opt.kind is Kind.SECTION and isinstance(value, dict):
            yield from _agent_fields(value, f"{name}.")
        if name == "broker.endpoints":  # an entry sets broker fields of its own
            for entry in value:
                yield from ((f"broker.{k}", v) for k, v in entry.items())


def test_the_guide_holds_every_option_table_and_each_is_current() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert sorted(tables_in(text)) == sorted(TABLES), "a table is missing or listed twice"
    assert update(text) == text, "the guide's option tables are stale: run scripts/option-tables"


@pytest.mark.parametrize(
    ("options", "whole_key"), [(AGENT_OPTIONS, True), (INVENTORY_OPTIONS, False)]
)
def test_every_declared_option_is_documented_with_its_default(
    options: tuple[Option[Any], ...], whole_key: bool
) -> None:
    rows = GUIDE.read_text(encoding="utf-8").splitlines()
    for opt in options:
        if opt.kind is Kind.SECTION and whole_key:
            continue  # the agent table lists a section's fields, not the section
        row = f"| {field_cell(opt, whole_key)} | {opt.shown_default()} | "
        assert any(line.startswith(row) for line in rows), f"{opt.key}: no row {row!r}"


def test_every_key_of_the_example_agent_config_is_declared_and_its_value_valid() -> None:
    doc = yaml.safe_load((EXAMPLES / "agent.yaml").read_text(encoding="utf-8"))
    seen = set()
    for name, value in _agent_fields(doc):
        assert name in AGENT_KEYS, f"examples/agent.yaml: {name} is not a declared option"
        _valid(AGENT_KEYS[name], value, f"examples/agent.yaml: {AGENT_KEYS[name].section}")
        seen.add(AGENT_KEYS[name].section)
    # The example shows every section.
    assert {o.section for o in AGENT_OPTIONS} - {"broker.tls"} <= seen


def _device_option(kind: str, key: str) -> Option[Any]:
    return INVENTORY_KEYS.get(f"{kind}.{key}") or INVENTORY_KEYS[f"device.{key}"]


@pytest.mark.parametrize("example", ["inventory.yaml", "inventory-fence-agents.yaml"])
def test_every_key_of_the_example_inventories_is_declared_and_its_value_valid(
    example: str,
) -> None:
    doc = yaml.safe_load((EXAMPLES / example).read_text(encoding="utf-8"))
    where = f"examples/{example}"
    for key in doc:
        assert key in INVENTORY_KEYS, f"{where}: {key} is not a declared field"
    for key, value in (doc.get("fencing") or {}).items():
        assert f"fencing.{key}" in INVENTORY_KEYS, f"{where}: fencing.{key} is not declared"
        _valid(INVENTORY_KEYS[f"fencing.{key}"], value, f"{where}: fencing")
    every_device_field = set().union(*DEVICE_FIELDS.values())
    for key in doc.get("defaults") or {}:
        assert key in every_device_field, f"{where}: defaults.{key} is not a device field"
    devices = 0
    for node, node_doc in doc["nodes"].items():
        for key in node_doc:
            assert f"node.{key}" in INVENTORY_KEYS, f"{where}: node {node}: {key} not declared"
        for level in node_doc["levels"]:
            for dev in level["devices"] if isinstance(level, dict) else level:
                kind = dev["type"]
                for key, value in {**doc.get("defaults", {}), **dev}.items():
                    assert key in DEVICE_FIELDS[kind], f"{where}: {node}: {kind} has no {key}"
                    _valid(_device_option(kind, key), value, f"{where}: {node}")
                devices += 1
    assert devices >= 2


def test_the_dataclass_defaults_are_the_declared_defaults() -> None:
    """No default is typed twice: every dataclass a file fills starts from the declaration."""
    pairs: list[tuple[object, str]] = [
        (BrokerConfig(), "broker"),
        (KubeConfig(), "kubernetes"),
        (FencingConfig(), "fencing"),
        (WatchdogConfig(), "watchdog"),
        (AuthConfig(), "auth"),
        (Timing(), "fencing"),
    ]
    for instance, section in pairs:
        for opt in AGENT_OPTIONS:
            if opt.section == section and hasattr(instance, opt.name) and opt.kind in PLAIN:
                assert getattr(instance, opt.name) == opt.default, opt.key
    assert Timing().retry_base == Fencing.retry_base.default == 5.0
    top = AgentConfig(path="x")
    assert (top.cluster, top.virtualization, top.max_unhealthy) == ("default", "auto", "40%")
    policy = FencingPolicy()
    for opt in INVENTORY_OPTIONS:
        if opt.section == "fencing":
            value = getattr(policy, opt.name)
            assert getattr(value, "value", value) == opt.default, opt.key  # an enum: its value
    for opt in (Device.timeout, Device.power_timeout, Device.power_wait, Device.poll_interval):
        assert getattr(DeviceTimeouts(), opt.name) == opt.default, opt.key
