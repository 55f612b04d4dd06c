"""`Option`: one declared setting of the agent config or the inventory, and its kinds.

A declaration is the only place a setting's key, type, default, bounds, choices and help are
written: the readers (`nodefence.agent.config.field_reader`) parse and validate with it, the config
dataclasses and `nodefence.agent.fencing.machine.Timing` take their defaults from it, and the
operator guide's option tables are rendered from it (`nodefence.agent.config.option_tables_file`).
Pure data: no file or environment is read here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_NUMBER = 1e9  # no setting needs more; bounds every number before any float conversion


class Kind(enum.StrEnum):
    """How a value is read and checked (`nodefence.agent.config.field_reader.FieldReader.read`)."""

    STRING = "string"  # a non-empty string, stripped
    OPT_STRING = "opt_string"  # the same, or null/absent
    INTEGER = "integer"  # an integer lo..hi (never a boolean)
    NUMBER = "number"  # an integer or a finite float lo..MAX_NUMBER
    BOOLEAN = "boolean"
    CHOICE = "choice"  # one of `choices`
    FILE = "file"  # an existing file (relative to the file that names it), or null/absent
    SECRET = "secret"  # `<name>_file` or `<name>_env`, never inline; held as `Secret`
    CUSTOM = "custom"  # a shape of its own (a list, a mapping): read by its loader
    SECTION = "section"  # a mapping of further options (not a row of the guide's tables)


class Required:
    """The default of a field that must be set."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = Required()


@dataclass(frozen=True)
class Option(Generic[T]):
    """One setting: `key` is dotted from its table's top (`fencing.retry_base`).

    `doc_default` is how the guide shows a default that is not one plain value ("`required`
    with keys, else `off`"); `unit` is named in a number's error; `strip` (choices) accepts
    surrounding blanks, as the agent config's strings always have.
    """

    key: str
    kind: Kind
    default: T
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""
    doc_default: str | None = None
    strip: bool = False

    @property
    def name(self) -> str:
        """The last part of the key: the field as the YAML mapping spells it."""
        return self.key.rpartition(".")[2]

    @property
    def section(self) -> str:
        """The key without its last part ("" at the top)."""
        return self.key.rpartition(".")[0]

    @property
    def fields(self) -> tuple[str, ...]:
        """The YAML keys it takes: a secret's two (`password_file`, `password_env`)."""
        if self.kind is Kind.SECRET:
            return (f"{self.name}_file", f"{self.name}_env")
        return (self.name,)

    @property
    def secret(self) -> bool:
        """Whether its value is a secret (read from a file or the environment, never shown)."""
        return self.kind is Kind.SECRET

    def with_default(self, default: T) -> Option[T]:
        """The same option with another default (an IPMI port 623, a Redfish one 443)."""
        return replace(self, default=default)

    def shown_default(self) -> str:
        """The default as the guide's tables show it."""
        if self.doc_default is not None:
            return self.doc_default
        value: object = self.default
        if self.kind is Kind.SECTION:
            return "see below"
        if value is REQUIRED:
            return "required"
        if value is None:
            return "\u2013"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, float) and value.is_integer():
            return f"`{int(value)}`"
        return f"`{value}`"


def string(key: str, default: str, help: str) -> Option[str]:
    """A non-empty string."""
    return Option(key, Kind.STRING, default, help)


def required(key: str, help: str) -> Option[str]:
    """A non-empty string that must be set."""
    return Option(key, Kind.STRING, REQUIRED, help)


def opt_string(key: str, help: str, doc_default: str | None = None) -> Option[str | None]:
    """A non-empty string, or null."""
    return Option(key, Kind.OPT_STRING, None, help, doc_default=doc_default)


def integer(key: str, default: int, lo: int, hi: int, help: str) -> Option[int]:
    """An integer in lo..hi."""
    return Option(key, Kind.INTEGER, default, help, lo=lo, hi=hi)


def number(key: str, default: float, lo: float, help: str, unit: str = "") -> Option[float]:
    """A number in lo..MAX_NUMBER."""
    return Option(key, Kind.NUMBER, default, help, lo=lo, hi=MAX_NUMBER, unit=unit)


def boolean(key: str, default: bool, help: str) -> Option[bool]:
    """true or false."""
    return Option(key, Kind.BOOLEAN, default, help)


def choice(
    key: str,
    default: str,
    choices: Iterable[str],
    help: str,
    strip: bool = False,
    doc_default: str | None = None,
) -> Option[str]:
    """One of `choices`."""
    return Option(
        key,
        Kind.CHOICE,
        default,
        help,
        choices=tuple(choices),
        strip=strip,
        doc_default=doc_default,
    )


def file(key: str, help: str, doc_default: str | None = None) -> Option[str | None]:
    """An existing file, or null."""
    return Option(key, Kind.FILE, None, help, doc_default=doc_default)


def secret(key: str, help: str) -> Option[None]:
    """`<key>_file` or `<key>_env` (`nodefence.agent.config.secret_files`)."""
    return Option(key, Kind.SECRET, None, help)


def custom(key: str, default: Any, help: str, doc_default: str | None = None) -> Option[Any]:
    """A field with a shape of its own, parsed by its loader; declared for its key and docs."""
    return Option(key, Kind.CUSTOM, default, help, doc_default=doc_default)


def section(key: str, help: str) -> Option[None]:
    """A mapping whose own fields are declared under `key`."""
    return Option(key, Kind.SECTION, None, help)


def options_in(namespace: type) -> tuple[Option[Any], ...]:
    """Every `Option` a class body declares, in declaration order."""
    return tuple(v for v in vars(namespace).values() if isinstance(v, Option))


def fields_of(options: Iterable[Option[Any]], section: str) -> set[str]:
    """The YAML keys a mapping at `section` may hold."""
    return {f for o in options if o.section == section for f in o.fields}
