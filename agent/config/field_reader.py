"""`FieldReader`: typed, validated access to a YAML mapping, driven by `Option` declarations.

Shared by the agent config (`nodefence.agent.config.agent_file`) and the inventory
(`nodefence.agent.config.inventory_file`); each names its own errors through a `Place` (the agent
config's `field 'broker.port'`, the inventory's
`node 'w1', level 1, device 2 (ipmi): field 'port'`), so one check yields the same problem
text in both files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from nodefence.agent.brief import brief
from nodefence.agent.config.option_schema import MAX_NUMBER, REQUIRED, Kind, Option
from nodefence.agent.config.secret_files import (
    SecretUnavailable,
    read_secret_env,
    read_secret_file,
    relative_to,
)
from nodefence.backends.spec import Secret

T = TypeVar("T")
_MAX_TEXT = f"{MAX_NUMBER:.0e}".replace("e+0", "e")  # "1e9", as operators write it


class Place(Protocol):
    """Where in a file the reader is; it makes the file's own error for a field there."""

    def error(self, key: str, problem: str) -> Exception:
        """The error for field `key` here ("" for the place itself)."""
        ...

    def missing(self, key: str) -> Exception:
        """The error for a field that must be set and is not."""
        ...

    def unknown(self, keys: list[str], allowed: set[str]) -> Exception:
        """The error for fields that are not allowed here (`keys`, in document order)."""
        ...

    def at(self, where: str) -> Place:
        """The place of a mapping nested under field `where`."""
        ...


class FieldReader:
    """Reads declared options out of a mapping; every flaw raises the place's error."""

    def __init__(self, path: Path, env: Mapping[str, str], place: Place) -> None:
        self.path = path
        self.env = env
        self.place = place

    def at(self, where: str) -> FieldReader:
        """A reader for the mapping nested under field `where`."""
        return FieldReader(self.path, self.env, self.place.at(where))

    def fail(self, key: str, problem: str) -> Exception:
        """The error for field `key` here (to raise)."""
        return self.place.error(key, problem)

    def check_fields(self, doc: Mapping[Any, Any], allowed: set[str]) -> None:
        """Raise the place's error when `doc` holds a field not in `allowed`."""
        extra = [str(k) for k in doc if k not in allowed]
        if extra:
            raise self.place.unknown(extra, allowed)

    def mapping(self, doc: Any, allowed: set[str]) -> dict[str, Any]:
        """`doc` checked to be a mapping of only `allowed` fields."""
        if not isinstance(doc, dict):
            raise self.fail("", "must be a mapping")
        self.check_fields(doc, allowed)
        return doc

    def read(self, doc: Mapping[str, Any], opt: Option[T]) -> T:
        """The value of `opt` in `doc` (its default when absent), checked."""
        return cast(T, self._read(doc, opt))

    def read_all(self, doc: Mapping[str, Any], options: Iterable[Option[Any]]) -> dict[str, Any]:
        """`{name: value}` of every plainly typed option (not secrets, not custom ones)."""
        plain = (o for o in options if o.kind not in (Kind.SECRET, Kind.CUSTOM))
        return {o.name: self._read(doc, o) for o in plain}

    def _read(self, doc: Mapping[str, Any], opt: Option[Any]) -> Any:
        key = opt.name
        if opt.kind is Kind.STRING:
            return self._string(doc.get(key, opt.default), key)
        if opt.kind is Kind.OPT_STRING:
            return None if doc.get(key) is None else self._string(doc[key], key)
        if opt.kind is Kind.INTEGER:
            return self._integer(doc.get(key, opt.default), opt)
        if opt.kind is Kind.NUMBER:
            return self._number(doc.get(key, opt.default), opt)
        if opt.kind is Kind.BOOLEAN:
            value = doc.get(key, opt.default)
            if not isinstance(value, bool):
                raise self.fail(key, f"must be true or false, got {brief(value)}")
            return value
        if opt.kind is Kind.CHOICE:
            return self._choice(doc.get(key, opt.default), opt)
        if opt.kind is Kind.FILE:
            return self.existing_file(doc, key)
        raise TypeError(f"{opt.key}: a {opt.kind} option is read by its own parser")

    def _string(self, value: Any, key: str) -> str:
        if value is None or value is REQUIRED:
            raise self.place.missing(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value.strip()

    def string(self, doc: Mapping[str, Any], key: str) -> str:
        """The non-empty string at `key`, which must be set."""
        return self._string(doc.get(key), key)

    def _integer(self, value: Any, opt: Option[Any]) -> int:
        lo, hi = int(opt.lo or 0), int(opt.hi or 0)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(opt.name, f"must be an integer {lo}-{hi}, got {brief(value)}")
        return value

    def _number(self, value: Any, opt: Option[Any]) -> float:
        lo = opt.lo or 0.0
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        # Range before isfinite: a huge YAML integer would overflow the float conversion.
        if not ok or not lo <= value <= MAX_NUMBER or not math.isfinite(value):
            unit = f" ({opt.unit})" if opt.unit else ""
            raise self.fail(
                opt.name, f"must be a number in {lo:g}..{_MAX_TEXT}{unit}, got {brief(value)}"
            )
        return float(value)

    def _choice(self, value: Any, opt: Option[Any]) -> str:
        if opt.strip and isinstance(value, str):
            value = value.strip()
        if not isinstance(value, str) or value not in opt.choices:
            raise self.fail(
                opt.name, f"must be one of {', '.join(opt.choices)}, got {brief(value)}"
            )
        return value

    def existing_file(self, doc: Mapping[str, Any], key: str) -> str | None:
        """The file named at `key` (relative to this file), which must exist; None if unset."""
        if doc.get(key) is None:
            return None
        p = relative_to(self.path, self._string(doc[key], key))
        if not p.is_file():
            raise self.fail(key, f"no such file {p}")
        return str(p)

    def refuse_inline(self, doc: Mapping[str, Any], opt: Option[Any]) -> None:
        """Raise when the secret `opt` is written inline (`password: ...`)."""
        if opt.name in doc:
            noun = "passwords" if opt.name == "password" else "secrets"
            raise self.fail(
                opt.name,
                f"inline {noun} are not accepted; use {opt.name}_file or {opt.name}_env",
            )

    def secret(self, doc: Mapping[str, Any], opt: Option[Any], required: bool) -> Secret | None:
        """The secret `opt` from its file or variable; None when neither is set (unless
        `required`: then exactly one of them must be)."""
        self.refuse_inline(doc, opt)
        fkey, ekey = opt.fields
        pfile, penv = doc.get(fkey), doc.get(ekey)
        if required and (pfile is None) == (penv is None):
            raise self.fail("", f"set exactly one of the fields {fkey!r} and {ekey!r}")
        if pfile is not None and penv is not None:
            raise self.fail(fkey, f"set only one of {fkey} and {ekey}")
        try:
            if penv is not None:
                where = ekey
                return read_secret_env(self._string(penv, ekey), self.env)
            if pfile is not None:
                where = fkey
                return read_secret_file(relative_to(self.path, self._string(pfile, fkey)))
        except SecretUnavailable as err:
            raise self.fail(where, str(err)) from None
        return None

    def key_file(self, file: Path, where: str, min_bytes: int) -> Secret:
        """A key read from `file` (named by field `where`), at least `min_bytes` long."""
        try:
            return read_secret_file(file, min_bytes)
        except SecretUnavailable as err:
            raise self.fail(where, str(err)) from None
